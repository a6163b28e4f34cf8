"""A model's eval image transform in PIL and numpy alone (no torch, torchvision or open_clip).

``PilPreprocess.from_config(config)`` reproduces open_clip's ``image_transform_v2(PreprocessCfg(**config),
is_train=False)`` bit for bit (pinned in ``tests/test_preprocess.py``): the same PIL resize, crop and pad calls,
with torchvision's size rules, in the same order (the mode is converted to RGB after resizing, as open_clip
does), then torchvision's ``to_tensor`` and ``Normalize`` arithmetic in float32. Every uint8 value maps to one
float per channel, so that arithmetic is done once, on the 256 values, into a lookup table.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

CONFIG_KEYS = frozenset({"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"})
RESIZE_MODES = ("shortest", "longest", "squash")
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "random": Image.Resampling.BICUBIC}  # open_clip: 'random' means bicubic at eval time


@dataclass(frozen=True, eq=False)
class PilPreprocess:
    """Callable mapping a PIL image to a float32 array ``[3,H,W]``, as open_clip's eval transform does."""

    size: tuple[int, int]  # (height, width)
    resize_mode: str
    resample: Image.Resampling
    fill_color: int
    table: np.ndarray  # [3,256] float32: (v / 255 - mean[c]) / std[c] for every uint8 value v

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PilPreprocess | None:
        """The transform of an open_clip ``PreprocessCfg`` given as a mapping (a manifest's ``preprocess``),
        or None when the config has anything this class does not reproduce (open_clip's transform then
        applies, or rejects it)."""
        size, mean, std = config.get("size"), config.get("mean"), config.get("std")
        if not (set(config) <= CONFIG_KEYS and config.get("mode", "RGB") == "RGB"
                and config.get("resize_mode") in RESIZE_MODES and config.get("interpolation") in RESAMPLING
                and isinstance(config.get("fill_color", 0), int) and _pair(size) and _triple(mean) and _triple(std)
                and all(value != 0 for value in std)):
            return None
        height, width = (size, size) if isinstance(size, int) else size
        values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255)
        table = (values - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
        return cls((int(height), int(width)), config["resize_mode"], RESAMPLING[config["interpolation"]],
                   int(config.get("fill_color", 0)), table)

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = self.fit(image)
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return self.table[np.arange(3)[:, None, None], pixels.transpose(2, 0, 1)]

    def fit(self, image: Image.Image) -> Image.Image:
        """The image resized and cropped (or padded) to ``size``, still in its own mode."""
        height, width = self.size
        if self.resize_mode == "squash":
            return _resize(image, (height, width), self.resample)
        if self.resize_mode == "longest":
            image = _resize(image, _keep_ratio(image, self.size, longest=True), self.resample)
            return _center_crop_or_pad(image, self.size, self.fill_color)
        if height == width:  # torchvision's Resize(int): shortest edge to size, the other truncated
            short, long = sorted(image.size)
            scaled = (height, int(height * long / short))
            image = _resize(image, scaled if image.height <= image.width else scaled[::-1], self.resample)
        else:  # open_clip's ResizeKeepRatio, which is always bicubic here (it is given no interpolation)
            image = _resize(image, _keep_ratio(image, self.size, longest=False), Image.Resampling.BICUBIC)
        return _center_crop_or_pad(image, self.size, 0)


def _pair(size: Any) -> bool:
    return (isinstance(size, int) and size > 0) or (
        isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size))


def _triple(values: Any) -> bool:
    return isinstance(values, Sequence) and len(values) == 3 and all(isinstance(v, numbers.Real) for v in values)


def _resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """torchvision's ``resize`` of a PIL image to (height, width): unchanged when already that size."""
    height, width = size
    return image if image.size == (width, height) else image.resize((width, height), resample)


def _keep_ratio(image: Image.Image, target: tuple[int, int], longest: bool) -> tuple[int, int]:
    """open_clip's ``ResizeKeepRatio`` size: the longest (or shortest) edge scaled onto the target's."""
    ratios = (image.height / target[0], image.width / target[1])
    ratio = max(ratios) if longest else min(ratios)
    return round(image.height / ratio), round(image.width / ratio)


def _center_crop_or_pad(image: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    """torchvision's ``center_crop`` (open_clip's ``center_crop_or_pad`` with ``fill``) of a PIL image."""
    crop_height, crop_width = size
    if crop_width > image.width or crop_height > image.height:
        extra_width, extra_height = max(crop_width - image.width, 0), max(crop_height - image.height, 0)
        image = _pad(image, (extra_width // 2, extra_height // 2, (extra_width + 1) // 2, (extra_height + 1) // 2),
                     fill)
        if image.size == (crop_width, crop_height):
            return image
    top = round((image.height - crop_height) / 2.0)
    left = round((image.width - crop_width) / 2.0)
    return image.crop((left, top, left + crop_width, top + crop_height))


def _pad(image: Image.Image, border: tuple[int, int, int, int], fill: int) -> Image.Image:
    """torchvision's constant ``pad`` of a PIL image: ``fill`` in every band, a palette image keeps its palette."""
    bands = len(image.getbands())
    padded = ImageOps.expand(image, border=border, fill=fill if bands == 1 else (fill,) * bands)
    if image.mode == "P":
        padded.putpalette(image.getpalette())
    return padded
