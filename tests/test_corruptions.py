"""ImageNet-C corruptions from the reference package: kinds, resolution, seeding, pinned outputs."""
from __future__ import annotations

import imagecorruptions
import numpy as np
import pytest

from lpmr_edge.data import load_dataset
from lpmr_edge.data.corruptions import (
    CORRUPTION_GROUPS,
    CORRUPTIONS,
    IMAGENET_C_GROUPS,
    IMAGENET_C_SIDE,
    SEVERITIES,
    corrupt,
    corrupt_pixels,
    reference_version,
)
from lpmr_edge.data.transformed import fit_square
from lpmr_edge.errors import UserError

# Mean |corrupted - clean| (0-255 scale) of Fashion-MNIST test image 0 fitted to 224x224, seed 0, for
# severities 1-5, computed with imagecorruptions-imaug 1.1.5 (OpenCV 4.14, numpy 2.4, scipy 1.17,
# scikit-image 0.26). A change here means the reference or a library under it now corrupts differently.
PINNED_MEAN_CHANGE = {
    "gaussian_noise": (10.64, 15.95, 23.65, 33.62, 47.14),
    "shot_noise": (6.1, 9.34, 13.13, 19.11, 23.61),
    "impulse_noise": (3.73, 7.66, 11.28, 21.69, 34.82),
    "defocus_blur": (0.86, 1.42, 2.88, 4.47, 6.32),
    "glass_blur": (2.84, 2.48, 6.03, 5.0, 6.36),
    "motion_blur": (2.37, 5.46, 7.4, 13.23, 14.43),
    "zoom_blur": (7.45, 9.76, 11.52, 13.22, 15.18),
    "snow": (37.05, 61.12, 62.75, 77.16, 91.38),
    "frost": (84.87, 50.42, 133.2, 119.67, 71.02),
    "fog": (75.83, 66.41, 88.06, 78.42, 61.19),
    "brightness": (24.9, 50.57, 74.9, 99.1, 120.25),
    "contrast": (34.51, 40.76, 46.38, 52.02, 54.84),
    "elastic_transform": (2.1, 2.98, 3.96, 4.33, 5.26),
    "pixelate": (1.13, 1.32, 1.69, 2.29, 2.73),
    "jpeg_compression": (0.9, 2.25, 2.41, 1.77, 2.16),
    "speckle_noise": (5.08, 6.7, 11.39, 14.2, 17.85),
    "gaussian_blur": (0.42, 1.34, 2.64, 4.1, 6.98),
    "spatter": (1.07, 3.91, 8.32, 6.7, 10.46),
    "saturate": (0.0, 0.0, 0.0, 3.0, 5.85),
}


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fmnist-test").head(3)


def test_kinds_and_groups_are_the_reference_ones():
    reference_groups = {"noise": "noise", "blur": "blur", "weather": "weather", "digital": "digital",
                        "extra": "validation"}
    for group, subset in reference_groups.items():
        assert CORRUPTION_GROUPS[group] == tuple(imagecorruptions.get_corruption_names(subset))
    assert list(CORRUPTIONS) == imagecorruptions.get_corruption_names("all") and len(CORRUPTIONS) == 19
    assert sum(len(CORRUPTION_GROUPS[g]) for g in IMAGENET_C_GROUPS) == 15
    assert all(CORRUPTIONS[name].group == group for group, names in CORRUPTION_GROUPS.items() for name in names)
    assert reference_version().startswith("imagecorruptions-imaug==")


def test_every_kind_and_severity_matches_its_pin_at_224(fmnist):
    clean = np.asarray(fit_square(fmnist.images.load(0), IMAGENET_C_SIDE), dtype=float)
    measured = {}
    for kind in CORRUPTIONS:
        outputs = [np.asarray(corrupt(fmnist, kind, severity, seed=0).images.load(0)) for severity in SEVERITIES]
        assert all(out.shape == (224, 224, 3) and out.dtype == np.uint8 for out in outputs)
        measured[kind] = tuple(float(np.abs(out - clean).mean()) for out in outputs)
    for kind, pinned in PINNED_MEAN_CHANGE.items():
        assert measured[kind] == pytest.approx(pinned, abs=0.05), kind


def test_the_wrapper_is_the_reference_seeded_through_numpy_global_state():
    image = np.asarray(fit_square(load_dataset("digits").images.load(5), 32))
    for kind in CORRUPTIONS:
        np.random.seed(1234)
        arguments = {"seed": 1234} if kind in ("impulse_noise", "glass_blur") else {}
        expected = imagecorruptions.corrupt(image, severity=4, corruption_name=kind, **arguments)
        np.random.seed(99)
        before = np.random.get_state()[1].copy()
        assert np.array_equal(corrupt_pixels(image, kind, 4, 1234), expected), kind
        assert np.array_equal(np.random.get_state()[1], before)  # the caller's global state is restored


def test_corruptions_are_seeded_per_sample_and_independent_of_order(fmnist):
    for kind in ("gaussian_noise", "impulse_noise", "glass_blur", "frost", "fog"):
        noisy = corrupt(fmnist, kind, 3, seed=0)
        last = np.asarray(noisy.images.load(2))
        np.random.seed(7)
        assert np.array_equal(last, np.asarray(noisy.subset([2, 0]).images.load(0)))
        assert np.array_equal(last, np.asarray(corrupt(fmnist, kind, 3, seed=0).images.load(2)))
        assert not np.array_equal(last, np.asarray(corrupt(fmnist, kind, 3, seed=1).images.load(2)))
    repeated = fmnist.subset([0, 0])  # the same image at two positions gets two noise draws
    images = corrupt(repeated, "shot_noise", 2, seed=0).images
    assert not np.array_equal(np.asarray(images.load(0)), np.asarray(images.load(1)))


def test_small_grey_images_are_fitted_to_224_rgb_and_sizes_checked(fmnist):
    assert np.asarray(fmnist.images.load(0)).shape == (28, 28, 3)
    noisy = np.asarray(corrupt(fmnist, "gaussian_noise", 5, seed=0).images.load(0))
    assert noisy.shape == (224, 224, 3) and not np.array_equal(noisy[..., 0], noisy[..., 1])  # colour noise
    assert np.asarray(corrupt(fmnist, "pixelate", 1, 0, size=48).images.load(0)).shape == (48, 48, 3)
    with pytest.raises(UserError, match="below the reference's minimum of 32"):
        corrupt(fmnist, "contrast", 1, 0, size=28)
    with pytest.raises(UserError, match="unknown corruption 'rain'"):
        corrupt(fmnist, "rain", 1, 0)
    with pytest.raises(UserError, match="severity 6 is out of range"):
        corrupt(fmnist, "fog", 6, 0)


def test_corrupted_sets_are_named_described_and_hashed_by_kind_severity_seed(fmnist):
    first = corrupt(fmnist, "fog", 2, seed=0)
    assert first.name == "fmnist-test+fog-2" and reference_version() in first.source
    others = [corrupt(fmnist, "fog", 3, 0), corrupt(fmnist, "frost", 2, 0), corrupt(fmnist, "fog", 2, 1),
              corrupt(fmnist, "fog", 2, 0, size=64), fmnist]
    assert len({first.sha256, *(other.sha256 for other in others)}) == len(others) + 1
    assert corrupt(fmnist, "fog", 2, 0).sha256 == first.sha256


def test_corrupted_images_are_cached_on_disk_and_shared(fmnist, isolated_cache, monkeypatch):
    noisy = corrupt(fmnist, "gaussian_noise", 4, seed=0)
    first = np.asarray(noisy.images.load(1))
    stored = sorted((isolated_cache / "corruptions").rglob("*.png"))
    assert len(stored) == 1

    def not_again(*args, **kwargs):
        raise AssertionError("a cached corruption was computed again")

    monkeypatch.setattr("lpmr_edge.data.corruptions.corrupt_pixels", not_again)
    assert np.array_equal(first, np.asarray(corrupt(fmnist, "gaussian_noise", 4, seed=0).images.load(1)))
    assert np.array_equal(first, np.asarray(noisy.subset([1]).images.load(0)))  # same sample, same file
    with pytest.raises(AssertionError, match="computed again"):  # another seed is another key
        corrupt(fmnist, "gaussian_noise", 4, seed=1).images.load(1)
    stored[0].write_bytes(b"truncated")
    monkeypatch.undo()
    assert np.array_equal(first, np.asarray(noisy.images.load(1)))  # an unreadable file is recomputed
