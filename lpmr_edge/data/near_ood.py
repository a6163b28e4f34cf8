"""Near-OOD sets from a labelled set, without new data (the zero-shot protocol of e.g. MCM, Ming et al. 2022).

The set's classes are split at random, seeded, into an ID part (the classes the prompts name) and an OOD
part: images of the other classes, same domain. The ID part has ``ceil(classes / 2)`` classes unless
told otherwise. The split depends only on the seed and the number of classes (``split_class_indices``),
so it can be recomputed from stored outputs. It is recorded (``ClassSplit.describe``) and enters both
sets' names, sources and content hashes (through their class names and labels), so results computed on
different splits never mix.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lpmr_edge.data.core import ImageDataset
from lpmr_edge.errors import UserError
from lpmr_edge.stats import seeded_rng


@dataclass(frozen=True)
class ClassSplit:
    """Which classes of ``dataset`` are in-distribution (the prompts) and which are near-OOD."""

    dataset: str
    seed: int
    id_classes: tuple[str, ...]
    ood_classes: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """Record of the split for manifests and reports."""
        return {"dataset": self.dataset, "seed": self.seed, "id_classes": list(self.id_classes),
                "ood_classes": list(self.ood_classes)}


@dataclass(frozen=True)
class NearOodSets:
    """The ID set (restricted to the ID classes, labels renumbered) and the near-OOD set (unlabelled)."""

    split: ClassSplit
    id_set: ImageDataset
    ood_set: ImageDataset


def split_class_indices(classes: int, seed: int, id_class_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted class indices ``(ID, near-OOD)`` of a seeded random split of ``classes`` classes."""
    if classes < 2:
        raise UserError(f"a near-OOD split needs at least 2 classes, not {classes}; use a labelled set with more")
    id_count = (classes + 1) // 2 if id_class_count is None else id_class_count
    if not 1 <= id_count < classes:
        raise UserError(f"a near-OOD split of {classes} classes needs 1 to {classes - 1} ID classes, not {id_count}")
    order = seeded_rng(seed, "near-ood-split").permutation(classes)
    return np.sort(order[:id_count]), np.sort(order[id_count:])


def split_classes(dataset: ImageDataset, seed: int, id_class_count: int | None = None) -> NearOodSets:
    """Split ``dataset``'s classes at random (seeded) into ID and near-OOD classes and return both sets.

    The ID set keeps only the ID classes' images, labelled ``0..k-1`` in the original class order; the OOD
    set holds the other classes' images, labelled -1 with no class names, like the far-OOD sets.
    """
    classes = len(dataset.class_names)
    if classes < 2 or np.any((dataset.labels < 0) | (dataset.labels >= classes)):
        raise UserError(f"a near-OOD split needs a labelled set with at least 2 classes; '{dataset.name}' "
                        "is unlabelled or has fewer classes")
    id_labels, ood_labels = split_class_indices(classes, seed, id_class_count)
    split = ClassSplit(dataset.name, seed, tuple(dataset.class_names[i] for i in id_labels),
                       tuple(dataset.class_names[i] for i in ood_labels))
    recorded = (f"near-OOD class split (seed {seed}) ID: {', '.join(split.id_classes)}; "
                f"OOD: {', '.join(split.ood_classes)}")
    in_id = np.isin(dataset.labels, id_labels)
    renumber = np.full(classes, -1)
    renumber[id_labels] = np.arange(len(id_labels))
    id_subset = dataset.subset(np.flatnonzero(in_id), name=f"{dataset.name}+near-id-{seed}")
    id_set = replace(id_subset, labels=renumber[id_subset.labels], class_names=split.id_classes,
                     source=f"{dataset.source}, ID classes of a {recorded}")
    ood_subset = dataset.subset(np.flatnonzero(~in_id), name=f"{dataset.name}+near-ood-{seed}")
    ood_set = replace(ood_subset, labels=np.full(len(ood_subset), -1), class_names=(), templates=(),
                      source=f"{dataset.source}, OOD classes of a {recorded}")
    return NearOodSets(split, id_set, ood_set)
