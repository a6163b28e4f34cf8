"""OpenVINO runtime: a verified IR artifact compiled by ``loader`` and the precision the CPU plugin executes."""
from __future__ import annotations

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import sha256_json
from lpmr_edge.runtimes.artifact_runtime import ArtifactRuntime
from lpmr_edge.runtimes.base import run_in_static_batches
from lpmr_edge.runtimes.openvino import loader


class OpenVinoRuntime(ArtifactRuntime):
    """Both towers of an OpenVINO artifact compiled for the CPU with the artifact's recorded properties."""

    name = "openvino"
    loader = loader

    @property
    def identity(self) -> str:
        return sha256_json({"runtime": self.name, "precision": self.manifest["precision"],
                            "files": self.manifest["files"], "executed": self.executed_precision})

    def zero_shot_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits from the fused zero-shot head (artifacts exported with ``--fuse-head``)."""
        if "head" not in self.manifest:
            raise UserError(f"{self.artifact_dir} has no fused zero-shot head; export it with --fuse-head")
        return run_in_static_batches(lambda chunk: self._towers["image"](chunk, output=1),
                                     np.asarray(images, dtype=np.float32), self.static_batch["image"])
