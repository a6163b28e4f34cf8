"""Exact tests and intervals for proportions: McNemar, Clopper–Pearson / Wilson, worst-group accuracy."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import beta, binomtest

from lpmr_edge.stats.bootstrap import CONFIDENCE

PROPORTION_METHODS = {"clopper-pearson": "exact", "wilson": "wilson"}  # our name -> scipy's
MIN_GROUP_SIZE = 30
NOT_ENOUGH_DATA = "not enough data"


def mcnemar_exact(correct: np.ndarray, reference_correct: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar test on paired correctness: two-sided binomial test on the discordant pairs."""
    correct = np.asarray(correct, dtype=bool)
    reference_correct = np.asarray(reference_correct, dtype=bool)
    only_result = int(np.sum(correct & ~reference_correct))
    only_reference = int(np.sum(~correct & reference_correct))
    discordant = only_result + only_reference
    p_value = float(binomtest(only_result, discordant, 0.5).pvalue) if discordant else 1.0
    return {"only_result_correct": only_result, "only_reference_correct": only_reference, "p_value": p_value}


def proportion_interval(successes: int, n: int, confidence: float = CONFIDENCE, method: str = "clopper-pearson",
                        alternative: str = "two-sided") -> list[float]:
    """Interval for a binomial proportion (scipy's ``binomtest(...).proportion_ci``).

    ``method``: "clopper-pearson" (exact, conservative) or "wilson" (score interval).
    ``alternative``: "two-sided", "greater" (a lower bound, upper = 1) or "less" (an upper bound, lower = 0).
    """
    if method not in PROPORTION_METHODS:
        raise ValueError(f"unknown proportion interval '{method}'; use one of {sorted(PROPORTION_METHODS)}")
    interval = binomtest(int(successes), int(n), alternative=alternative).proportion_ci(
        confidence, method=PROPORTION_METHODS[method])
    return [float(interval.low), float(interval.high)]


def clopper_pearson_bounds(successes: np.ndarray, n: np.ndarray, lower_confidence: float,
                          upper_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided exact (Clopper–Pearson) lower and upper bounds at the given confidences, vectorised.

    The same bounds as ``proportion_interval(k, n, c, "clopper-pearson", "greater"/"less")``.
    """
    successes, n = np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = np.where(successes > 0, beta.ppf(1.0 - lower_confidence, successes, n - successes + 1), 0.0)
        upper = np.where(successes < n, beta.ppf(upper_confidence, successes + 1, n - successes), 1.0)
    return lower, upper


def worst_group_accuracy(correct_by_group: Mapping[str, np.ndarray], min_group_size: int = MIN_GROUP_SIZE,
                         confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Each group's accuracy with an exact (Clopper–Pearson) interval, and the worst group's accuracy.

    Worst-group interval for min_g p_g, at least ``confidence`` by construction (alpha = 1 - confidence):
      low  = min_g of the one-sided (1 - alpha/2) lower bounds (fails only if the truly worst group's
             bound does: probability <= alpha/2);
      high = min_g of the one-sided (1 - alpha/(2G)) upper bounds (Bonferroni over the G groups: fails only
             if some group's bound falls below its own accuracy: probability <= alpha/2).
    It contains the observed worst accuracy. Close to nominal when one group is clearly worst; conservative
    (towards 99.5%) when several groups tie for worst. When the smallest group has fewer than
    ``min_group_size`` samples, ``status`` is "not enough data" and ``value``/``ci`` are None (the groups
    are still listed).

    Returns ``{"value", "ci", "method", "status", "reason", "n", "n_groups", "min_group_size",
    "worst_group": {"name", "n", "accuracy"}, "smallest_group": {"name", "n"},
    "groups": {name: {"n", "correct", "accuracy", "ci"}}}``.
    """
    names = list(correct_by_group)
    sizes = np.array([len(correct_by_group[name]) for name in names])
    if not len(names) or not sizes.min():
        raise ValueError("worst-group accuracy needs at least one group, each with samples")
    hits = np.array([int(np.sum(correct_by_group[name])) for name in names])
    alpha, accuracies = 1.0 - confidence, hits / sizes
    low, high = clopper_pearson_bounds(hits, sizes, 1.0 - alpha / 2, 1.0 - alpha / 2)
    worst_low, _ = clopper_pearson_bounds(hits, sizes, 1.0 - alpha / 2, 1.0)
    _, worst_high = clopper_pearson_bounds(hits, sizes, 0.0, 1.0 - alpha / (2 * len(names)))
    worst, smallest = int(np.argmin(accuracies)), int(np.argmin(sizes))
    enough = bool(sizes[smallest] >= min_group_size)
    return {
        "value": float(accuracies[worst]) if enough else None,
        "ci": [float(worst_low.min()), float(worst_high.min())] if enough else None,
        "method": "exact: Clopper–Pearson per group; worst group: min of lower bounds, min of Bonferroni upper bounds",
        "status": "ok" if enough else NOT_ENOUGH_DATA,
        "reason": "" if enough else (f"the smallest group '{names[smallest]}' has {sizes[smallest]} samples, "
                                     f"fewer than the minimum group size {min_group_size}"),
        "n": int(sizes.sum()), "n_groups": len(names), "min_group_size": min_group_size,
        "worst_group": {"name": names[worst], "n": int(sizes[worst]), "accuracy": float(accuracies[worst])},
        "smallest_group": {"name": names[smallest], "n": int(sizes[smallest])},
        "groups": {name: {"n": int(size), "correct": int(hit), "accuracy": float(hit / size),
                          "ci": [float(lower), float(upper)]}
                   for name, size, hit, lower, upper in zip(names, sizes, hits, low, high)},
    }
