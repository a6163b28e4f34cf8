"""The one small interface every runtime implements; the suite only ever sees this."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np


class Runtime(ABC):
    """Runs the two CLIP towers on numpy batches and says what it actually executed.

    ``call_seconds`` adds up the wall time spent inside the backend's tower calls (``_image_features`` and
    ``_text_features``, one per static batch) since the runtime was opened: what the harness around it did
    (preprocessing, padding, scoring) is not in it.
    """

    name: str = "base"
    call_seconds: float = 0.0

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
        return run_in_static_batches(self._clocked(self._image_features), np.asarray(images, dtype=np.float32),
                                     self.static_batch["image"])

    def text_features(self, tokens: np.ndarray) -> np.ndarray:
        """Unnormalised text features ``[B,D]`` for int64 tokens ``[B,context_length]`` (any B)."""
        return run_in_static_batches(self._clocked(self._text_features), np.asarray(tokens, dtype=np.int64),
                                     self.static_batch["text"])

    def _clocked(self, call: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """``call``, adding its wall time to ``call_seconds``."""
        def clocked(batch: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            try:
                return call(batch)
            finally:
                self.call_seconds += time.perf_counter() - start

        return clocked

    def close(self) -> None:
        """Release runtime resources."""


class CallTimer:
    """From its creation on: wall time, and how much of it ``runtime`` spent inside its tower calls."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.started = time.perf_counter()
        self.calls_before = runtime.call_seconds

    def timing(self) -> dict[str, float]:
        """``runtime_s`` (inside tower calls), ``wall_s`` and ``overhead`` = 1 - runtime_s / wall_s, in [0, 1]."""
        wall = time.perf_counter() - self.started
        inside = self.runtime.call_seconds - self.calls_before
        return {"runtime_s": inside, "wall_s": wall,
                "overhead": min(1.0, max(0.0, 1 - inside / wall)) if wall > 0 else 0.0}


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
