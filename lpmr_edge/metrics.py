"""Metric definitions, pinned by hand-checked tests (tests/test_metrics.py).

Everything works on numpy arrays of per-sample outputs, so it runs on the host whatever
runtime produced them. Classification metrics are summaries of *per-sample outcomes*
(``classification_outcomes``): the bootstrap resamples those rows and re-summarises.

Definitions:
  ECE   sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over bins of top-1 confidence. ``equal-width``:
        bins (k/M, (k+1)/M], confidence 0 in the first bin (Guo et al. 2017). ``equal-mass``
        (adaptive): the samples in ascending confidence cut into M chunks as np.array_split does
        (sizes differ by at most one; tied confidences may fall either side of a cut).
  MCE   max over non-empty equal-width bins of |acc - conf|.
  NLL   mean of -log softmax(logits)[label] (natural log).
  Brier mean over samples of sum_k (p_k - onehot_k)^2 (multi-class, range [0, 2]).
  AURC  mean over k = 1..N of the error rate of the k most confident samples (confidence
        descending, ties kept in sample order).
  selective accuracy @ c: accuracy of the ceil(c*N) most confident samples.
  OOD   in-distribution is the positive class, higher score = more ID. AUROC as
        sklearn.roc_auc_score, AUPR-in/-out as sklearn.average_precision_score (OOD positive
        with negated scores for -out), FPR@95%TPR = FPR at the first ROC threshold (scores
        descending) where TPR >= 0.95. Computed from one sort, or, for bootstrapping, from the
        scores' dense ranks by counting (``ood_metrics_per_set``), which gives the same numbers;
        tests check equality with scikit-learn and between the two.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax

BIN_SCHEMES = ("equal-width", "equal-mass")
TOP_K = 5
OOD_SCORES = ("msp", "mcm", "max_logit", "energy")
TPR_LEVEL = 0.95
LOGIT_SCALE_BOUNDS = (1e-2, 1e3)

Outcomes = Mapping[str, np.ndarray]


def classification_outcomes(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample outcomes: label, prediction, top-1 confidence, correct, top-5 hit, NLL, Brier."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    log_probabilities = log_softmax(logits, axis=1)
    probabilities = np.exp(log_probabilities)
    predictions = logits.argmax(axis=1)
    rank_of_label = (logits > logits[rows, labels][:, None]).sum(axis=1)
    onehot = np.zeros_like(probabilities)
    onehot[rows, labels] = 1.0
    return {
        "label": labels,
        "prediction": predictions,
        "confidence": probabilities.max(axis=1),
        "correct": (predictions == labels).astype(np.float64),
        "top5": (rank_of_label < min(TOP_K, logits.shape[1])).astype(np.float64),
        "nll": -log_probabilities[rows, labels],
        "brier": ((probabilities - onehot) ** 2).sum(axis=1),
    }


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (sklearn's balanced_accuracy_score)."""
    classes, label_index = np.unique(labels, return_inverse=True)
    hits = np.bincount(label_index, weights=(predictions == labels), minlength=len(classes))
    return float(np.mean(hits / np.bincount(label_index, minlength=len(classes))))


def accuracy_summary(outcomes: Outcomes) -> dict[str, float]:
    """Top-1, top-5 and balanced accuracy from per-sample outcomes."""
    return {"top1": float(np.mean(outcomes["correct"])), "top5": float(np.mean(outcomes["top5"])),
            "balanced_accuracy": balanced_accuracy(outcomes["label"], outcomes["prediction"])}


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1, top-5 (top-k with k = min(5, classes)) and balanced accuracy."""
    return accuracy_summary(classification_outcomes(logits, labels))


def _descending(confidences: np.ndarray) -> np.ndarray:
    """Sample order by confidence, highest first, ties in sample order."""
    return np.argsort(-np.asarray(confidences), kind="stable")


def _equal_mass_index(descending: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin per sample: the ascending-confidence sequence cut like ``np.array_split`` into ``n_bins`` chunks."""
    position = np.empty(len(descending), dtype=np.int64)
    position[descending[::-1]] = np.arange(len(descending))
    size, larger = divmod(len(descending), n_bins)
    in_larger = larger * (size + 1)
    return np.where(position < in_larger, position // (size + 1), larger + (position - in_larger) // max(size, 1))


def _bin_index(confidences: np.ndarray, n_bins: int, scheme: str,
               descending: np.ndarray | None = None) -> np.ndarray:
    if scheme == "equal-width":
        return np.clip(np.ceil(confidences * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    if scheme == "equal-mass":
        return _equal_mass_index(_descending(confidences) if descending is None else descending, n_bins)
    raise ValueError(f"unknown bin scheme '{scheme}'; use one of {BIN_SCHEMES}")


def _bin_totals(confidences: np.ndarray, correct: np.ndarray, index: np.ndarray,
                n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, summed confidence, summed correctness)."""
    return (np.bincount(index, minlength=n_bins).astype(np.float64),
            np.bincount(index, weights=confidences, minlength=n_bins),
            np.bincount(index, weights=correct, minlength=n_bins))


def _ece(confidences: np.ndarray, correct: np.ndarray, index: np.ndarray, n_bins: int) -> float:
    count, confidence_sum, correct_sum = _bin_totals(confidences, correct, index, n_bins)
    return float(np.abs(correct_sum - confidence_sum).sum() / count.sum())


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15,
                               scheme: str = "equal-width") -> float:
    """ECE over ``n_bins`` bins of top-1 confidence (see the module docstring)."""
    return _ece(confidences, correct, _bin_index(confidences, n_bins, scheme), n_bins)


def max_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """MCE: the largest |accuracy - confidence| over non-empty equal-width bins."""
    count, confidence_sum, correct_sum = _bin_totals(confidences, correct,
                                                     _bin_index(confidences, n_bins, "equal-width"), n_bins)
    filled = count > 0
    return float(np.max(np.abs(correct_sum[filled] - confidence_sum[filled]) / count[filled]))


def reliability_diagram(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Per equal-width bin: bounds, sample count, mean confidence and accuracy (None when empty)."""
    count, confidence_sum, correct_sum = _bin_totals(confidences, correct,
                                                     _bin_index(confidences, n_bins, "equal-width"), n_bins)
    return [{"lower": k / n_bins, "upper": (k + 1) / n_bins, "count": int(count[k]),
             "confidence": float(confidence_sum[k] / count[k]) if count[k] else None,
             "accuracy": float(correct_sum[k] / count[k]) if count[k] else None} for k in range(n_bins)]


def _selective_risks(correct: np.ndarray, descending: np.ndarray) -> np.ndarray:
    """Error rate of the k most confident samples, for k = 1..N."""
    errors = 1.0 - np.asarray(correct, dtype=np.float64)[descending]
    return np.cumsum(errors) / np.arange(1, len(errors) + 1)


def _selective_accuracy(risks: np.ndarray, coverage: float) -> float:
    kept = max(1, math.ceil(coverage * len(risks) - 1e-9))
    return float(1.0 - risks[kept - 1])


def calibration_summary(outcomes: Outcomes, n_bins: int = 15,
                        coverages: Sequence[float] = (0.8, 0.9, 0.95)) -> dict[str, float]:
    """ECE (equal-width and equal-mass), MCE, NLL, Brier, AURC and selective accuracies (one sort)."""
    confidences, correct = outcomes["confidence"], outcomes["correct"]
    descending = _descending(confidences)
    risks = _selective_risks(correct, descending)
    summary = {
        "ece": expected_calibration_error(confidences, correct, n_bins, "equal-width"),
        "ece_equal_mass": _ece(confidences, correct, _equal_mass_index(descending, n_bins), n_bins),
        "mce": max_calibration_error(confidences, correct, n_bins),
        "nll": float(np.mean(outcomes["nll"])),
        "brier": float(np.mean(outcomes["brier"])),
        "aurc": float(np.mean(risks)),
    }
    for coverage in coverages:
        summary[f"selective_accuracy@{coverage:g}"] = _selective_accuracy(risks, coverage)
    return summary


def fit_logit_scale(cosine: np.ndarray, labels: np.ndarray) -> float:
    """The logit scale (1/temperature) minimising NLL of ``scale * cosine``, bounded to [0.01, 1000]."""
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))

    def nll(log_scale: float) -> float:
        return float(-np.mean(log_softmax(np.exp(log_scale) * cosine, axis=1)[rows, labels]))

    low, high = (math.log(bound) for bound in LOGIT_SCALE_BOUNDS)
    return float(math.exp(minimize_scalar(nll, bounds=(low, high), method="bounded",
                                          options={"xatol": 1e-6}).x))


def ood_scores(cosine: np.ndarray, logit_scale: float, mcm_temperature: float = 1.0) -> dict[str, np.ndarray]:
    """ID-ness scores per sample (higher = more in-distribution) from cosine similarities ``[N,C]``.

    msp: max softmax of ``logit_scale * cosine``; mcm: max softmax of ``cosine / mcm_temperature``
    (Ming et al. 2022, T=1 by default); max_logit: max of ``logit_scale * cosine``; energy:
    logsumexp of ``logit_scale * cosine`` (the negative free energy at T=1).
    """
    logits = logit_scale * np.asarray(cosine, dtype=np.float64)
    return {"msp": softmax(logits, axis=1).max(axis=1),
            "mcm": softmax(np.asarray(cosine, dtype=np.float64) / mcm_temperature, axis=1).max(axis=1),
            "max_logit": logits.max(axis=1),
            "energy": logsumexp(logits, axis=1)}


def _prepend(value: float, array: np.ndarray) -> np.ndarray:
    return np.concatenate(([value], array))


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """sklearn's average precision from recall (0 prepended) and precision at each threshold (scores descending)."""
    return float(np.sum(np.diff(recall) * precision))


def _ood_from_cumulative(id_above: np.ndarray, ood_above: np.ndarray, aupr: bool) -> dict[str, float]:
    """The OOD metrics from the ID and OOD samples scoring at or above each distinct score, highest first (the
    tie groups; the last entries are the totals)."""
    n_id, n_ood = id_above[-1], ood_above[-1]
    tpr, fpr = _prepend(0.0, id_above / n_id), _prepend(0.0, ood_above / n_ood)
    ranking = {"auroc": float(np.trapezoid(tpr, fpr)),
               "fpr_at_95_tpr": float(fpr[np.flatnonzero(tpr >= TPR_LEVEL - 1e-12)[0]])}
    if not aupr:
        return ranking
    # AUPR-out: OOD positive, thresholds ascending; "at or below" a tie group = total minus strictly above.
    ood_below = (n_ood - _prepend(0, ood_above[:-1]))[::-1]
    id_below = (n_id - _prepend(0, id_above[:-1]))[::-1]
    return {**ranking, "aupr_in": _average_precision(tpr, id_above / (id_above + ood_above)),
            "aupr_out": _average_precision(_prepend(0.0, ood_below / n_ood), ood_below / (ood_below + id_below))}


def ood_metrics(id_scores: np.ndarray, ood_scores_: np.ndarray, aupr: bool = True) -> dict[str, float]:
    """AUROC, FPR@95%TPR, AUPR-in and AUPR-out (unless not ``aupr``) with ID as the positive class (one sort)."""
    n_id = len(id_scores)
    scores = np.concatenate([id_scores, ood_scores_])
    order = np.argsort(-scores, kind="stable")
    last_of_tie = np.append(np.flatnonzero(np.diff(scores[order])), len(scores) - 1)
    id_above = np.cumsum(order < n_id)[last_of_tie]          # ID samples scoring >= each threshold
    return _ood_from_cumulative(id_above, last_of_tie + 1 - id_above, aupr)


def dense_ranks(columns: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """Each column's scores as integer ranks among the distinct scores of all ``columns`` together (equal
    scores share a rank, a higher score has a higher rank), so the OOD metrics of any rows of one column
    against any rows of another are the same from ranks (``ood_metrics_per_set``) as from the scores (
    ``ood_metrics``). None if a score is NaN or infinite (``ood_metrics`` orders ties among those by
    position, which counts cannot reproduce)."""
    joined = np.concatenate(columns)
    if not np.isfinite(joined).all():
        return None
    ranks = np.unique(joined, return_inverse=True)[1].astype(np.int64, copy=False)
    return np.split(ranks, np.cumsum([len(column) for column in columns])[:-1])


def _ood_from_counts(id_counts: np.ndarray, ood_counts: np.ndarray, aupr: bool) -> dict[str, float]:
    """The OOD metrics from ID and OOD samples per rank (``np.bincount`` of ``dense_ranks``)."""
    present = np.flatnonzero(id_counts + ood_counts)[::-1]  # the tie groups, highest score first
    return _ood_from_cumulative(np.cumsum(id_counts[present]), np.cumsum(ood_counts[present]), aupr)


def ood_metrics_per_set(id_scores: np.ndarray, ood_sets: Sequence[np.ndarray],
                        aupr: bool = True) -> list[dict[str, float]]:
    """``ood_metrics(id_scores, ood, aupr)`` for each ``ood`` of ``ood_sets``, the same numbers; from integer
    ranks (``dense_ranks`` of the scores of all of them) by counting the samples per rank, O(n + ranks) with
    no sort and the ID samples counted once for all sets; float scores go to ``ood_metrics``."""
    if not all(column.dtype.kind in "iu" for column in (id_scores, *ood_sets)):
        return [ood_metrics(id_scores, ood, aupr) for ood in ood_sets]
    size = 1 + max(int(column.max(initial=-1)) for column in (id_scores, *ood_sets))
    id_counts = np.bincount(id_scores, minlength=size)
    return [_ood_from_counts(id_counts, np.bincount(ood, minlength=size), aupr) for ood in ood_sets]


def group_summary(correct_by_group: Sequence[np.ndarray]) -> dict[str, float]:
    """Worst-group, average-group (mean of per-group accuracies) and their gap."""
    accuracies = np.array([np.mean(correct) for correct in correct_by_group])
    return {"worst_group": float(accuracies.min()), "average_group": float(accuracies.mean()),
            "gap": float(accuracies.mean() - accuracies.min())}
