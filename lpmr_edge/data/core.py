"""The dataset type and its image sources (in-memory arrays or files on disk)."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from lpmr_edge.errors import UserError


class ImageSource(Protocol):
    """Anything that yields PIL images by index and can hash its content."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image: ...

    def content_hash(self) -> str: ...

    def take(self, indices: Sequence[int]) -> ImageSource: ...


@dataclass(frozen=True)
class ArrayImages:
    """Images held as a uint8 array ``[N,H,W]`` (grey) or ``[N,H,W,3]`` (RGB)."""

    pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index]).convert("RGB")

    def content_hash(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).hexdigest()

    def take(self, indices: Sequence[int]) -> ArrayImages:
        return ArrayImages(self.pixels[np.asarray(indices, dtype=np.int64)])


@dataclass(frozen=True)
class FileImages:
    """Images stored as files; a file that stops being readable is a clear error."""

    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise UserError(f"cannot read image {path} ({type(error).__name__}); fix or remove it, "
                            "or pass --skip-bad-images") from None

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def take(self, indices: Sequence[int]) -> FileImages:
        return FileImages(tuple(self.paths[i] for i in indices))


@dataclass(frozen=True)
class ImageDataset:
    """Images with integer labels (-1 where unlabelled), class names and prompt templates."""

    name: str
    images: ImageSource
    labels: np.ndarray
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    source: str
    licence: str
    groups: np.ndarray | None = None
    skipped: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.images)

    @functools.cached_property
    def sha256(self) -> str:
        """Content hash: images, labels, class names and templates (computed once per dataset object)."""
        digest = hashlib.sha256(self.images.content_hash().encode())
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        digest.update("\n".join(self.class_names).encode() + b"\0" + "\n".join(self.templates).encode())
        return digest.hexdigest()

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageDataset:
        """The samples at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return replace(self, name=name or self.name, images=self.images.take(indices),
                       labels=self.labels[indices],
                       groups=None if self.groups is None else self.groups[indices])

    def head(self, limit: int | None) -> ImageDataset:
        """The first ``limit`` samples, or everything when limit is None."""
        return self if limit is None or limit >= len(self) else self.subset(range(limit))

    def describe(self) -> dict[str, Any]:
        """Manifest entry for this dataset."""
        return {"name": self.name, "n": len(self), "sha256": self.sha256, "classes": list(self.class_names),
                "templates": list(self.templates), "source": self.source, "licence": self.licence,
                "skipped": list(self.skipped)}


def preprocess_batches(dataset: ImageDataset, preprocess: Callable[[Image.Image], Any],
                       batch_size: int) -> Iterator[np.ndarray]:
    """Yield preprocessed float32 batches ``[B,3,H,W]`` in dataset order.

    When torch is loaded (a torch transform such as open_clip's has loaded it), the transform runs on one torch
    thread (restored between batches): one image's ops are too small to gain from threads, and on a busy
    machine every hand-off between torch's threads waits for a core (measured: 2 threads 60-130 ms per 224-px
    image, 1 thread 5-12 ms, at load average 12-15 on 2 cores). Without torch loaded nothing imports it.
    """
    for start in range(0, len(dataset), batch_size):
        with _one_torch_thread():
            batch = np.stack([np.asarray(preprocess(dataset.images.load(i)), dtype=np.float32)
                              for i in range(start, min(start + batch_size, len(dataset)))])
        yield batch


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """One torch thread for the duration, if torch is loaded; restores the count after."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class PreprocessedSets:
    """Whole datasets, preprocessed, kept in memory for the next evaluation in this process — a sweep
    worker's next seed or suite on the same images — up to ``max_bytes`` (least recently used out first;
    a dataset larger than that is streamed and not kept)."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._arrays: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def batches(self, dataset: ImageDataset, preprocess: Callable[[Image.Image], Any], preprocess_key: str,
                batch_size: int) -> Iterator[np.ndarray]:
        """``preprocess_batches(dataset, preprocess, batch_size)``, from memory when this dataset was already
        preprocessed the same way (``preprocess_key`` names the transform)."""
        key = (dataset.sha256, preprocess_key)
        if key in self._arrays:
            self._arrays.move_to_end(key)
            kept = self._arrays[key]
            yield from (kept[start:start + batch_size] for start in range(0, len(kept), batch_size))
            return
        chunks: list[np.ndarray] | None = []
        for batch in preprocess_batches(dataset, preprocess, batch_size):
            yield batch
            if chunks is not None:
                chunks.append(batch)
                if batch[0].nbytes * len(dataset) > self.max_bytes:
                    chunks = None
        if chunks:
            self._keep(key, np.concatenate(chunks))

    def resize(self, max_bytes: int) -> None:
        """Change the budget; least recently used sets beyond it are dropped."""
        self.max_bytes = max_bytes
        self._evict()

    def _keep(self, key: tuple[str, str], array: np.ndarray) -> None:
        self._arrays[key] = array
        self._evict()

    def _evict(self) -> None:
        while sum(kept.nbytes for kept in self._arrays.values()) > self.max_bytes:
            self._arrays.popitem(last=False)
