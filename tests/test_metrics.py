"""Metric and spectral definitions, pinned on hand-checked cases and against scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

from lpmr_edge.metrics import (
    accuracy_metrics,
    calibration_summary,
    classification_outcomes,
    expected_calibration_error,
    fit_logit_scale,
    group_summary,
    max_calibration_error,
    ood_metrics,
    ood_scores,
    reliability_diagram,
)
from lpmr_edge.suite.families.spectrum import effective_rank, spectral_diagnostic


def test_perfectly_calibrated_toy_set_has_zero_ece_and_mce():
    confidences = np.array([0.8] * 10 + [0.6] * 5)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 3 + [0] * 2, dtype=float)
    assert expected_calibration_error(confidences, correct, 15) == pytest.approx(0.0, abs=1e-12)
    assert max_calibration_error(confidences, correct, 15) == pytest.approx(0.0, abs=1e-12)


def test_ece_and_mce_hand_computed():
    # bin of 0.9: 4 samples, accuracy 0.5 (gap 0.4); bin of 0.3: 6 samples, accuracy 0.5 (gap 0.2)
    confidences = np.array([0.9] * 4 + [0.3] * 6)
    correct = np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 0], dtype=float)
    assert expected_calibration_error(confidences, correct, 15) == pytest.approx(0.4 * 0.4 + 0.6 * 0.2)
    assert max_calibration_error(confidences, correct, 15) == pytest.approx(0.4)


def test_equal_width_bins_are_upper_inclusive():
    diagram = reliability_diagram(np.array([0.0, 0.5, 0.50001, 1.0]), np.ones(4), n_bins=10)
    counts = [bin_["count"] for bin_ in diagram]
    assert counts == [1, 0, 0, 0, 1, 1, 0, 0, 0, 1]  # 0 -> first bin, 0.5 -> (0.4, 0.5], 1 -> last
    assert diagram[4] == {"lower": 0.4, "upper": 0.5, "count": 1, "confidence": 0.5, "accuracy": 1.0}
    assert diagram[1]["confidence"] is None and diagram[1]["accuracy"] is None


def test_equal_mass_ece_hand_computed_and_matches_array_split():
    confidences, correct = np.array([0.9, 0.1, 0.8, 0.2]), np.array([1.0, 0.0, 1.0, 0.0])
    assert expected_calibration_error(confidences, correct, 2, "equal-mass") == pytest.approx(0.15)
    rng = np.random.default_rng(0)
    confidences, correct = rng.random(103), (rng.random(103) < 0.7).astype(float)
    chunks = np.array_split(np.argsort(confidences), 7)
    expected = sum(abs(correct[c].sum() - confidences[c].sum()) for c in chunks) / 103
    assert expected_calibration_error(confidences, correct, 7, "equal-mass") == pytest.approx(expected)


def test_nll_and_brier_on_a_two_class_example():
    logits = np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = (0.25, 0.75)
    outcomes = classification_outcomes(logits, np.array([1, 0]))
    assert outcomes["nll"] == pytest.approx([-math.log(0.75), math.log(4.0)])
    assert outcomes["brier"] == pytest.approx([0.125, 1.125])
    assert outcomes["confidence"] == pytest.approx([0.75, 0.75])
    assert list(outcomes["correct"]) == [1.0, 0.0]


def test_aurc_and_selective_accuracy_hand_computed():
    # most confident first: errors 0, 1, 1, 2 -> risks 0, 1/2, 1/3, 2/4
    outcomes = {"confidence": np.array([0.7, 0.9, 0.6, 0.8]), "correct": np.array([1.0, 1.0, 0.0, 0.0]),
                "nll": np.array([1.0, 2.0, 3.0, 4.0]), "brier": np.array([0.5, 0.5, 1.0, 1.0])}
    summary = calibration_summary(outcomes, 15, (0.5, 0.7, 0.75, 1.0))
    assert summary["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert summary["selective_accuracy@0.5"] == pytest.approx(0.5)
    assert summary["selective_accuracy@0.7"] == pytest.approx(2 / 3)  # ceil(2.8) = 3 kept
    assert summary["selective_accuracy@0.75"] == pytest.approx(2 / 3)
    assert summary["selective_accuracy@1"] == 0.5
    assert summary["nll"] == 2.5 and summary["brier"] == 0.75


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(500, 10)), rng.integers(0, 10, 500)
    values = accuracy_metrics(logits, labels)
    assert values["top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert values["top5"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=np.arange(10)))
    assert values["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)))


def test_ood_metrics_known_roc():
    # ID positive: pairs (id > ood) = 2 + 2 + 1 of 6; at TPR >= 95% every ID sample must pass (threshold 0.7)
    values = ood_metrics(np.array([0.9, 0.8, 0.7]), np.array([0.6, 0.75]))
    assert values["auroc"] == pytest.approx(5 / 6)
    assert values["fpr_at_95_tpr"] == pytest.approx(0.5)
    assert values["aupr_in"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert values["aupr_out"] == pytest.approx((1 + 2 / 3) / 2)
    assert ood_metrics(np.array([3.0, 2.0]), np.array([1.0, 0.0]))["fpr_at_95_tpr"] == 0.0
    tied = ood_metrics(np.ones(5), np.ones(3))
    assert tied["auroc"] == 0.5 and tied["fpr_at_95_tpr"] == 1.0


def test_ood_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(2)
    id_scores, ood = np.round(rng.normal(1, 1, 400), 1), np.round(rng.normal(0, 1, 150), 1)
    truth, scores = np.r_[np.ones(400), np.zeros(150)], np.r_[id_scores, ood]
    values = ood_metrics(id_scores, ood)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    assert values["auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert values["fpr_at_95_tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert values["aupr_in"] == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
    assert values["aupr_out"] == pytest.approx(average_precision_score(1 - truth, -scores), abs=1e-12)


def test_ood_scores_definitions():
    cosine = np.array([[0.3, 0.1, -0.2], [0.05, 0.0, 0.02]])
    scores = ood_scores(cosine, logit_scale=50.0, mcm_temperature=1.0)
    assert scores["msp"] == pytest.approx(softmax(50 * cosine, axis=1).max(1))
    assert scores["mcm"] == pytest.approx(softmax(cosine, axis=1).max(1))  # T = 1 over raw cosines
    assert scores["max_logit"] == pytest.approx([15.0, 2.5])
    assert scores["energy"] == pytest.approx(logsumexp(50 * cosine, axis=1))
    assert ood_scores(cosine, 50.0, 0.5)["mcm"] == pytest.approx(softmax(cosine / 0.5, axis=1).max(1))


def test_group_summary():
    values = group_summary([np.array([1.0, 1.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0, 1.0])])
    assert values == {"worst_group": 0.5, "average_group": 0.75, "gap": 0.25}


def test_fitted_logit_scale_recovers_the_generating_one():
    rng = np.random.default_rng(3)
    cosine = rng.uniform(-0.3, 0.3, size=(4000, 5))
    probabilities = softmax(25.0 * cosine, axis=1)
    labels = np.array([rng.choice(5, p=row) for row in probabilities])
    assert fit_logit_scale(cosine, labels) == pytest.approx(25.0, rel=0.1)


def test_effective_rank():
    assert effective_rank(np.eye(7)) == pytest.approx(7.0)
    assert effective_rank(np.outer(np.arange(1, 5), np.arange(1, 4))) == pytest.approx(1.0)
    assert effective_rank(np.diag([1.0, 1.0, 2.0])) == pytest.approx(math.exp(-2 * 0.25 * math.log(0.25)
                                                                               - 0.5 * math.log(0.5)))
    assert effective_rank(np.zeros((3, 3))) == 0.0


def test_spectral_diagnostic_locates_a_tail_residual():
    rng = np.random.default_rng(4)
    scales = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01])
    reference = rng.normal(size=(2000, 10)) * scales + 20.0 * np.eye(10)[0]  # unit-norm rows ~ direction e0
    unchanged = spectral_diagnostic(reference, reference, head_fraction=0.2)
    assert unchanged["relative_residual_norm"] == 0.0 and unchanged["residual_tail_share"] == 0.0
    assert unchanged["head_gain"] == pytest.approx(1.0) and unchanged["tail_gain"] == pytest.approx(1.0)
    _, _, basis = np.linalg.svd(reference / np.linalg.norm(reference, axis=1, keepdims=True)
                                - (reference / np.linalg.norm(reference, axis=1, keepdims=True)).mean(0))
    tail_noise = 1e-3 * rng.normal(size=(2000, 8)) @ basis[2:]
    perturbed = reference / np.linalg.norm(reference, axis=1, keepdims=True) + tail_noise
    result = spectral_diagnostic(perturbed, reference, head_fraction=0.2)
    assert result["head_ranks"] == 2 and result["residual_tail_share"] > 0.99
    assert result["effective_rank"]["reference"] > 1.0


def test_spectral_gain_sees_damped_tail_components():
    rng = np.random.default_rng(5)
    scales = np.array([3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    reference = rng.normal(size=(3000, 8)) * scales + 30.0 * np.eye(8)[0]
    damped = reference * np.r_[1.0, 1.0, 1.0, np.full(5, 0.5)]  # halve the low-variance coordinates
    result = spectral_diagnostic(damped, reference, head_fraction=0.25)
    assert result["head_gain"] == pytest.approx(1.0, rel=0.05)
    assert result["tail_gain"] == pytest.approx(0.25, rel=0.1)
    assert result["per_rank"]["gain"][2] == pytest.approx(0.25, rel=0.1)  # third rank = coordinate 3, halved
