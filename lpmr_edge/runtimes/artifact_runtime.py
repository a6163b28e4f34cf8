"""A host ``Runtime`` over an exported artifact, loaded in this process by its backend's ``loader`` module
(the same code a device runs, lpmr_edge/runtimes/<name>/loader.py)."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lpmr_edge.artifact import TOWERS, foreign_machine_warnings, verify_artifact
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import sha256_json
from lpmr_edge.runtimes.base import Runtime


def static_batches(manifest: dict[str, Any]) -> dict[str, int | None]:
    """Static batch size per tower from an artifact's manifest (None where it was exported dynamic)."""
    shapes = {tower: manifest["towers"][tower]["inputs"][0]["shape"][0] for tower in TOWERS}
    return {tower: None if batch == -1 else batch for tower, batch in shapes.items()}


class ArtifactRuntime(Runtime):
    """Both towers of a verified artifact, loaded by ``loader.load``; subclasses name the runtime and loader."""

    loader: ModuleType

    def __init__(self, artifact_dir: Path, threads: int | None = None) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest = verify_artifact(self.artifact_dir, self.name)
        try:
            self._towers, self.loaded = self.loader.load(self.artifact_dir, self.manifest,
                                                         threads or self.manifest["runtime_config"]["threads"])
        except (ValueError, ImportError) as error:
            raise UserError(str(error)) from None
        self.threads = self.loaded["threads"]

    @property
    def executed_precision(self) -> str:
        """What ran (as the loader read it back, or the artifact recorded it)."""
        return self.loaded["executed_precision"]

    @property
    def identity(self) -> str:
        return sha256_json({"runtime": self.name, "precision": self.manifest["precision"],
                            "files": self.manifest["files"]})

    @property
    def model_info(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def static_batch(self) -> dict[str, int | None]:
        return static_batches(self.manifest)

    def _run(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        return self._towers[tower](inputs)

    def _image_features(self, images: np.ndarray) -> np.ndarray:
        return self._run("image", images)

    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        return self._run("text", tokens)

    def current_threads(self) -> int:
        """The thread count in effect now."""
        return self.threads

    def warnings(self) -> list[str]:
        """Where execution differs from what the artifact asked for, or the machine from its target."""
        return [*self.loader.warnings(self.manifest, self.loaded, "this CPU"), *foreign_machine_warnings(self.manifest)]

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": self.loaded["version"], "precision": self.manifest["precision"],
                "executed_precision": self.executed_precision, "threads": self.current_threads(),
                "identity": self.identity, "model": self.model_info, "artifact": self.manifest,
                **self.loader.description(self.manifest, self.loaded), "warnings": self.warnings()}
