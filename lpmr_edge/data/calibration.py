"""Build a hashed, versioned calibration subset (PNG ImageFolder + manifest) from a training split.

``python -m lpmr_edge.data.calibration`` (``make calibration-data``) rebuilds the shipped
``calibration_data/fmnist-train-300``: 30 images per class drawn with a fixed seed from the
Fashion-MNIST *train* split (never test images).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lpmr_edge.data.registry import (
    CALIBRATION_DIR,
    FMNIST_CLASSES,
    FMNIST_LICENCE,
    FMNIST_TEMPLATES,
    fashion_mnist_arrays,
)
from lpmr_edge.manifest import atomic_write_bytes, file_hashes, now_utc, write_manifest

VERSION = 1


def write_fmnist_calibration_set(out_dir: Path, per_class: int = 30, seed: int = 0) -> dict:
    """Write ``per_class`` seeded Fashion-MNIST train images per class as PNGs plus a manifest."""
    images, labels = fashion_mnist_arrays("train")
    rng = np.random.default_rng(seed)
    chosen = {label: np.sort(rng.choice(np.flatnonzero(labels == label), per_class, replace=False))
              for label in range(len(FMNIST_CLASSES))}
    for label, indices in chosen.items():
        for index in indices:
            buffer = io.BytesIO()
            Image.fromarray(images[index]).save(buffer, format="PNG", optimize=True)
            atomic_write_bytes(out_dir / f"{label:02d}" / f"train-{index:05d}.png", buffer.getvalue())
    atomic_write_bytes(out_dir / "classnames.txt", ("\n".join(FMNIST_CLASSES) + "\n").encode())
    atomic_write_bytes(out_dir / "templates.txt", ("\n".join(FMNIST_TEMPLATES) + "\n").encode())
    atomic_write_bytes(out_dir / "LICENSE", (
        b"Fashion-MNIST images (c) 2017 Zalando SE, released under the MIT licence:\n"
        b"https://github.com/zalandoresearch/fashion-mnist/blob/master/LICENSE\n"
        b"Taken from the Debian package dataset-fashion-mnist.\n"))
    return write_manifest(out_dir, {
        "name": out_dir.name, "version": VERSION, "source": "Fashion-MNIST train split (train-images-idx3-ubyte.gz)",
        "licence": FMNIST_LICENCE, "selection": {"per_class": per_class, "seed": seed,
                                                 "train_indices": {str(k): v.tolist() for k, v in chosen.items()}},
        "n": per_class * len(FMNIST_CLASSES), "built": now_utc(),
    })


if __name__ == "__main__":
    manifest = write_fmnist_calibration_set(CALIBRATION_DIR / "fmnist-train-300")
    print(f"wrote {manifest['n']} images, {len(file_hashes(CALIBRATION_DIR / 'fmnist-train-300'))} files")
