"""ExecuTorch runtime: loads a verified .pte artifact into the ExecuTorch Python runtime (XNNPACK backend).

Threads: XNNPACK runs on ExecuTorch's one process-wide threadpool (default: the number of performance cores).
Its size can only be changed through the experimental ``_unsafe_reset_threadpool`` of the pybindings (there is
no environment variable), so the last runtime opened in a process sets it for all of them; ``describe()``
reads the size back.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.export import TOWERS, foreign_machine_warnings, verify_artifact
from lpmr_edge.manifest import sha256_json
from lpmr_edge.parity import verify_reference_outputs
from lpmr_edge.runtimes.base import Runtime


def set_threads(threads: int) -> int:
    """Resize ExecuTorch's process-wide threadpool (used by XNNPACK); returns the size now in effect."""
    from executorch.extension.pybindings import portable_lib

    if threads < 1:
        raise UserError(f"--threads {threads}: use at least 1 thread")
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return portable_lib._threadpool_get_thread_count()


class ExecuTorchRuntime(Runtime):
    """Both towers of an ExecuTorch artifact, each a ``forward`` method of its .pte program."""

    name = "executorch"

    def __init__(self, artifact_dir: Path, threads: int | None = None) -> None:
        import executorch
        from executorch.runtime import Runtime as ProgramLoader

        self.artifact_dir = Path(artifact_dir)
        self.manifest = verify_artifact(self.artifact_dir, self.name)
        config = self.manifest["runtime_config"]
        loader = ProgramLoader.get()
        if not loader.backend_registry.is_available(config["backend"]):
            raise UserError(f"this ExecuTorch build ({executorch.__file__}) has no {config['backend']}; "
                            "install the executorch wheel from PyPI, which includes XNNPACK")
        set_threads(threads or config["threads"])
        self._methods = {}
        for tower in TOWERS:
            path = self.artifact_dir / self.manifest["towers"][tower]["file"]
            try:
                self._methods[tower] = loader.load_program(path).load_method(config["method"])
            except RuntimeError as error:
                raise UserError(f"ExecuTorch cannot load the {tower} tower {path} ({error}); re-export the "
                                "artifact with this ExecuTorch version") from None

    @property
    def identity(self) -> str:
        return sha256_json({"runtime": self.name, "precision": self.manifest["precision"],
                            "files": self.manifest["files"]})

    @property
    def model_info(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def static_batch(self) -> dict[str, int | None]:
        return {tower: self.manifest["towers"][tower]["inputs"][0]["shape"][0] for tower in TOWERS}

    def _run(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        import torch

        outputs = self._methods[tower].execute([torch.from_numpy(np.ascontiguousarray(inputs))])
        return outputs[0].numpy()

    def _image_features(self, images: np.ndarray) -> np.ndarray:
        return self._run("image", images)

    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        return self._run("text", tokens)

    def verify_outputs(self) -> dict[str, dict[str, float]]:
        """Run the artifact's reference inputs and compare with the outputs recorded at export.

        Returns the agreement per tower; raises UserError when a tower is outside the manifest's tolerance.
        """
        return verify_reference_outputs(self.artifact_dir, self.manifest, self._run, f"this {platform.machine()} CPU")

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        from executorch.extension.pybindings import portable_lib

        return {"runtime": self.name, "version": version("executorch"), "precision": self.manifest["precision"],
                "executed_precision": self.manifest["runtime_config"]["executed_precision"],
                "threads": portable_lib._threadpool_get_thread_count(), "identity": self.identity,
                "model": self.model_info, "artifact": self.manifest, "delegation": self.manifest["delegation"],
                "warnings": foreign_machine_warnings(self.manifest)}
