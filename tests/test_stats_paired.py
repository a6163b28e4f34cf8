"""Paired decisions: a case the CI-overlap rule gets wrong, error rates under the null, equivalence power."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from lpmr_edge.errors import UserError
from lpmr_edge.metrics import expected_calibration_error
from lpmr_edge.stats import (
    BEST,
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    MetricRule,
    bootstrap_ci,
    paired_decisions,
    paired_metric_decisions,
)


def _top1(tables):
    return {"top1": float(np.mean(tables[0]["correct"]))}


def _paired_correctness(rng, n, both, only_first, only_second):
    """Correctness of two candidates on the same n samples from the joint cell probabilities."""
    cell = rng.choice(4, size=n, p=[both, only_first, only_second, 1.0 - both - only_first - only_second])
    return (np.isin(cell, (0, 1))).astype(float), (np.isin(cell, (0, 2))).astype(float)


def test_paired_rule_decides_where_ci_overlap_calls_a_tie():
    rng = np.random.default_rng(3)
    fast = (rng.random(2000) < 0.7).astype(float)
    accurate = fast.copy()
    accurate[np.flatnonzero(fast == 0)[:50]] = 1.0  # right on 50 more images ...
    accurate[np.flatnonzero(fast == 1)[:10]] = 0.0  # ... and wrong on 10: +2 pp on the same images
    candidates = {"fast": [{"correct": fast}], "accurate": [{"correct": accurate}]}
    # the old rule: unpaired percentile CIs overlap -> "statistically tied" -> the faster one is recommended
    fast_ci, accurate_ci = (bootstrap_ci(_top1, tables, 1000, seed=0)["top1"] for tables in candidates.values())
    assert fast_ci[0] <= accurate_ci[1] and accurate_ci[0] <= fast_ci[1]

    decided = paired_decisions(_top1, candidates, "top1", higher_is_better=True, margin=0.005, seed=0)
    assert decided["accurate"].decision == BEST
    verdict = decided["fast"]
    assert verdict.decision == WORSE and verdict.difference == pytest.approx(-0.02)
    assert verdict.ci[1] < -0.005 and verdict.p_value < 0.001 and verdict.p_equivalence > 0.05
    assert "two-sided paired bootstrap test" in verdict.reason and "±0.005" in verdict.reason
    assert verdict.to_json()["ci"] == list(verdict.ci)


def test_lower_is_better_metrics_and_equivalence_within_margin():
    rng = np.random.default_rng(5)
    loss = rng.exponential(1.0, 3000)
    candidates = {"a": [{"loss": loss}], "b": [{"loss": loss + 0.05}],
                  "c": [{"loss": loss + rng.normal(0, 0.01, 3000)}]}
    decided = paired_decisions(lambda tables: {"loss": float(np.mean(tables[0]["loss"]))}, candidates, "loss",
                               higher_is_better=False, margin=0.01, n_resamples=300)
    best = min(candidates, key=lambda name: np.mean(candidates[name][0]["loss"]))
    assert decided[best].decision == BEST
    assert decided["b"].decision == WORSE and decided["b"].difference > 0
    assert {decided[name].decision for name in ("a", "c") if name != best} == {EQUIVALENT}


def test_null_of_equal_candidates_keeps_error_rates_and_equivalence_power():
    """Equal population accuracy (0.8 each, 20% discordant): false better/worse rate ~5%; TOST with
    margin 0.04 declares equivalence at its normal-theory power 2 Phi(m/se - 1.645) - 1."""
    rng = np.random.default_rng(11)
    n, margin, draws = 1000, 0.04, 300
    significant = equivalent = 0
    for draw in range(draws):
        first, second = _paired_correctness(rng, n, 0.7, 0.1, 0.1)
        decided = paired_decisions(_top1, {"first": [{"correct": first}], "second": [{"correct": second}]}, "top1",
                                   True, margin=margin, n_resamples=400, seed=draw)
        other = next(decision for decision in decided.values() if decision.decision != BEST)
        significant += other.p_superiority < 0.05
        equivalent += other.decision == EQUIVALENT
    standard_error = np.sqrt(0.2 / n)
    power = 2 * ndtr(margin / standard_error - 1.6449) - 1  # about 0.76
    assert significant / draws <= 0.05 + 0.03
    assert equivalent / draws == pytest.approx(power, abs=0.08)


def test_equivalence_at_the_margin_is_rarely_declared():
    rng = np.random.default_rng(12)
    draws, declared = 300, 0
    for draw in range(draws):
        first, second = _paired_correctness(rng, 1000, 0.7, 0.08, 0.12)  # second is 0.04 better
        decided = paired_decisions(_top1, {"first": [{"correct": first}], "second": [{"correct": second}]}, "top1",
                                   True, reference="second", margin=0.04, n_resamples=400, seed=draw)
        declared += decided["first"].decision == EQUIVALENT
    assert declared / draws <= 0.05 + 0.03


def test_undecided_without_margin_and_input_checks():
    rng = np.random.default_rng(1)
    first, second = _paired_correctness(rng, 200, 0.6, 0.1, 0.1)
    candidates = {"first": [{"correct": first}], "second": [{"correct": second}]}
    decided = paired_decisions(_top1, candidates, "top1", True, reference="first", n_resamples=200)
    assert decided["first"].decision == "reference"
    assert decided["second"].decision == UNDECIDED and decided["second"].p_equivalence is None
    assert "no equivalence margin" in decided["second"].reason
    with pytest.raises(UserError, match="different samples"):
        paired_decisions(_top1, {**candidates, "short": [{"correct": first[:100]}]}, "top1", True)
    with pytest.raises(UserError, match="unknown reference"):
        paired_decisions(_top1, candidates, "top1", True, reference="third")
    with pytest.raises(UserError, match="margin"):
        paired_decisions(_top1, candidates, "top1", True, margin=-0.1)


def test_many_metrics_of_one_pair_come_from_one_paired_bootstrap():
    rng = np.random.default_rng(2)
    confidence = rng.beta(4, 2, 1500)
    reference = {"correct": (rng.random(1500) < confidence).astype(float), "confidence": confidence}
    result = {"correct": reference["correct"].copy(), "confidence": np.clip(confidence + 0.08, 0, 1)}  # overconfident

    def summary(tables):
        table = tables[0]
        return {"top1": float(np.mean(table["correct"])),
                "ece": expected_calibration_error(table["confidence"], table["correct"])}

    rules = {"top1": MetricRule(True, 0.005), "ece": MetricRule(False, 0.005)}
    decided = paired_metric_decisions(summary, [result], [reference], rules, names=("int8", "fp32"), n_resamples=300)
    assert decided["top1"].decision == EQUIVALENT and decided["top1"].difference == 0.0
    assert decided["ece"].decision == WORSE
    assert (decided["ece"].candidate, decided["ece"].reference) == ("int8", "fp32")
    alone = paired_decisions(summary, {"int8": [result], "fp32": [reference]}, "ece", False, reference="fp32",
                             margin=0.005, n_resamples=300)["int8"]
    assert alone == decided["ece"]  # the same resampled rows whatever else is compared
