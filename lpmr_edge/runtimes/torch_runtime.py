"""The FP32 torch eager reference: the model straight from open_clip."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lpmr_edge.manifest import sha256_json
from lpmr_edge.models import ClipModel
from lpmr_edge.runtimes.base import Runtime


class TorchRuntime(Runtime):
    """Eager FP32 open_clip model on CPU: the reference every artifact is compared with."""

    name = "torch"

    def __init__(self, clip: ClipModel, threads: int | None = None) -> None:
        self.clip = clip
        self.threads = threads or torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self._image = clip.image_tower().eval()
        self._text = clip.text_tower().eval()

    @property
    def identity(self) -> str:
        return sha256_json({"runtime": self.name, "weights": self.clip.weights_sha256, "precision": "fp32"})

    @property
    def model_info(self) -> dict[str, Any]:
        return self.clip.describe()

    @torch.inference_mode()
    def _image_features(self, images: np.ndarray) -> np.ndarray:
        return self._image(torch.from_numpy(images)).numpy()

    @torch.inference_mode()
    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        return self._text(torch.from_numpy(tokens)).numpy()

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": torch.__version__, "precision": "fp32",
                "executed_precision": "fp32", "threads": self.threads, "identity": self.identity,
                "model": self.clip.describe(), "artifact": None}
