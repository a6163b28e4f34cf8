"""The stand-in card's summary of the spurious-correlation groups."""
from __future__ import annotations

import pytest

from lpmr_edge.standin import cue_group_summary


def test_cue_group_summary_separates_aligned_from_conflicting_groups_and_names_the_worst_class():
    accuracies = {0: 0.9, 1: 0.5, 2: 1.0, 3: 0.2}  # group = 2 * label + conflicting: t-shirt, then trousers
    spurious = {"worst_group": 0.2, "average_group": 0.65, "gap": 0.45, "worst": {"name": "3", "n": 40},
                "groups": {str(group): {"n": 40 + group, "accuracy": value} for group, value in accuracies.items()}}
    summary = cue_group_summary(spurious)
    assert summary["aligned"] == pytest.approx(0.95) and summary["conflicting"] == pytest.approx(0.35)
    assert summary["worst_class"] == "pair of trousers" and summary["n_groups"] == 4 and summary["group_n"] == 40
