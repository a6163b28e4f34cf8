"""A dataset seen through a seeded per-sample image transform (corruptions, covariate shifts).

Each sample's randomness comes from ``SeedSequence([seed, crc32(key), sample id])``, the sample id being
its position in the untransformed dataset, so a sample's transformed image does not depend on which other
samples are evaluated, nor in which order.

Expensive transforms (the ImageNet-C corruptions) keep each transformed image on disk (``cache_dir``):
one lossless PNG per sample, named by the SHA-256 of everything the output depends on (the fitted input
image's pixels, the transform key, seed, sample id and implementation, e.g. the package version), written
atomically. The images do not depend on the model or runtime, so an FP32 reference and every quantized
artifact evaluated on the same set share one pass; a changed input, seed or package version is a new key.
"""
from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lpmr_edge.data.core import ImageDataset, ImageSource
from lpmr_edge.manifest import atomic_write_bytes

ImageTransform = Callable[[Image.Image, np.random.SeedSequence], Image.Image]


def fit_square(image: Image.Image, side: int) -> Image.Image:
    """Shorter side resized (bicubic) to ``side``, then centre-cropped to ``side`` x ``side``."""
    return ImageOps.fit(image, (side, side), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class TransformedImages:
    """Another image source seen through a seeded per-sample transform, fitted to ``size`` first if set."""

    base: ImageSource
    transform: ImageTransform
    key: str
    seed: int
    sample_ids: np.ndarray
    size: int | None = None
    implementation: str = ""  # what computes the transform (e.g. a package and its version), hashed with it
    cache_dir: Path | None = None  # where transformed images are kept (see the module docstring); None: not kept

    def __len__(self) -> int:
        return len(self.base)

    def load(self, index: int) -> Image.Image:
        image = self.base.load(index)
        if self.size is not None:
            image = fit_square(image, self.size)
        sample_id = int(self.sample_ids[index])
        cached = self._cache_path(image, sample_id)
        if cached is not None and cached.is_file():
            try:
                with Image.open(cached) as stored:
                    return stored.convert("RGB")
            except (OSError, UnidentifiedImageError):
                pass  # unreadable: computed again and rewritten below
        seeds = np.random.SeedSequence([self.seed, zlib.crc32(self.key.encode()), sample_id])
        result = self.transform(image, seeds)
        if cached is not None:
            buffer = io.BytesIO()
            result.save(buffer, format="PNG", compress_level=1)
            atomic_write_bytes(cached, buffer.getvalue())
        return result

    def _cache_path(self, image: Image.Image, sample_id: int) -> Path | None:
        """The cache file of one sample's transformed image (None without a cache)."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(f"{image.mode}|{image.size}|{self.key}|{self.seed}|{sample_id}|"
                                f"{self.implementation}|".encode())
        digest.update(image.tobytes())
        name = digest.hexdigest()
        return self.cache_dir / name[:2] / f"{name}.png"

    def content_hash(self) -> str:
        digest = hashlib.sha256(self.base.content_hash().encode())
        digest.update(f"{self.key}|{self.seed}|{self.size}|{self.implementation}".encode())
        digest.update(np.ascontiguousarray(self.sample_ids, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def take(self, indices: Sequence[int]) -> TransformedImages:
        indices = np.asarray(indices, dtype=np.int64)
        return replace(self, base=self.base.take(indices), sample_ids=self.sample_ids[indices])


def transformed(dataset: ImageDataset, transform: ImageTransform, key: str, seed: int,
                size: int | None, description: str, implementation: str = "",
                cache_dir: Path | None = None) -> ImageDataset:
    """``dataset`` seen through ``transform``; ``key`` names the transform in the dataset name and seeds;
    transformed images are kept in ``cache_dir`` when given."""
    images = TransformedImages(dataset.images, transform, key, seed, np.arange(len(dataset)), size, implementation,
                               cache_dir)
    return replace(dataset, name=f"{dataset.name}+{key}", images=images,
                   source=f"{dataset.source}, {description}")
