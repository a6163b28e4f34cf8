"""Data registry, user folders and their errors, shipped calibration set."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpmr_edge.data import PreprocessedSets, load_dataset, preprocess_batches, registry
from lpmr_edge.errors import UserError


def _write_png(path: Path, value: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for label, name in enumerate(["cats", "dogs"]):
        for i in range(3):
            _write_png(tmp_path / "set" / name / f"{i}.png", 40 * label + i)
    return tmp_path / "set"


def test_fashion_mnist_test_split():
    dataset = load_dataset("fmnist-test")
    assert len(dataset) == 10_000 and len(dataset.class_names) == 10
    assert np.bincount(dataset.labels).tolist() == [1000] * 10
    assert dataset.images.load(0).size == (28, 28)
    assert all("{}" in t for t in dataset.templates)


@pytest.mark.parametrize("name, minimum", [("digits", 1000), ("textiles", 500)])
def test_ood_sets_are_real_and_unlabelled(name: str, minimum: int):
    dataset = load_dataset(name)
    assert len(dataset) >= minimum and set(dataset.labels.tolist()) == {-1}
    assert dataset.images.load(len(dataset) - 1).mode == "RGB"


def test_image_folder_with_classnames_and_templates(folder: Path):
    (folder / "classnames.txt").write_text("cat\ndog\n")
    (folder / "templates.txt").write_text("a photo of a {}.\na drawing of a {}.\n")
    dataset = load_dataset(f"folder:{folder}")
    assert dataset.class_names == ("cat", "dog") and len(dataset.templates) == 2
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert dataset.subset([3, 0]).labels.tolist() == [1, 0]


def test_hash_changes_with_content(folder: Path):
    before = load_dataset(str(folder)).sha256
    _write_png(folder / "cats" / "0.png", 255)
    assert load_dataset(str(folder)).sha256 != before


def test_classnames_mismatch(folder: Path):
    (folder / "classnames.txt").write_text("cat\n")
    with pytest.raises(UserError, match="lists 1 names but there are 2"):
        load_dataset(str(folder))


def test_templates_without_placeholder(folder: Path):
    (folder / "templates.txt").write_text("a photo\n")
    with pytest.raises(UserError, match="must contain"):
        load_dataset(str(folder))


def test_empty_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(UserError, match="no readable images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(UserError, match="no readable images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")


def test_an_empty_class_folder_is_named(folder: Path):
    (folder / "zebras").mkdir()
    with pytest.raises(UserError, match="class folder\\(s\\) zebras in .* hold no readable images"):
        load_dataset(str(folder))


@pytest.mark.parametrize("names, clash", [("cat\nCat\n", "'Cat' is given to both cats and dogs"),
                                          (None, "'big cat' is given to both big cat and big_cat")])
def test_duplicate_class_names_are_refused(folder: Path, names: str | None, clash: str):
    if names is None:  # sub-folder names become class names with '_' read as a space
        (folder / "cats").rename(folder / "big cat")
        (folder / "dogs").rename(folder / "big_cat")
    else:
        (folder / "classnames.txt").write_text(names)
    with pytest.raises(UserError, match=clash):
        load_dataset(str(folder))


def test_dataset_names_are_checked_without_reading_images(tmp_path: Path):
    registry.check_dataset_name("fmnist-test")
    registry.check_dataset_name("calib:fmnist-train-300")
    registry.check_dataset_name(str(tmp_path))
    for name, message in (("calib:nope", "no calibration set 'nope'"),
                          (f"folder:{tmp_path / 'absent'}", "dataset folder not found"),
                          ("waterbirds:", "dataset folder not found: \\(empty\\)"), ("", "unknown dataset")):
        with pytest.raises(UserError, match=message):
            registry.check_dataset_name(name)


def test_corrupt_and_tiny_images_fail_or_are_skipped_and_counted(folder: Path):
    (folder / "cats" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png is unreadable"):
        load_dataset(str(folder))
    _write_png(folder / "dogs" / "tiny.png", 0, size=2)
    dataset = load_dataset(str(folder), skip_bad_images=True)
    assert len(dataset) == 6 and len(dataset.skipped) == 2
    assert any("too small" in reason for reason in dataset.skipped)


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet-21k")


def test_shipped_calibration_set_is_train_only_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dataset = load_dataset("calib:fmnist-train-300")
    assert len(dataset) == 300 and np.bincount(dataset.labels).tolist() == [30] * 10
    manifest = registry.read_json(registry.CALIBRATION_DIR / "fmnist-train-300" / "manifest.json", "m")
    assert "train" in manifest["source"] and manifest["licence"].startswith("MIT")
    copy = tmp_path / "calibration"
    shutil.copytree(registry.CALIBRATION_DIR, copy)
    monkeypatch.setattr(registry, "CALIBRATION_DIR", copy)
    victim = next((copy / "fmnist-train-300" / "03").glob("*.png"))
    _write_png(victim, 7, size=28)
    with pytest.raises(UserError, match="differs from its manifest"):
        load_dataset("calib:fmnist-train-300")
    with pytest.raises(UserError, match="no calibration set 'nope'"):
        load_dataset("calib:nope")


def test_preprocessed_sets_are_reused_bounded_and_identical_to_preprocessing_again():
    calls = []

    def preprocess(image: Image.Image) -> np.ndarray:
        calls.append(1)
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255

    digits = load_dataset("digits").head(50)
    fresh = np.concatenate(list(preprocess_batches(digits, preprocess, 16)))
    kept = PreprocessedSets(max_bytes=99 * fresh[0].nbytes)
    first = list(kept.batches(digits, preprocess, "t", 16))
    calls.clear()
    again = list(kept.batches(digits, preprocess, "t", 16))
    assert calls == [] and [len(b) for b in again] == [16, 16, 16, 2]  # from memory, same batching
    np.testing.assert_array_equal(np.concatenate(again), fresh)
    np.testing.assert_array_equal(np.concatenate(first), fresh)
    assert len(list(kept.batches(digits, preprocess, "another transform", 16))) == 4 and len(calls) == 50
    calls.clear()
    list(kept.batches(digits, preprocess, "t", 16))
    assert len(calls) == 50  # two sets of 50 exceed 99 images' worth: the older one was dropped
    calls.clear()
    list(kept.batches(load_dataset("digits").head(101), preprocess, "t", 16))
    list(kept.batches(digits, preprocess, "t", 16))
    assert len(calls) == 101  # a set over the budget is streamed, not kept, and evicts nothing


def test_a_single_class_folder_is_an_ood_set_but_not_an_id_set(tmp_path: Path):
    from lpmr_edge.suite.families.base import labelled

    _write_png(tmp_path / "one" / "a" / "x.png", 100, size=32)
    dataset = load_dataset(f"folder:{tmp_path / 'one'}")
    assert dataset.class_names == ("a",) and len(dataset) == 1
    with pytest.raises(UserError, match=r"single class \(a\); zero-shot classification needs at least two"):
        labelled(dataset, "ID")
