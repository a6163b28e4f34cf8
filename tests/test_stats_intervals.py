"""BCa intervals and tests, exact proportion intervals, worst-group accuracy, debiased ECE."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap, foldnorm

from lpmr_edge.metrics import expected_calibration_error
from lpmr_edge.stats import (
    NOT_ENOUGH_DATA,
    bca_estimates,
    bca_interval,
    bca_p_greater,
    bootstrap_ci,
    bootstrap_draws,
    calibration_errors,
    jackknife_values,
    proportion_interval,
    worst_group_accuracy,
)
from lpmr_edge.stats.bootstrap import acceleration
from lpmr_edge.stats.calibration import folded_normal_mean
from lpmr_edge.stats.exact import clopper_pearson_bounds


def _mean(tables):
    return {"mean": float(np.mean(tables[0]["x"]))}


def test_bca_matches_scipy_on_a_small_skewed_sample():
    x = np.random.default_rng(0).exponential(size=30)
    ours = bca_estimates(_mean, [{"x": x}], n_resamples=20000, seed=1)["mean"]
    theirs = bootstrap((x,), np.mean, method="BCa", n_resamples=20000, rng=np.random.default_rng(2)).confidence_interval
    width = theirs.high - theirs.low
    assert ours["ci"][0] == pytest.approx(theirs.low, abs=0.03 * width)
    assert ours["ci"][1] == pytest.approx(theirs.high, abs=0.03 * width)
    assert ours["method"] == "bca" and ours["n"] == 30 and ours["strata"] == [30] and ours["value"] == x.mean()


def test_acceleration_of_the_mean_is_the_leave_one_out_skewness():
    x = np.random.default_rng(4).exponential(size=40)
    jackknife = jackknife_values(_mean, [{"x": x}])["mean"]  # 40 rows <= 100 groups: leave-one-out
    assert sorted(jackknife) == pytest.approx(sorted((x.sum() - x) / 39))
    centred = x - x.mean()
    assert acceleration(jackknife) == pytest.approx(np.sum(centred ** 3) / (6 * np.sum(centred ** 2) ** 1.5))


def test_grouped_jackknife_deletes_equal_groups_from_every_table():
    def rows(tables):
        return {"first": float(len(tables[0]["x"])), "second": float(len(tables[1]["x"]))}

    values = jackknife_values(rows, [{"x": np.zeros(1000)}, {"x": np.zeros(250)}], n_groups=100)
    assert set(values["first"]) == {990.0} and set(values["second"]) == {247.0, 248.0}
    assert values["second"].sum() == 100 * 250 - 250


def test_bca_p_value_inverts_the_interval():
    x = np.random.default_rng(5).exponential(size=200)
    draws, jackknife = bootstrap_draws(_mean, [{"x": x}], 4000)["mean"], jackknife_values(_mean, [{"x": x}])["mean"]
    low, high = bca_interval(x.mean(), draws, jackknife, confidence=0.90)
    assert bca_p_greater(x.mean(), draws, jackknife, low) == pytest.approx(0.05, abs=0.004)
    assert 1 - bca_p_greater(x.mean(), draws, jackknife, high) == pytest.approx(0.05, abs=0.004)
    assert bca_p_greater(x.mean(), draws, jackknife, 0.0) == pytest.approx(1 / 8000)  # resolution 1/2B


def test_bca_corrects_the_upward_bias_of_ece_and_contains_the_estimate():
    rng = np.random.default_rng(6)
    confidence = rng.beta(4, 2, 2000)
    table = {"confidence": confidence, "correct": (rng.random(2000) < confidence).astype(float)}  # calibrated

    def ece(tables):
        return {"ece": expected_calibration_error(tables[0]["confidence"], tables[0]["correct"])}

    bca = bca_estimates(ece, [table], 1000)["ece"]
    low, high = bootstrap_ci(ece, [table], 1000)["ece"]
    assert bca["ci"][0] <= bca["value"] <= bca["ci"][1]
    assert sum(bca["ci"]) < low + high  # shifted down against the bootstrap's upward bias


def test_undefined_values_give_no_interval():
    def never(tables):
        return {"value": float("nan")}

    assert bca_estimates(never, [{"x": np.zeros(5)}], 20)["value"]["ci"] == [None, None]


def test_proportion_intervals_are_scipys_exact_and_wilson():
    assert proportion_interval(0, 10) == pytest.approx([0.0, 1 - 0.025 ** 0.1])
    assert proportion_interval(5, 10, method="wilson") == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert proportion_interval(7, 20, 0.9, alternative="greater")[1] == 1.0
    with pytest.raises(ValueError, match="wilson"):
        proportion_interval(1, 2, method="wald")
    successes = np.arange(0, 21)
    lower, upper = clopper_pearson_bounds(successes, np.full(21, 20), 0.975, 0.99)
    for k in successes:
        assert lower[k] == pytest.approx(binomtest(k, 20, alternative="greater").proportion_ci(0.975).low, abs=1e-12)
        assert upper[k] == pytest.approx(binomtest(k, 20, alternative="less").proportion_ci(0.99).high, abs=1e-12)


def test_worst_group_names_the_group_and_refuses_small_groups():
    rng = np.random.default_rng(8)
    groups = {"land/land": rng.random(200) < 0.9, "water/land": rng.random(40) < 0.5,
              "water/water": rng.random(300) < 0.95}
    result = worst_group_accuracy(groups)
    worst = result["worst_group"]
    assert worst == {"name": "water/land", "n": 40, "accuracy": float(np.mean(groups["water/land"]))}
    assert result["status"] == "ok" and result["value"] == worst["accuracy"] and result["n"] == 540
    assert result["ci"][0] <= result["value"] <= result["ci"][1]
    assert result["ci"][0] == pytest.approx(proportion_interval(int(groups["water/land"].sum()), 40, 0.975,
                                                                alternative="greater")[0])
    land = proportion_interval(int(groups["land/land"].sum()), 200)
    assert result["groups"]["land/land"]["ci"] == pytest.approx(land)
    small = worst_group_accuracy(groups, min_group_size=50)
    assert small["status"] == NOT_ENOUGH_DATA and small["value"] is None and small["ci"] is None
    assert small["smallest_group"] == {"name": "water/land", "n": 40} and "40 samples" in small["reason"]


def test_debiased_calibration_errors_on_a_hand_checked_example():
    confidence = np.r_[np.full(4, 0.25), np.full(2, 0.95)]
    correct = np.r_[1.0, 0, 0, 0, 1, 1]  # bin of 0.25: accuracy 0.25 (gap 0); bin of 0.95: accuracy 1 (gap 0.05)
    errors = calibration_errors(confidence, correct)
    assert errors["ece"] == pytest.approx(expected_calibration_error(confidence, correct)) == pytest.approx(0.05 / 3)
    assert errors["squared_ce"] == pytest.approx(0.0025 / 3)
    assert errors["squared_ce_debiased"] == pytest.approx(0.0025 / 3 - 4 / 6 * 0.25 * 0.75 / 3)
    assert errors["l2_ce_debiased"] == 0.0
    spread = np.sqrt(0.25 * 0.75 / 4) * np.sqrt(2 / np.pi)  # E|N(0, s^2)| in the first bin; the second has s = 0
    assert errors["ece_debiased"] == pytest.approx(2 * 0.05 / 3 - (4 / 6 * spread + 0.05 / 3))


def test_folded_normal_mean_is_scipys():
    mean, std = np.array([-0.3, 0.0, 0.02, 0.5]), np.array([0.1, 0.05, 0.03, 0.0])
    expected = [foldnorm(abs(m) / s, scale=s).mean() if s else abs(m) for m, s in zip(mean, std)]
    assert folded_normal_mean(mean, std) == pytest.approx(expected)


def _mean_errors(offset: float) -> dict[str, float]:
    """Mean calibration errors over 300 draws of a model whose accuracy is confidence - offset in every bin
    (population binned ECE = offset, squared CE = offset^2)."""
    rng = np.random.default_rng(9)
    draws = []
    for _ in range(300):
        confidence = rng.beta(4, 2, 2000)
        draws.append(calibration_errors(confidence, (rng.random(2000) < confidence - offset).astype(float)))
    return {name: float(np.mean([draw[name] for draw in draws])) for name in draws[0]}


def test_debiased_calibration_errors_remove_the_plug_in_bias():
    calibrated, miscalibrated = _mean_errors(0.0), _mean_errors(0.02)
    for errors, population in ((calibrated, 0.0), (miscalibrated, 0.02)):
        plug_in_bias = errors["squared_ce"] - population ** 2
        assert plug_in_bias > 5e-4
        assert abs(errors["squared_ce_debiased"] - population ** 2) < 0.05 * plug_in_bias  # unbiased
    # l1: at a zero gap the normal-approximation correction keeps 2 - sqrt(2) of the plug-in bias
    # (E|g| = s sqrt(2/pi) while E|N(g, s^2)| averages to s sqrt(2/pi) sqrt(2)); away from zero it removes most
    assert calibrated["ece_debiased"] / calibrated["ece"] == pytest.approx(2 - np.sqrt(2), abs=0.08)
    plug_in_bias = miscalibrated["ece"] - 0.02
    assert plug_in_bias > 0.005 and abs(miscalibrated["ece_debiased"] - 0.02) < 0.3 * plug_in_bias
