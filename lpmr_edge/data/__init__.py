"""Datasets as (images, labels, class names, prompt templates), with a small registry.

Registry names:
  ``fmnist-test`` / ``fmnist-train``   Fashion-MNIST (Debian package dataset-fashion-mnist, MIT)
  ``fmnist-colour``                    Fashion-MNIST test, class x aligned/conflicting background colour groups
  ``digits``                           scikit-learn's bundled 8x8 digits, upscaled (OOD)
  ``textiles``                         conformal-clip-data simulated textile images (MIT; OOD)
  ``calib:NAME``                       a shipped calibration set in calibration_data/NAME
  ``waterbirds:PATH``                  a Waterbirds-layout folder (metadata.csv), test split, with groups
  ``folder:PATH`` or a directory path  a user ImageFolder (one sub-folder per class)
"""
from __future__ import annotations

from lpmr_edge.data.core import ImageDataset, ImageSource, PreprocessedSets, preprocess_batches
from lpmr_edge.data.registry import DATASET_NAMES, load_dataset

__all__ = ["DATASET_NAMES", "ImageDataset", "ImageSource", "PreprocessedSets", "load_dataset",
           "preprocess_batches"]
