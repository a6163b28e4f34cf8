"""ImageNet-C corruptions (Hendrycks & Dietterich 2019) computed by their reference implementation.

Source: PyPI ``imagecorruptions-imaug`` (Apache-2.0; a maintained fork of bethgelab's ``imagecorruptions``,
itself the packaged form of Hendrycks' ImageNet-C code), imported as ``imagecorruptions``. Its 19 kinds:
the 15 of ImageNet-C in four groups (noise, blur, weather, digital) and its 4 extra (held-out
"validation") kinds, each at severities 1-5 with the reference's parameters; the bundled frost images
come with the package. The original ``imagecorruptions`` 1.1.2 no longer imports (``pkg_resources``,
``np.float_``, scikit-image's ``multichannel``); shimmed for a one-off check, under the same
``np.random`` seed it gave the fork's images bit for bit on 15 kinds x 5 severities at 224x224, fog
within 1 grey level (float32 plasma map), and differed where the fork changed the randomness: glass blur
(numba's generator, seeded), impulse noise (seedable in the fork only) and frost (the fork draws among
all 6 frost images; the original and ImageNet-C's own code never pick the 6th).

Resolution: ImageNet-C corrupts 224x224 crops and its parameters (blur radii, noise grain, frost and snow
layers) are in pixels at that size. Every image is therefore fitted to ``IMAGENET_C_SIDE`` (shorter side
resized bicubically, centre-cropped; small images such as 28x28 Fashion-MNIST are upsampled) and corrupted
there; a model with another input side sees the 224x224 corrupted image through its own preprocessing, as
when it is evaluated on the ImageNet-C files. Grey images are replicated to RGB before corrupting, as the
reference does, so colour noise and coloured layers (frost, spatter) appear on them too.

Randomness: the reference draws from NumPy's global ``np.random`` state (and takes a ``seed`` argument
for impulse noise and glass blur). Each image is corrupted under a 32-bit seed drawn from
``SeedSequence([seed, crc32(kind-severity), sample id])`` (``lpmr_edge.data.transformed``), with the global
state set to it under a lock and restored afterwards, so an image's corruption is reproducible and
independent of evaluation order and of other users of ``np.random`` in this process.

Cache: corrupted images are kept on disk under ``<lpmr-edge cache>/corruptions`` (``$LPMR_EDGE_CACHE``, else
``~/.cache/lpmr-edge``), one PNG per image keyed by its input pixels, kind, severity, seed, sample id and
the reference's version (``lpmr_edge.data.transformed``): the FP32 reference and every quantized artifact
evaluated on the same images share one corruption pass (about 3.8 s per source image for all 19 kinds x 5
severities on one core; about 37 kB per stored Fashion-MNIST image, more for photos).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from PIL import Image

from lpmr_edge.cache import cache_root
from lpmr_edge.data.core import ImageDataset
from lpmr_edge.data.transformed import transformed
from lpmr_edge.errors import UserError

REFERENCE_PACKAGE = "imagecorruptions-imaug"
SEVERITIES = (1, 2, 3, 4, 5)
IMAGENET_C_SIDE = 224
MIN_SIDE = 32  # the reference refuses smaller images
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
IMAGENET_C_GROUPS = ("noise", "blur", "weather", "digital")  # the 15 kinds of mCE; "extra" is held out
# Kinds whose randomness the reference takes as a ``seed`` argument instead of the global state.
_SEED_ARGUMENT_KINDS = frozenset({"impulse_noise", "glass_blur"})
_GLOBAL_STATE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Corruption:
    """One corruption kind: its name (the reference's function name) and its group."""

    name: str
    group: str


CACHE_DIR = "corruptions"  # below the lpmr-edge cache root
CORRUPTIONS: dict[str, Corruption] = {name: Corruption(name, group)
                                      for group, names in CORRUPTION_GROUPS.items() for name in names}


def reference_version() -> str:
    """``imagecorruptions-imaug==<installed version>``, recorded with every corrupted set."""
    try:
        return f"{REFERENCE_PACKAGE}=={version(REFERENCE_PACKAGE)}"
    except PackageNotFoundError:
        raise UserError(f"corruptions need the {REFERENCE_PACKAGE} package; reinstall lpmr-edge with its "
                        "dependencies") from None


def corrupt_pixels(pixels: np.ndarray, kind: str, severity: int, seed: int) -> np.ndarray:
    """uint8 RGB ``[H,W,3]`` (H, W >= 32) -> the reference's uint8 ``kind`` at ``severity``, seeded by ``seed``."""
    from imagecorruptions import corrupt as reference_corrupt  # heavy (OpenCV, numba): imported on first use

    arguments = {"seed": seed} if kind in _SEED_ARGUMENT_KINDS else {}
    with _GLOBAL_STATE_LOCK:
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            return reference_corrupt(pixels, severity=severity, corruption_name=kind, **arguments)
        finally:
            np.random.set_state(saved)


def _corrupt_image(kind: str, severity: int, image: Image.Image, seeds: np.random.SeedSequence) -> Image.Image:
    seed = int(seeds.generate_state(1)[0])
    return Image.fromarray(corrupt_pixels(np.asarray(image.convert("RGB")), kind, severity, seed))


def corrupt(dataset: ImageDataset, kind: str, severity: int, seed: int, size: int | None = None) -> ImageDataset:
    """``dataset`` with the reference ImageNet-C ``kind`` at ``severity`` (1-5), applied at ``size`` x ``size``.

    ``size`` defaults to ``IMAGENET_C_SIDE`` (224), the resolution ImageNet-C is defined at; another side
    (at least 32) keeps the reference's pixel-unit parameters, so its severities no longer match ImageNet-C.
    """
    if kind not in CORRUPTIONS:
        raise UserError(f"unknown corruption '{kind}'; use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"corruption severity {severity} is out of range; use 1 to 5")
    side = IMAGENET_C_SIDE if size is None else size
    if side < MIN_SIDE:
        raise UserError(f"corruptions are applied at {side}x{side}, below the reference's minimum of {MIN_SIDE}; "
                        f"leave the size unset for ImageNet-C's {IMAGENET_C_SIDE}x{IMAGENET_C_SIDE}")
    reference = reference_version()
    return transformed(dataset, partial(_corrupt_image, kind, severity), f"{kind}-{severity}", seed, side,
                       f"{kind} severity {severity} at {side}x{side} ({reference}, seed {seed})", reference,
                       cache_root() / CACHE_DIR)
