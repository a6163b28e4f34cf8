"""Covariate shifts and a colour cue for the reliability suite (corruptions: ``lpmr_edge.data.corruptions``).

Covariate shifts (non-noise) act on floats in [0, 1]; a grey image stays grey (transformed once, used for
all three channels). ``rotate-scale`` rotates by 20 degrees (direction drawn per sample from the seeds of
``lpmr_edge.data.transformed``) and zooms out to 80% around the centre, filling with the median border
value; ``invert`` inverts intensities.

Colour cue: a background colour per class (``CUE_COLOURS``), blended as
``pixel = f * white + (1 - f) * colour`` with ``f`` the grey intensity, so objects stay light and the
black background takes the colour. As in Waterbirds, training correlates colour with class
(``correlated_colour_ids``) and the group-labelled test set balances each class between its own colour
(aligned) and the others (conflicting): group = 2 * label + conflicting (``cue_conflicts``).
"""
from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image
from skimage.transform import AffineTransform, warp

from lpmr_edge.data.core import ImageDataset
from lpmr_edge.data.transformed import transformed
from lpmr_edge.errors import UserError

PixelTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

ROTATION_DEGREES = 20.0
ZOOM = 0.8
# Dark tints (HSV value 0.25): near the black Fashion-MNIST background, so a model trained without the cue
# keeps most of its accuracy on them and the coloured set probes cue reliance more than colour shift.
CUE_COLOURS = tuple(colorsys.hsv_to_rgb(hue / 10, 0.8, 0.25) for hue in range(10))


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


SHIFTS: dict[str, PixelTransform] = {"rotate-scale": _rotate_scale, "invert": _invert}


def _on_floats(transform: PixelTransform, image: Image.Image, seeds: np.random.SeedSequence) -> Image.Image:
    """``transform`` applied to the image as floats in [0, 1] (once to a grey image), clipped, as uint8 RGB."""
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    grey = bool(np.all(pixels[..., :1] == pixels))
    changed = np.clip(transform(pixels[..., 0] if grey else pixels, np.random.default_rng(seeds)), 0.0, 1.0)
    rgb = np.repeat(changed[..., None], 3, axis=2) if grey else changed
    return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))


def shift(dataset: ImageDataset, kind: str, seed: int) -> ImageDataset:
    """``dataset`` under a deterministic covariate shift (``rotate-scale`` or ``invert``)."""
    if kind not in SHIFTS:
        raise UserError(f"unknown shift '{kind}'; use one of {', '.join(SHIFTS)} or a dataset name/folder")
    return transformed(dataset, partial(_on_floats, SHIFTS[kind]), kind, seed, None,
                       f"covariate shift {kind} (seed {seed})")


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


def aligned_or_conflicting_colour_ids(labels: np.ndarray) -> np.ndarray:
    """Half of each class on its own colour, half on the others: within each class, in order, even ranks take
    the class's colour (aligned) and odd ranks cycle through the other colours (conflicting, evenly spread)."""
    labels = np.asarray(labels, dtype=np.int64)
    n_colours = len(CUE_COLOURS)
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(len(members))
    other = (labels + 1 + (rank_in_class // 2) % (n_colours - 1)) % n_colours
    return np.where(rank_in_class % 2 == 0, labels % n_colours, other)


def cue_conflicts(labels: np.ndarray, colour_ids: np.ndarray) -> np.ndarray:
    """1 where an image's background colour is not its class's colour (``CUE_COLOURS`` order), else 0."""
    return (np.asarray(colour_ids) != np.asarray(labels) % len(CUE_COLOURS)).astype(np.int64)
