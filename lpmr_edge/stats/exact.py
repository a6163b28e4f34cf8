"""Exact tests and intervals for proportions: McNemar, Clopper–Pearson / Wilson, worst-group accuracy."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import binomtest

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


def worst_group_accuracy(correct_by_group: Mapping[str, np.ndarray], min_group_size: int = MIN_GROUP_SIZE,
                         confidence: float = CONFIDENCE, method: str = "clopper-pearson") -> dict[str, Any]:
    """Each group's accuracy with an exact interval, and the worst group's accuracy with an interval.

    Worst-group interval for min_g p_g, at least ``confidence`` by construction (alpha = 1 - confidence):
      low  = min_g of the one-sided (1 - alpha/2) lower bounds  (fails only if the truly worst group's
             bound does: probability <= alpha/2);
      high = min_g of the one-sided (1 - alpha/(2G)) upper bounds (Bonferroni over the G groups: fails only
             if some group's bound falls below its own accuracy: probability <= alpha/2).
    It contains the observed worst accuracy. When the smallest group has fewer than ``min_group_size``
    samples, ``status`` is "not enough data" and ``value``/``ci`` are None (the groups are still listed).

    Returns ``{"value", "ci", "method", "status", "reason", "n", "n_groups", "min_group_size",
    "worst_group": {"name", "n", "accuracy"}, "smallest_group": {"name", "n"},
    "groups": {name: {"n", "correct", "accuracy", "ci"}}}``.
    """
    if not correct_by_group:
        raise ValueError("worst-group accuracy needs at least one group")
    alpha = 1.0 - confidence
    groups: dict[str, dict[str, Any]] = {}
    lows, highs = [], []
    for name, correct in correct_by_group.items():
        n, hits = len(correct), int(np.sum(correct))
        if not n:
            raise ValueError(f"group '{name}' has no samples")
        groups[name] = {"n": n, "correct": hits, "accuracy": hits / n,
                        "ci": proportion_interval(hits, n, confidence, method)}
        lows.append(proportion_interval(hits, n, 1.0 - alpha / 2, method, "greater")[0])
        highs.append(proportion_interval(hits, n, 1.0 - alpha / (2 * len(correct_by_group)), method, "less")[1])
    worst = min(groups, key=lambda name: groups[name]["accuracy"])
    smallest = min(groups, key=lambda name: groups[name]["n"])
    enough = groups[smallest]["n"] >= min_group_size
    return {
        "value": groups[worst]["accuracy"] if enough else None,
        "ci": [float(min(lows)), float(min(highs))] if enough else None,
        "method": f"{method} per group; worst group: min of lower bounds, min of Bonferroni upper bounds",
        "status": "ok" if enough else NOT_ENOUGH_DATA,
        "reason": "" if enough else (f"the smallest group '{smallest}' has {groups[smallest]['n']} samples, "
                                     f"fewer than the minimum group size {min_group_size}"),
        "n": sum(group["n"] for group in groups.values()), "n_groups": len(groups), "min_group_size": min_group_size,
        "worst_group": {"name": worst, "n": groups[worst]["n"], "accuracy": groups[worst]["accuracy"]},
        "smallest_group": {"name": smallest, "n": groups[smallest]["n"]},
        "groups": groups,
    }
