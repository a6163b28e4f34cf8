"""Paired decisions between candidates evaluated on the same samples.

The difference delta = candidate - reference of one metric is bootstrapped *paired*: every resample
draws the same rows (samples) for all candidates, so what the candidates share cancels out. Tables
must be in sample order (not each candidate's own score order), the i-th table of every candidate
holding the same samples. Interval: BCa (``bootstrap.bca_interval``) of the paired differences, its
acceleration from the grouped jackknife with the same groups for all candidates. Tests, inverting it
(``bootstrap.bca_p_greater``) at alpha = 1 - confidence:

  superiority   two-sided: p = 2 min(P(delta <= 0), P(delta >= 0)); significant iff the confidence interval
                excludes 0.
  equivalence   two one-sided tests (TOST) against a practical margin m > 0 in the metric's unit:
                p = max(p of H0 delta <= -m, p of H0 delta >= m); equivalent iff the (1 - 2 alpha) interval
                lies inside (-m, m).

Decision of a candidate against the reference: "equivalent within margin" if TOST rejects (even when
the difference is significant: it is too small to matter); otherwise "better" / "worse" if the
superiority test rejects (in the metric's good / bad direction); otherwise "undecided".
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.stats.bootstrap import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    JACKKNIFE_GROUPS,
    Summary,
    Table,
    bca_interval,
    bca_p_greater,
    bootstrap_draws,
    jackknife_values,
    table_length,
)

BETTER, WORSE, EQUIVALENT, UNDECIDED, BEST = "better", "worse", "equivalent within margin", "undecided", "best"
SEPARATOR = "\x1f"  # joins candidate and column names in the joint tables


@dataclass(frozen=True)
class PairedDecision:
    """One candidate against the reference on one metric (``difference`` = candidate - reference)."""

    candidate: str
    reference: str
    metric: str
    higher_is_better: bool
    decision: str
    value: float
    reference_value: float
    difference: float
    ci: tuple[float, float] | None  # confidence-level paired BCa interval of the difference
    equivalence_ci: tuple[float, float] | None  # (1 - 2 alpha) interval used by TOST
    margin: float
    test: str  # the test that decided
    p_value: float  # of the test that decided (superiority when undecided)
    p_superiority: float
    p_equivalence: float | None  # None without a margin
    n: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        """JSON form (intervals as lists)."""
        return {**self.__dict__, "ci": list(self.ci) if self.ci else None,
                "equivalence_ci": list(self.equivalence_ci) if self.equivalence_ci else None}


def _joint_tables(candidates: Mapping[str, Sequence[Table]]) -> list[Table]:
    """One table per position holding every candidate's columns (``candidate SEP column``)."""
    positions = {len(tables) for tables in candidates.values()}
    if len(positions) != 1:
        raise UserError("the candidates have different numbers of tables; evaluate them with the same suite")
    joint = []
    for position in range(positions.pop()):
        lengths = {name: table_length(tables[position]) for name, tables in candidates.items()}
        if len(set(lengths.values())) != 1:
            raise UserError(f"the candidates were evaluated on different samples (rows per candidate: {lengths}); "
                            "a paired comparison needs the same samples for all of them")
        joint.append({f"{name}{SEPARATOR}{column}": values for name, tables in candidates.items()
                      for column, values in tables[position].items()})
    return joint


def _side(joint: Sequence[Table], name: str) -> list[Table]:
    prefix = name + SEPARATOR
    return [{column.removeprefix(prefix): values for column, values in table.items() if column.startswith(prefix)}
            for table in joint]


def _fmt(value: float) -> str:
    return f"{value:+.4g}"


def _interval(ci: tuple[float, float] | None) -> str:
    return "undefined" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _decide(candidate: str, reference: str, metric: str, higher_is_better: bool, margin: float,
            values: Mapping[str, float], draws: np.ndarray, jackknife: np.ndarray, n: int, n_resamples: int,
            confidence: float) -> PairedDecision:
    alpha = 1.0 - confidence
    difference = values[candidate] - values[reference]
    ci = bca_interval(difference, draws, jackknife, confidence)
    equivalence_ci = bca_interval(difference, draws, jackknife, 1.0 - 2.0 * alpha)
    p_greater = bca_p_greater(difference, draws, jackknife, 0.0)
    p_superiority = min(1.0, 2.0 * min(p_greater, 1.0 - p_greater))
    p_equivalence = (max(bca_p_greater(difference, draws, jackknife, -margin),
                         1.0 - bca_p_greater(difference, draws, jackknife, margin)) if margin > 0 else None)
    pair = (None if ci[0] is None else (ci[0], ci[1]),
            None if equivalence_ci[0] is None else (equivalence_ci[0], equivalence_ci[1]))
    bootstrap = f"{n_resamples} paired BCa bootstrap resamples of the same {n} samples"
    superiority = f"two-sided paired bootstrap test at {alpha:.0%}"
    equivalence = f"TOST equivalence at {alpha:.0%} with margin ±{margin:g}"
    stated = f"{metric} difference {_fmt(difference)}"
    if p_equivalence is not None and p_equivalence < alpha:
        decision, test, p_value = EQUIVALENT, equivalence, p_equivalence
        reason = (f"equivalent to {reference} within ±{margin:g}: {stated}, {1 - 2 * alpha:.0%} interval "
                  f"{_interval(pair[1])} inside the margin, {test} p={p_equivalence:.3g} ({bootstrap})")
    elif p_superiority < alpha:
        good = (difference > 0) == higher_is_better
        decision, test, p_value = (BETTER if good else WORSE), superiority, p_superiority
        reason = (f"{decision} than {reference}: {stated}, {confidence:.0%} interval {_interval(pair[0])} "
                  f"excludes 0, {test} p={p_superiority:.3g}"
                  + (f", not within the margin ±{margin:g} (TOST p={p_equivalence:.3g})" if margin > 0 else "")
                  + f" ({bootstrap})")
    else:
        decision, test, p_value = UNDECIDED, superiority, p_superiority
        reason = (f"undecided against {reference}: {stated}, {confidence:.0%} interval {_interval(pair[0])} "
                  f"includes 0 (p={p_superiority:.3g})"
                  + (f" and its {1 - 2 * alpha:.0%} interval {_interval(pair[1])} is not within ±{margin:g} "
                     f"(TOST p={p_equivalence:.3g})" if margin > 0 else "; no equivalence margin given")
                  + f" ({bootstrap})")
    return PairedDecision(candidate, reference, metric, higher_is_better, decision, values[candidate],
                          values[reference], difference, pair[0], pair[1], margin, test, p_value, p_superiority,
                          p_equivalence, n, reason)


def paired_decisions(summary: Summary, candidates: Mapping[str, Sequence[Table]], metric: str,
                     higher_is_better: bool, reference: str | None = None, margin: float = 0.0,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE,
                     jackknife_groups: int = JACKKNIFE_GROUPS) -> dict[str, PairedDecision]:
    """Each candidate against ``reference`` (default: the best point estimate of ``metric``) on the same samples.

    ``summary`` maps a candidate's tables to named values (the same function for all candidates);
    ``candidates`` maps a name to its tables in sample order; ``margin`` (>= 0, the metric's unit) is the
    equivalence margin, 0 for none. The reference itself gets decision "best" (or "reference").
    """
    if len(candidates) < 1:
        raise UserError("no candidates to compare")
    if margin < 0:
        raise UserError(f"the equivalence margin for {metric} must be >= 0, not {margin}")
    values = {name: float(summary(tables)[metric]) for name, tables in candidates.items()}
    best = max(values, key=lambda name: values[name] if higher_is_better else -values[name])
    reference = best if reference is None else reference
    if reference not in candidates:
        raise UserError(f"unknown reference '{reference}'; use one of {sorted(candidates)}")
    others = [name for name in candidates if name != reference]

    def differences(joint: Sequence[Table]) -> dict[str, float]:
        base = summary(_side(joint, reference))[metric]
        return {name: summary(_side(joint, name))[metric] - base for name in others}

    joint = _joint_tables(candidates)
    draws = bootstrap_draws(differences, joint, n_resamples, seed) if others else {}
    jackknife = jackknife_values(differences, joint, jackknife_groups, seed) if others else {}
    n = sum(table_length(table) for table in joint)
    decided = {name: _decide(name, reference, metric, higher_is_better, margin, values, draws[name], jackknife[name],
                             n, n_resamples, confidence) for name in others}
    label = BEST if reference == best else "reference"
    decided[reference] = PairedDecision(reference, reference, metric, higher_is_better, label, values[reference],
                                        values[reference], 0.0, (0.0, 0.0), (0.0, 0.0), margin, "", 1.0, 1.0, None,
                                        n, f"{label} {metric}: {values[reference]:.4g}")
    return decided
