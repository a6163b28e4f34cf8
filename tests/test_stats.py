"""Bootstrap intervals, the exact McNemar test and paired deltas."""
from __future__ import annotations

import numpy as np
import pytest

from lpmr_edge.stats import MetricRule, bootstrap_ci, mcnemar_exact, paired_metric_decisions, with_ci


def _mean(tables):
    return {"mean": float(np.mean(tables[0]["x"]))}


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    x = np.random.default_rng(0).normal(size=400)
    first = bootstrap_ci(_mean, [{"x": x}], n_resamples=300, seed=7)["mean"]
    assert first == bootstrap_ci(_mean, [{"x": x}], n_resamples=300, seed=7)["mean"]
    assert first != bootstrap_ci(_mean, [{"x": x}], n_resamples=300, seed=8)["mean"]
    low, high = first
    standard_error = x.std() / np.sqrt(len(x))
    assert low < x.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.2)


def test_constant_data_give_a_degenerate_interval_and_with_ci_keeps_values():
    result = with_ci(_mean, [{"x": np.full(50, 0.25)}], n_resamples=50)
    assert result == {"mean": 0.25, "ci": {"mean": [0.25, 0.25]}}


def test_tables_are_resampled_separately_keeping_sizes_and_order():
    seen = []

    def summary(tables):
        seen.append((len(tables[0]["x"]), len(tables[1]["x"])))
        assert np.all(np.diff(tables[0]["x"]) >= 0)  # drawn rows stay in the table's order
        assert set(tables[1]["x"]) <= {-1.0}
        return {"n": 0.0}

    bootstrap_ci(summary, [{"x": np.arange(30.0)}, {"x": -np.ones(5)}], n_resamples=20)
    assert set(seen) == {(30, 5)}


def test_undefined_resamples_are_skipped():
    def sometimes_nan(tables):
        return {"value": float("nan") if tables[0]["x"].sum() > 5 else 1.0, "never": float("nan")}

    intervals = bootstrap_ci(sometimes_nan, [{"x": np.r_[np.zeros(9), 1.0]}], n_resamples=200)
    assert intervals["value"] == [1.0, 1.0] and intervals["never"] == [None, None]


def test_mcnemar_exact_on_a_known_table():
    # 10 pairs only the result gets right, 2 only the reference: p = 2 * P(X >= 10 | n=12, 1/2) = 158 / 4096
    correct = np.r_[np.ones(10), np.zeros(2), np.ones(30), np.zeros(5)]
    reference = np.r_[np.zeros(10), np.ones(2), np.ones(30), np.zeros(5)]
    test = mcnemar_exact(correct, reference)
    assert test == {"only_result_correct": 10, "only_reference_correct": 2, "p_value": pytest.approx(158 / 4096)}
    assert mcnemar_exact(reference, reference)["p_value"] == 1.0
    assert mcnemar_exact(np.r_[1, 0], np.r_[0, 1])["p_value"] == 1.0


def test_paired_deltas_resample_rows_jointly():
    rng = np.random.default_rng(1)
    reference = (rng.random(2000) < 0.7).astype(float)
    better = reference.copy()
    better[np.flatnonzero(reference == 0)[:100]] = 1.0  # right on 100 more samples, never worse

    def accuracy(tables):
        return {"top1": float(np.mean(tables[0]["correct"]))}

    decided = paired_metric_decisions(accuracy, [{"correct": better}], [{"correct": reference}],
                                      {"top1": MetricRule(True)}, n_resamples=300)["top1"]
    assert decided.difference == pytest.approx(0.05) and decided.decision == "better"
    low, high = decided.ci
    assert 0 < low < 0.05 < high
    assert high - low < 0.03  # pairing: far tighter than two independent 2000-sample accuracies (~0.057)