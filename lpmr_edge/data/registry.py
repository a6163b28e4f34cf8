"""Named datasets: Fashion-MNIST, OOD sets, shipped calibration sets and user folders."""
from __future__ import annotations

import csv
import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lpmr_edge.data.core import ArrayImages, FileImages, ImageDataset
from lpmr_edge.data.shifts import ColourCuedImages, aligned_or_conflicting_colour_ids, cue_conflicts
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import read_json, sha256_file

FMNIST_DIR = Path(os.environ.get("LPMR_EDGE_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CALIBRATION_DIR = Path(os.environ.get("LPMR_EDGE_CALIBRATION_DIR",  # in the wheel; in a checkout a link to calibration_data/
                                      Path(__file__).resolve().parents[1] / "_data" / "calibration_data"))
FMNIST_CLASSES = ("t-shirt", "pair of trousers", "pullover sweater", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "ankle boot")
FMNIST_TEMPLATES = (
    "a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
    "a photo of the {}, a type of clothing.", "a grayscale image of a {}.", "a picture of a {}.",
    "a product photo of a {}.", "a close-up photo of a {}.",
)
DEFAULT_TEMPLATES = ("a photo of a {}.",)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MIN_IMAGE_SIDE = 8
OOD_SIZE = 1000
FMNIST_LICENCE = "MIT (Zalando Research), via Debian package dataset-fashion-mnist"
WATERBIRDS_COLUMNS = ("img_filename", "y", "place", "split")
WATERBIRDS_CLASSES = ("landbird", "waterbird")
WATERBIRDS_TEST_SPLIT = 2


def _read_idx(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"Fashion-MNIST not found at {path.parent}; install it with "
                        "`apt-get install dataset-fashion-mnist` (or set LPMR_EDGE_FMNIST_DIR)")
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


@lru_cache(maxsize=2)
def fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw Fashion-MNIST ``(images [N,28,28] uint8, labels [N] int64)`` for ``train`` or ``test``."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def _fashion_mnist(split: str) -> ImageDataset:
    images, labels = fashion_mnist_arrays(split)
    return ImageDataset(name=f"fmnist-{split}", images=ArrayImages(images), labels=labels,
                        class_names=FMNIST_CLASSES, templates=FMNIST_TEMPLATES,
                        source=f"Fashion-MNIST {split} split", licence=FMNIST_LICENCE)


def _fashion_mnist_colour() -> ImageDataset:
    images, labels = fashion_mnist_arrays("test")
    colours = aligned_or_conflicting_colour_ids(labels)
    return ImageDataset(name="fmnist-colour", images=ColourCuedImages(images, colours),
                        labels=labels, class_names=FMNIST_CLASSES, templates=FMNIST_TEMPLATES,
                        source="Fashion-MNIST test split, half of each class on its class's background colour, "
                               "half on the other colours; group = 2 * label + conflicting",
                        licence=FMNIST_LICENCE, groups=2 * labels + cue_conflicts(labels, colours))


def _digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).round().astype(np.uint8)
    upscaled = np.stack([np.asarray(Image.fromarray(p).resize((28, 28), Image.Resampling.BILINEAR))
                         for p in pixels])
    return ImageDataset(name="digits", images=ArrayImages(upscaled), labels=np.full(len(upscaled), -1),
                        class_names=(), templates=(), source="scikit-learn load_digits, 8x8 upscaled to 28x28",
                        licence="BSD-3-Clause (scikit-learn; UCI optdigits)")


def _textiles() -> ImageDataset:
    try:
        import conformal_clip_data
    except ImportError:
        raise UserError("the textiles OOD set needs conformal-clip-data; `pip install conformal-clip-data`") from None
    root = Path(conformal_clip_data.__file__).parent / "data" / "textile_images" / "simulated" / "nominal"
    paths = tuple(sorted(root.glob("*.jpg")))[:OOD_SIZE]
    return ImageDataset(name="textiles", images=FileImages(paths), labels=np.full(len(paths), -1),
                        class_names=(), templates=(), source="conformal-clip-data simulated nominal textiles",
                        licence="MIT (conformal-clip-data)")


def _readable(path: Path) -> str | None:
    """None if the image can be decoded and is large enough, else the reason."""
    try:
        with Image.open(path) as image:
            image.load()
            if min(image.size) < MIN_IMAGE_SIDE:
                return f"too small ({image.size[0]}x{image.size[1]}, need >= {MIN_IMAGE_SIDE} px)"
    except (OSError, UnidentifiedImageError, ValueError) as error:
        return f"unreadable ({type(error).__name__})"
    return None


def _read_lines(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def load_image_folder(root: Path, name: str | None = None, skip_bad_images: bool = False,
                      licence: str = "user data") -> ImageDataset:
    """A user ImageFolder: one sub-folder per class, optional classnames.txt and templates.txt."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{root} has no class sub-folders; put each class's images in its own sub-folder")
    class_names = tuple(p.name.replace("_", " ") for p in class_dirs)
    if (root / "classnames.txt").is_file():
        listed = _read_lines(root / "classnames.txt")
        if len(listed) != len(class_dirs):
            raise UserError(f"{root}/classnames.txt lists {len(listed)} names but there are {len(class_dirs)} "
                            "class sub-folders; give one name per sub-folder, in sorted sub-folder order")
        class_names = listed
    _check_class_names(root, class_dirs, class_names)
    templates = DEFAULT_TEMPLATES
    if (root / "templates.txt").is_file():
        templates = _read_lines(root / "templates.txt")
        if not templates or any("{}" not in t for t in templates):
            raise UserError(f"{root}/templates.txt: every line must contain '{{}}' where the class name goes")
    paths, labels, skipped = [], [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            problem = _readable(path)
            if problem is None:
                paths.append(path)
                labels.append(label)
            elif skip_bad_images:
                skipped.append(f"{path}: {problem}")
            else:
                raise UserError(f"image {path} is {problem}; fix or remove it, or pass --skip-bad-images")
    if not paths:
        raise UserError(f"{root} contains no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    empty = [class_dir.name for label, class_dir in enumerate(class_dirs) if label not in set(labels)]
    if empty:
        raise UserError(f"class folder(s) {', '.join(empty)} in {root} hold no readable images; add images "
                        "to them or remove them")
    return ImageDataset(name=name or root.name, images=FileImages(tuple(paths)), labels=np.asarray(labels),
                        class_names=class_names, templates=templates, source=str(root), licence=licence,
                        skipped=tuple(skipped))


def _check_class_names(root: Path, class_dirs: list[Path], class_names: tuple[str, ...]) -> None:
    """Each class has its own name (a single-class folder is fine as an OOD set; the suite refuses it as an
    ID set, see ``suite.families.base.labelled``)."""
    seen: dict[str, str] = {}  # name as compared (case and spacing ignored) -> its sub-folder
    for class_dir, class_name in zip(class_dirs, class_names):
        key = " ".join(class_name.split()).casefold()
        if key in seen:
            raise UserError(f"{root}: class name '{class_name}' is given to both {seen[key]} and {class_dir.name}; give every class its own name "
                            "(in classnames.txt or by renaming a sub-folder)")
        seen[key] = class_dir.name


def _csv_int(row: dict[str, str], column: str, where: str) -> int:
    try:
        return int(row[column])
    except (TypeError, ValueError):
        raise UserError(f"{where}: column '{column}' must be an integer, got {row[column]!r}; "
                        "fix metadata.csv") from None


def load_waterbirds(root: Path, split: int = WATERBIRDS_TEST_SPLIT) -> ImageDataset:
    """Waterbirds layout: ``metadata.csv`` (img_filename, y, place, split) beside the images.

    Uses the rows of ``split`` (2 = test); classes landbird/waterbird (y), group = 2 * y + place.
    """
    root = Path(root)
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise UserError(f"{metadata} not found; a Waterbirds folder holds metadata.csv with columns "
                        f"{', '.join(WATERBIRDS_COLUMNS)} beside the images")
    with open(metadata, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in WATERBIRDS_COLUMNS if column not in (reader.fieldnames or ())]
        if missing:
            raise UserError(f"{metadata} lacks column(s) {', '.join(missing)}; Waterbirds metadata needs "
                            f"{', '.join(WATERBIRDS_COLUMNS)}")
        rows = [(row, f"{metadata} line {line}") for line, row in enumerate(reader, start=2)]
    rows = [(row, where) for row, where in rows if _csv_int(row, "split", where) == split]
    if not rows:
        raise UserError(f"{metadata} has no rows with split == {split}; check the split column (0 train, 1 val, 2 test)")
    paths = tuple(root / row["img_filename"] for row, _ in rows)
    absent = [path for path in paths if not path.is_file()]
    if absent:
        raise UserError(f"{len(absent)} image(s) listed in {metadata} are missing, e.g. {absent[0]}; "
                        "restore them or remove their rows")
    labels = np.array([_csv_int(row, "y", where) for row, where in rows])
    places = np.array([_csv_int(row, "place", where) for row, where in rows])
    if not (set(labels) | set(places)) <= {0, 1}:
        raise UserError(f"{metadata}: y and place must be 0 or 1 (binary Waterbirds labels)")
    return ImageDataset(name=f"waterbirds:{root.name}", images=FileImages(paths), labels=labels,
                        class_names=WATERBIRDS_CLASSES, templates=DEFAULT_TEMPLATES,
                        source=f"Waterbirds layout at {root} (split {split})", licence="user data",
                        groups=2 * labels + places)


def calibration_set_names() -> list[str]:
    """Calibration sets shipped in calibration_data/."""
    return sorted(p.name for p in CALIBRATION_DIR.iterdir() if (p / "manifest.json").is_file()) \
        if CALIBRATION_DIR.is_dir() else []


def _calibration_root(name: str) -> Path:
    root = CALIBRATION_DIR / name
    if not (root / "manifest.json").is_file():
        raise UserError(f"no calibration set '{name}' in {CALIBRATION_DIR}; available: {calibration_set_names()}")
    return root


def load_calibration_set(name: str) -> ImageDataset:
    """A shipped calibration set, its files verified against its manifest."""
    root = _calibration_root(name)
    manifest = read_json(root / "manifest.json", "calibration manifest")
    for relative, expected in manifest["files"].items():
        if not (root / relative).is_file() or sha256_file(root / relative) != expected:
            raise UserError(f"calibration file {root / relative} is missing or differs from its manifest; "
                            "restore it from git (`git checkout calibration_data`)")
    dataset = load_image_folder(root, name=f"calib:{name}", licence=manifest["licence"])
    return dataset


_BUILTIN = {
    "fmnist-test": lambda: _fashion_mnist("test"),
    "fmnist-train": lambda: _fashion_mnist("train"),
    "fmnist-colour": _fashion_mnist_colour,
    "digits": _digits,
    "textiles": _textiles,
}
DATASET_NAMES = tuple(_BUILTIN) + ("calib:NAME", "waterbirds:PATH", "folder:PATH")


def check_dataset_name(name: str) -> None:
    """A UserError unless ``name`` names a dataset that exists (checked without reading its images)."""
    if name in _BUILTIN:
        return
    if name.startswith("calib:"):
        _calibration_root(name.removeprefix("calib:"))
        return
    for prefix in ("waterbirds:", "folder:", ""):
        if name.startswith(prefix) and name.removeprefix(prefix) and Path(name.removeprefix(prefix)).is_dir():
            return
    if name.startswith(("waterbirds:", "folder:")):
        raise UserError(f"dataset folder not found: {name.split(':', 1)[1] or '(empty)'}; give an existing folder")
    raise UserError(f"unknown dataset '{name}'; use one of {', '.join(DATASET_NAMES)} or an existing folder")


def load_dataset(name: str, skip_bad_images: bool = False) -> ImageDataset:
    """Resolve a dataset name (see the package docstring) to a dataset."""
    check_dataset_name(name)
    if name in _BUILTIN:
        return _BUILTIN[name]()
    if name.startswith("calib:"):
        return load_calibration_set(name.removeprefix("calib:"))
    if name.startswith("waterbirds:"):
        return load_waterbirds(Path(name.removeprefix("waterbirds:")))
    return load_image_folder(Path(name.removeprefix("folder:")), skip_bad_images=skip_bad_images)
