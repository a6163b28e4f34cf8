"""The suite's intervals and sizes (BCa with its method, debiased ECE, exact group intervals, min group
size) and the picker's per-set OOD objectives."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import write_outputs_result, write_synthetic_result

from lpmr_edge.errors import UserError
from lpmr_edge.metrics import classification_outcomes, expected_calibration_error
from lpmr_edge.pick import Constraints, pick
from lpmr_edge.report import assess_claims, build_rows, delta_from_interval, unpaired_delta
from lpmr_edge.results import load_results
from lpmr_edge.stats import NOT_ENOUGH_DATA, calibration_errors, worst_group_accuracy
from lpmr_edge.suite.families import METRIC_BY_KEY
from lpmr_edge.suite.families.base import ScoreContext
from lpmr_edge.suite.families.spurious import FAMILY as SPURIOUS
from lpmr_edge.suite.families.spurious import SPURIOUS_SET, SpuriousConfig
from lpmr_edge.suite.outputs import SetOutputs
from lpmr_edge.suite.run import key_metrics
from lpmr_edge.suite.sizes import sample_sizes


def test_suite_intervals_are_bca_with_their_method_and_the_debiased_ece_beside_the_plug_in(tmp_path: Path):
    labels = np.arange(400) % 10
    predictions = np.where(np.arange(400) < 300, labels, (labels + 3) % 10)
    directory = write_outputs_result(tmp_path, "x86", "openvino", "fp32", predictions, labels)
    metrics = json.loads((directory / "metrics.json").read_text())["metrics"]
    calibration, accuracy = metrics["calibration"], metrics["accuracy"]
    assert accuracy["top1"] == 0.75 and calibration["ci_method"]["ece"] == "bca"
    assert set(accuracy["ci_method"]) == set(accuracy["ci"]) and set(accuracy["ci_method"].values()) == {"bca"}
    assert all(low <= calibration[name] <= high for name, (low, high) in calibration["ci"].items())
    stored = np.load(directory / "outputs" / "id.npz")
    outcomes = classification_outcomes(10.0 * stored["features"] / np.linalg.norm(stored["features"], axis=1,
                                                                                  keepdims=True), labels)
    plug_in = expected_calibration_error(outcomes["confidence"], outcomes["correct"], 15, "equal-width")
    assert calibration["ece"] == pytest.approx(plug_in, abs=1e-9)  # values unchanged: only intervals are new
    debiased = calibration_errors(outcomes["confidence"], outcomes["correct"], 15)["ece_debiased"]
    assert "ece_debiased" in calibration["ci"] and calibration["ece_debiased"] == pytest.approx(debiased, abs=1e-9)
    assert key_metrics(metrics)["sizes"]["id"] == {"n": 400, "of": None}


def _spurious_context(group_sizes: list[int], accuracies: list[float]) -> tuple[ScoreContext, list[np.ndarray]]:
    labels, groups, correct = [], [], []
    for group, (size, accuracy) in enumerate(zip(group_sizes, accuracies)):
        right = np.arange(size) < round(accuracy * size)
        labels.append(np.arange(size) % 10)
        groups.append(np.full(size, group))
        correct.append(right)
    labels_, right_ = np.concatenate(labels), np.concatenate(correct)
    features = np.eye(10, dtype=np.float32)[np.where(right_, labels_, (labels_ + 1) % 10)]
    stored = SetOutputs(features, labels_, np.concatenate(groups), np.zeros(0, dtype=np.int64),
                        np.eye(10, dtype=np.float32), 10.0, "r", "sha", "key")
    context = ScoreContext({SPURIOUS_SET: stored}, 10.0, None, {})
    return context, [c.astype(float) for c in correct]


def test_worst_group_is_named_with_its_size_and_needs_a_minimum_group_size():
    context, correct = _spurious_context([40, 35, 20], [0.9, 0.6, 0.8])
    config = SpuriousConfig()
    scored = SPURIOUS.score(config, SPURIOUS.probe(config, context), context, 100, 0)["spurious"]
    assert scored["worst_group"] == pytest.approx(0.6, abs=0.01)  # the value stays
    assert scored["status"]["worst_group"] == NOT_ENOUGH_DATA and "'2' has 20 samples" in \
        scored["status_reason"]["worst_group"]
    assert scored["worst"] == {"name": "1", "n": 35, "accuracy": pytest.approx(21 / 35)}
    assert scored["smallest"] == {"name": "2", "n": 20}
    relaxed = SpuriousConfig(min_group_size=20)
    scored = SPURIOUS.score(relaxed, SPURIOUS.probe(relaxed, context), context, 100, 0)["spurious"]
    exact = worst_group_accuracy(dict(zip("012", correct)), 20)
    assert scored["status"]["worst_group"] == "ok" and scored["ci"]["worst_group"] == exact["ci"]
    assert scored["ci_method"]["worst_group"].startswith("exact: Clopper–Pearson")
    assert scored["groups"]["1"]["ci"] == exact["groups"]["1"]["ci"]
    sizes = sample_sizes({"spurious": scored})["spurious"]
    assert sizes["groups"] == 3 and sizes["smallest"]["n"] == 20 and sizes["status"] == "ok"
    with pytest.raises(UserError, match="min_group_size must be at least 1"):
        SpuriousConfig(min_group_size=0)


def test_worst_group_objective_skips_results_with_not_enough_data(tmp_path: Path):
    write_synthetic_result(tmp_path, "x86", "openvino", "fp32", latency_ms=10, worst_group=0.5)
    small = write_synthetic_result(tmp_path, "x86", "openvino", "int8", latency_ms=2, worst_group=0.6)
    raw = json.loads((small / "metrics.json").read_text())
    raw["metrics"]["spurious"]["status"] = {"worst_group": NOT_ENOUGH_DATA}
    (small / "metrics.json").write_text(json.dumps(raw))
    (choice,) = pick(load_results([tmp_path]), Constraints(objective="worst-group"))
    assert choice.recommended.variant == "openvino fp32"
    rejected = {c.result.variant: c.violations for c in choice.candidates if c.violations}
    assert rejected == {"openvino int8": ("worst-group accuracy: not enough data",)}


def test_auroc_objectives_read_one_ood_set_or_the_worst(tmp_path: Path):
    for precision, digits, textiles, latency in (("fp32", 0.95, 0.40, 10), ("int8", 0.80, 0.70, 2)):
        directory = write_synthetic_result(tmp_path, "x86", "openvino", precision, latency_ms=latency)
        raw = json.loads((directory / "metrics.json").read_text())
        sets = raw["metrics"]["ood"]["sets"]
        sets["digits"]["msp"].update(auroc=digits, ci={"auroc": [digits - 0.01, digits + 0.01]})
        sets["textiles"] = {"n": 100, "msp": {"auroc": textiles, "ci": {"auroc": [textiles - 0.01, textiles + 0.01]}}}
        (directory / "metrics.json").write_text(json.dumps(raw))
    results = load_results([tmp_path])
    recommended = {objective: pick(results, Constraints(objective=objective))[0].recommended.variant
                   for objective in ("auroc:digits", "auroc:textiles", "auroc:worst")}
    assert recommended == {"auroc:digits": "openvino fp32", "auroc:textiles": "openvino int8",
                           "auroc:worst": "openvino int8"}
    (choice,) = pick(results, Constraints(objective="auroc:worst"))
    assert choice.recommended.metrics["auroc:worst"].value == 0.70 and choice.objective.label == \
        "OOD AUROC (worst set)"
    with pytest.raises(UserError, match="no result has OOD AUROC nosuch"):
        pick(results, Constraints(objective="auroc:nosuch"))
    with pytest.raises(UserError, match="ECE has no instances"):
        Constraints(objective="ece:digits")


def test_worst_group_with_too_small_groups_enters_no_comparison(tmp_path: Path):
    write_synthetic_result(tmp_path, "x86", "openvino", "fp32", worst_group=0.5)
    small = write_synthetic_result(tmp_path, "x86", "openvino", "int8", worst_group=0.2)
    rows = build_rows(load_results([tmp_path]), unpaired_delta)
    (int8,) = [row for row in rows[("lpmr-tiny-fmnist", "x86")] if row.reference]
    assert "worst_group" in int8.deltas
    raw = json.loads((small / "metrics.json").read_text())
    raw["metrics"]["spurious"]["status"] = {"worst_group": NOT_ENOUGH_DATA}
    (small / "metrics.json").write_text(json.dumps(raw))
    rows = build_rows(load_results([tmp_path]), unpaired_delta)
    (int8,) = [row for row in rows[("lpmr-tiny-fmnist", "x86")] if row.reference]
    assert "worst_group" not in int8.deltas and "top1" in int8.deltas
    spurious = next(claim for claim in assess_claims(rows) if claim["claim"] == "spurious")
    assert spurious["verdict"] == "not measured" and spurious["evidence"] == []


def test_unpaired_margin_tests_from_the_normal_approximation_by_hand():
    # CI (0.01, 0.03) -> standard error 0.01 / 1.96 = 0.005102; margin 0.005:
    # H0 change <= +0.005: Phi((0.005 - 0.02) / se) = Phi(-2.940) = 0.00164 -> p beyond = 2 x 0.00164;
    # TOST: max(H0 change >= 0.005: Phi(2.940), H0 change <= -0.005: Phi(-4.900)) = 0.99836.
    spec = METRIC_BY_KEY["auroc"]
    delta = delta_from_interval(spec, 0.02, (0.01, 0.03), "normal", margin=0.005)
    assert delta.p_beyond_margin == pytest.approx(0.0032827, abs=1e-7) and delta.better and delta.significant
    assert delta.p_equivalence == pytest.approx(0.9983587, abs=1e-7)
    assert delta.p_value == pytest.approx(8.8575e-05, rel=1e-4)  # 2 Phi(-3.920)
    tiny = delta_from_interval(spec, 0.0005, (0.0003, 0.0007), "normal", margin=0.005)  # significant, not beyond
    assert tiny.significant and tiny.p_beyond_margin == 1.0 and tiny.p_equivalence < 1e-12
    unmargined = delta_from_interval(spec, 0.0005, (0.0003, 0.0007), "normal")  # margin 0: the test of any change
    assert unmargined.p_beyond_margin == pytest.approx(unmargined.p_value) and unmargined.p_equivalence is None
