"""Near-OOD class splits of a labelled set: seeded, recorded, disjoint, ID labels renumbered."""
from __future__ import annotations

import numpy as np
import pytest

from lpmr_edge.data import load_dataset
from lpmr_edge.data.near_ood import split_class_indices, split_classes
from lpmr_edge.errors import UserError


def test_split_is_seeded_disjoint_and_restricts_the_id_set():
    dataset = load_dataset("fmnist-test").head(300)
    sets = split_classes(dataset, seed=0)
    split = sets.split
    assert len(split.id_classes) == len(split.ood_classes) == 5
    assert sorted(split.id_classes + split.ood_classes) == sorted(dataset.class_names)
    assert split_classes(dataset, seed=0).split == split
    assert any(split_classes(dataset, seed=s).split.id_classes != split.id_classes for s in range(1, 5))
    original_names = np.asarray(dataset.class_names)[dataset.labels]
    in_id = np.isin(original_names, split.id_classes)
    assert len(sets.id_set) == in_id.sum() and len(sets.ood_set) == (~in_id).sum()
    assert list(np.asarray(sets.id_set.class_names)[sets.id_set.labels]) == list(original_names[in_id])
    assert list(sets.id_set.class_names) == [n for n in dataset.class_names if n in split.id_classes]
    first_ood = int(np.flatnonzero(~in_id)[0])
    assert np.array_equal(np.asarray(sets.ood_set.images.load(0)), np.asarray(dataset.images.load(first_ood)))
    assert np.all(sets.ood_set.labels == -1) and sets.ood_set.class_names == ()
    assert split.describe()["ood_classes"] == list(split.ood_classes)
    assert "near-OOD class split (seed 0)" in sets.ood_set.source
    assert sets.id_set.sha256 != split_classes(dataset, seed=1).id_set.sha256


def test_split_sizes_and_refusals():
    dataset = load_dataset("fmnist-test").head(100)
    assert len(split_classes(dataset, seed=3, id_class_count=8).split.ood_classes) == 2
    with pytest.raises(UserError, match="needs 1 to 9 ID classes, not 10"):
        split_classes(dataset, seed=0, id_class_count=10)
    with pytest.raises(UserError, match="needs a labelled set"):
        split_classes(load_dataset("digits"), seed=0)


def test_split_indices_depend_on_seed_and_class_count_only():
    dataset = load_dataset("fmnist-test").head(200)
    id_classes, ood_classes = split_class_indices(10, seed=4)
    split = split_classes(dataset, seed=4).split
    assert split.id_classes == tuple(dataset.class_names[i] for i in id_classes)
    assert split.ood_classes == tuple(dataset.class_names[i] for i in ood_classes)
    renamed = split_classes(dataset.subset(range(100), name="other"), seed=4).split  # recomputable from outputs
    assert (renamed.id_classes, renamed.ood_classes) == (split.id_classes, split.ood_classes)
    with pytest.raises(UserError, match="needs at least 2 classes"):
        split_class_indices(1, seed=0)
