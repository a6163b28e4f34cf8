"""The one small interface every runtime implements; the suite only ever sees this."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np


class Runtime(ABC):
    """Runs the two CLIP towers on numpy batches and says what it actually executed."""

    name: str = "base"

    @property
    @abstractmethod
    def identity(self) -> str:
        """A hash that changes whenever outputs could change (weights, precision, runtime)."""

    @property
    @abstractmethod
    def model_info(self) -> dict[str, Any]:
        """The source model's manifest entry (``ClipModel.describe()``), incl. preprocessing and logit scale."""

    @property
    def static_batch(self) -> dict[str, int | None]:
        """Static batch size per tower (``{"image": 32, "text": 1}``); None where the batch is dynamic."""
        return {"image": None, "text": None}

    @abstractmethod
    def _image_features(self, images: np.ndarray) -> np.ndarray:
        """Features for one batch of exactly the tower's batch size."""

    @abstractmethod
    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        """Features for one batch of exactly the tower's batch size."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Runtime, precision requested and executed, threads, artifact manifest: goes into every result."""

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """Unnormalised image features ``[B,D]`` for float32 images ``[B,3,H,W]`` (any B)."""
        return run_in_static_batches(self._image_features, np.asarray(images, dtype=np.float32),
                                     self.static_batch["image"])

    def text_features(self, tokens: np.ndarray) -> np.ndarray:
        """Unnormalised text features ``[B,D]`` for int64 tokens ``[B,context_length]`` (any B)."""
        return run_in_static_batches(self._text_features, np.asarray(tokens, dtype=np.int64),
                                     self.static_batch["text"])

    def close(self) -> None:
        """Release runtime resources."""


def run_in_static_batches(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
                          batch: int | None) -> np.ndarray:
    """Call ``run`` on chunks of exactly ``batch`` rows (zero-padding the last), or once if dynamic."""
    if batch is None:
        return np.asarray(run(inputs), dtype=np.float32)
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - real, *chunk.shape[1:]), dtype=chunk.dtype)])
        outputs.append(np.asarray(run(chunk), dtype=np.float32)[:real])
    return np.concatenate(outputs)
