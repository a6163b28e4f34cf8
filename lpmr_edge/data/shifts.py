"""Deterministic image transforms for the reliability suite: corruptions, covariate shifts, a colour cue.

Corruptions follow ImageNet-C (Hendrycks & Dietterich 2019) and its severity parameters. Images are
first fitted (shorter side resized, centre-cropped) to the model's input size, as ImageNet-C
corrupts 224x224 crops; noise is then added at that size. Grey images stay grey (the noise is drawn
once and used for all three channels). Gaussian blur's sigma is ImageNet-C's scaled by side/224.
Randomness is drawn from a generator seeded by (seed, transform name, sample index), so a sample's
corruption does not depend on which other samples are evaluated.

Covariate shifts (non-noise): ``rotate-scale`` rotates by 20 degrees (direction drawn per sample)
and zooms out to 80% around the centre, filling with the median border value; ``invert`` inverts
intensities.

Colour cue: a background colour per class (``CUE_COLOURS``), blended as
``pixel = f * white + (1 - f) * colour`` with ``f`` the grey intensity, so objects stay light and the
black background takes the colour.
"""
from __future__ import annotations

import colorsys
import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps
from skimage.filters import gaussian
from skimage.transform import AffineTransform, warp
from skimage.util import random_noise

from lpmr_edge.data.core import ImageDataset, ImageSource
from lpmr_edge.errors import UserError

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

SEVERITIES = (1, 2, 3, 4, 5)
IMAGENET_C_SIDE = 224
ROTATION_DEGREES = 20.0
ZOOM = 0.8
# Dark tints (HSV value 0.25): near the black Fashion-MNIST background, so a model trained without the cue
# keeps most of its accuracy on them and the coloured set probes cue reliance more than colour shift.
CUE_COLOURS = tuple(colorsys.hsv_to_rgb(hue / 10, 0.8, 0.25) for hue in range(10))


def _gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return random_noise(image, mode="gaussian", var=sigma ** 2, rng=rng)


def _shot_noise(image: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(image * photons) / photons


def _impulse_noise(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    return random_noise(image, mode="s&p", amount=amount, rng=rng)


def _speckle_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return random_noise(image, mode="speckle", var=sigma ** 2, rng=rng)


def _gaussian_blur(image: np.ndarray, sigma_at_224: float, rng: np.random.Generator) -> np.ndarray:
    return gaussian(image, sigma=sigma_at_224 * min(image.shape[:2]) / IMAGENET_C_SIDE,
                    channel_axis=-1 if image.ndim == 3 else None)


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = image.mean(axis=(0, 1), keepdims=True)
    return (image - mean) * factor + mean


# name -> (function, ImageNet-C parameter per severity 1..5)
CORRUPTIONS: dict[str, tuple[Callable[[np.ndarray, float, np.random.Generator], np.ndarray], tuple[float, ...]]] = {
    "gaussian_noise": (_gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38)),
    "shot_noise": (_shot_noise, (60, 25, 12, 5, 3)),
    "impulse_noise": (_impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27)),
    "speckle_noise": (_speckle_noise, (0.15, 0.2, 0.35, 0.45, 0.6)),
    "gaussian_blur": (_gaussian_blur, (1, 2, 3, 4, 6)),
    "contrast": (_contrast, (0.4, 0.3, 0.2, 0.1, 0.05)),
}


def _rotate_scale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    angle = np.deg2rad(ROTATION_DEGREES) * rng.choice([-1.0, 1.0])
    forward = (AffineTransform(translation=-centre) + AffineTransform(scale=ZOOM, rotation=angle)
               + AffineTransform(translation=centre))
    border = np.concatenate([image[0].ravel(), image[-1].ravel(), image[:, 0].ravel(), image[:, -1].ravel()])
    return warp(image, forward.inverse, order=1, mode="constant", cval=float(np.median(border)))


def _invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - image


SHIFTS: dict[str, Transform] = {"rotate-scale": _rotate_scale, "invert": _invert}


@dataclass(frozen=True)
class TransformedImages:
    """Another image source seen through a seeded per-sample transform (on floats in [0, 1])."""

    base: ImageSource
    transform: Transform
    key: str
    seed: int
    sample_ids: np.ndarray
    size: int | None = None

    def __len__(self) -> int:
        return len(self.base)

    def load(self, index: int) -> Image.Image:
        image = self.base.load(index)
        if self.size is not None:
            image = ImageOps.fit(image, (self.size, self.size), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float64) / 255.0
        grey = bool(np.all(pixels[..., :1] == pixels))
        rng = np.random.default_rng([self.seed, zlib.crc32(self.key.encode()), int(self.sample_ids[index])])
        changed = np.clip(self.transform(pixels[..., 0] if grey else pixels, rng), 0.0, 1.0)
        rgb = np.repeat(changed[..., None], 3, axis=2) if grey else changed
        return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))

    def content_hash(self) -> str:
        digest = hashlib.sha256(self.base.content_hash().encode())
        digest.update(f"{self.key}|{self.seed}|{self.size}".encode())
        digest.update(np.ascontiguousarray(self.sample_ids, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def take(self, indices: Sequence[int]) -> TransformedImages:
        indices = np.asarray(indices, dtype=np.int64)
        return replace(self, base=self.base.take(indices), sample_ids=self.sample_ids[indices])


def _transformed(dataset: ImageDataset, transform: Transform, key: str, seed: int,
                 size: int | None, description: str) -> ImageDataset:
    images = TransformedImages(dataset.images, transform, key, seed, np.arange(len(dataset)), size)
    return replace(dataset, name=f"{dataset.name}+{key}", images=images,
                   source=f"{dataset.source}, {description}")


def corrupt(dataset: ImageDataset, kind: str, severity: int, seed: int, size: int | None = None) -> ImageDataset:
    """``dataset`` with an ImageNet-C corruption at ``severity`` (1-5), fitted to ``size`` first."""
    if kind not in CORRUPTIONS:
        raise UserError(f"unknown corruption '{kind}'; use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"corruption severity {severity} is out of range; use 1 to 5")
    function, parameters = CORRUPTIONS[kind]
    parameter = parameters[severity - 1]
    return _transformed(dataset, lambda image, rng: function(image, parameter, rng), f"{kind}-{severity}", seed,
                        size, f"{kind} severity {severity} (ImageNet-C parameter {parameter}, seed {seed})")


def shift(dataset: ImageDataset, kind: str, seed: int) -> ImageDataset:
    """``dataset`` under a deterministic covariate shift (``rotate-scale`` or ``invert``)."""
    if kind not in SHIFTS:
        raise UserError(f"unknown shift '{kind}'; use one of {', '.join(SHIFTS)} or a dataset name/folder")
    return _transformed(dataset, SHIFTS[kind], kind, seed, None, f"covariate shift {kind} (seed {seed})")


def colour_background(pixels: np.ndarray, colour_ids: np.ndarray) -> np.ndarray:
    """Grey uint8 images ``[N,H,W]`` -> uint8 RGB ``[N,H,W,3]`` with background colour ``CUE_COLOURS[id]``."""
    foreground = np.asarray(pixels, dtype=np.float32)[..., None] / 255.0
    colours = np.asarray(CUE_COLOURS, dtype=np.float32)[np.asarray(colour_ids)][:, None, None, :]
    return np.round(255.0 * (foreground + (1.0 - foreground) * colours)).astype(np.uint8)


@dataclass(frozen=True)
class ColourCuedImages:
    """Grey uint8 images ``[N,H,W]`` on per-image background colours, coloured as they are loaded."""

    pixels: np.ndarray
    colour_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(colour_background(self.pixels[index:index + 1], self.colour_ids[index:index + 1])[0])

    def content_hash(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes())
        digest.update(np.ascontiguousarray(self.colour_ids, dtype=np.int64).tobytes())
        digest.update(repr(CUE_COLOURS).encode())
        return digest.hexdigest()

    def take(self, indices: Sequence[int]) -> ColourCuedImages:
        indices = np.asarray(indices, dtype=np.int64)
        return ColourCuedImages(self.pixels[indices], self.colour_ids[indices])


def correlated_colour_ids(labels: np.ndarray, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Colour ``label`` with probability ``correlation``, else a uniformly drawn other colour."""
    labels = np.asarray(labels, dtype=np.int64)
    n_colours = len(CUE_COLOURS)
    other = (labels + rng.integers(1, n_colours, len(labels))) % n_colours
    return np.where(rng.random(len(labels)) < correlation, labels % n_colours, other)


def balanced_colour_ids(labels: np.ndarray) -> np.ndarray:
    """Each class's samples cycle through all colours in order, so every (class, colour) group is equal-sized."""
    labels = np.asarray(labels, dtype=np.int64)
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(len(members))
    return rank_in_class % len(CUE_COLOURS)
