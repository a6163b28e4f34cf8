"""A dataset seen through a seeded per-sample image transform (corruptions, covariate shifts).

Each sample's randomness comes from ``SeedSequence([seed, crc32(key), sample id])``, the sample id being
its position in the untransformed dataset, so a sample's transformed image does not depend on which other
samples are evaluated, nor in which order.
"""
from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps

from lpmr_edge.data.core import ImageDataset, ImageSource

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

    def __len__(self) -> int:
        return len(self.base)

    def load(self, index: int) -> Image.Image:
        image = self.base.load(index)
        if self.size is not None:
            image = fit_square(image, self.size)
        seeds = np.random.SeedSequence([self.seed, zlib.crc32(self.key.encode()), int(self.sample_ids[index])])
        return self.transform(image, seeds)

    def content_hash(self) -> str:
        digest = hashlib.sha256(self.base.content_hash().encode())
        digest.update(f"{self.key}|{self.seed}|{self.size}|{self.implementation}".encode())
        digest.update(np.ascontiguousarray(self.sample_ids, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def take(self, indices: Sequence[int]) -> TransformedImages:
        indices = np.asarray(indices, dtype=np.int64)
        return replace(self, base=self.base.take(indices), sample_ids=self.sample_ids[indices])


def transformed(dataset: ImageDataset, transform: ImageTransform, key: str, seed: int,
                size: int | None, description: str, implementation: str = "") -> ImageDataset:
    """``dataset`` seen through ``transform``; ``key`` names the transform in the dataset name and seeds."""
    images = TransformedImages(dataset.images, transform, key, seed, np.arange(len(dataset)), size, implementation)
    return replace(dataset, name=f"{dataset.name}+{key}", images=images,
                   source=f"{dataset.source}, {description}")
