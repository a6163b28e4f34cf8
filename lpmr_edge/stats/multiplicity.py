"""Multiplicity control and claim verdicts over many paired comparisons.

Corrections: Holm's step-down (family-wise error, within one claim) and Benjamini–Hochberg (false
discovery rate, across every comparison of a report; ``scipy.stats.false_discovery_control``).
Evidence is deduplicated first: comparisons whose per-sample outputs are identical (same
``outputs_hash``, supplied by the caller, e.g. a sha256 of the result's and the reference's stored
outputs) are one piece of evidence; later ones are marked ``duplicate_of`` the first and not counted.

Each comparison brings two tests against the claim metric's practical margin m (``Evidence``): the
two-sided test that the change exceeds m (p < alpha iff the confidence interval lies wholly beyond +m
or -m; with m = 0 the ordinary test of any change) and, for m > 0, the TOST equivalence test (p < alpha
iff the (1 - 2 alpha) interval lies within ±m). Each family of p-values is corrected on its own.
Verdict of a claim, from its unique comparisons after correction: the claim is *supported* by changes
beyond the margin in its direction ("better" for "improve", "worse" for "worsen" and "not improve") and
*contradicted* by changes beyond the margin the other way:
  holds                     some support, no contradiction
  mixed                     both
  does not hold             contradiction only
  equivalent within margin  neither, and every comparison is equivalent within the margin (no practical change)
  not significant           neither, and some comparison is undecided
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control

from lpmr_edge.stats.paired import EQUIVALENT

HOLDS, DOES_NOT_HOLD, MIXED, NOT_SIGNIFICANT = "holds", "does not hold", "mixed", "not significant"
EXPECTATIONS = {"improve": True, "worsen": False, "not improve": False}  # expectation -> supported by "better"
HOLM, BENJAMINI_HOCHBERG = "holm", "bh"
CORRECTION_TEXT = {HOLM: "Holm-corrected within the claim", BENJAMINI_HOCHBERG: "Benjamini–Hochberg across the report"}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values: max_{j <= i} min(1, (m - j + 1) p_(j)), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    adjusted = np.empty_like(p)
    adjusted[order] = stepped
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (scipy's ``false_discovery_control``)."""
    p = np.asarray(p_values, dtype=np.float64)
    return false_discovery_control(p, method="bh") if len(p) else p


@dataclass(frozen=True)
class Evidence:
    """One comparison bearing on a claim: did the metric move its good way, and how surely."""

    key: str  # names the comparison, e.g. "arm: executorch int8 vs fp32"
    better: bool  # the change goes the metric's good way
    p_value: float  # two-sided test that the change exceeds the practical margin (any change at margin 0), uncorrected
    outputs_hash: str | None = None  # equal hashes (same per-sample outputs) count once
    p_equivalence: float | None = None  # TOST within the margin, uncorrected; None without a margin


def deduplicate(evidence: Sequence[Evidence]) -> tuple[list[Evidence], dict[str, str]]:
    """The first comparison of each ``outputs_hash`` (None never matches), and duplicate key -> kept key."""
    first: dict[str, str] = {}
    unique, duplicates = [], {}
    for item in evidence:
        if item.outputs_hash is not None and item.outputs_hash in first:
            duplicates[item.key] = first[item.outputs_hash]
            continue
        if item.outputs_hash is not None:
            first[item.outputs_hash] = item.key
        unique.append(item)
    return unique, duplicates


def _corrected(p_values: Sequence[float | None], correction: str) -> list[float | None]:
    """Adjusted p-values by ``correction`` over the comparisons that have one (None stays None)."""
    tested = [i for i, p in enumerate(p_values) if p is not None]
    adjust = holm if correction == HOLM else benjamini_hochberg
    adjusted: list[float | None] = [None] * len(p_values)
    for i, p in zip(tested, adjust([p for p in p_values if p is not None])):
        adjusted[i] = float(p)
    return adjusted


def _verdict(evidence: Sequence[Evidence], duplicates: Mapping[str, str],
             adjusted: Mapping[str, tuple[float | None, float | None]],
             expectation: str, correction: str, alpha: float) -> dict[str, Any]:
    if expectation not in EXPECTATIONS:
        raise ValueError(f"unknown claim expectation '{expectation}'; use one of {sorted(EXPECTATIONS)}")
    rows = []
    for item in evidence:
        p_adjusted, p_equivalence_adjusted = adjusted.get(item.key, (None, None))
        counted = item.key not in duplicates
        rows.append({"key": item.key, "better": item.better, "p_value": item.p_value, "p_adjusted": p_adjusted,
                     "p_equivalence": item.p_equivalence, "p_equivalence_adjusted": p_equivalence_adjusted,
                     "duplicate_of": duplicates.get(item.key),
                     "significant": bool(counted and p_adjusted < alpha),
                     "equivalent": bool(counted and p_equivalence_adjusted is not None
                                        and p_equivalence_adjusted < alpha)})
    better = sum(row["significant"] and row["better"] for row in rows)
    worse = sum(row["significant"] and not row["better"] for row in rows)
    equivalent = sum(row["equivalent"] for row in rows)
    compared = len(rows) - len(duplicates)
    supported, contradicted = (better, worse) if EXPECTATIONS[expectation] else (worse, better)
    verdict = (MIXED if supported and contradicted else HOLDS if supported
               else DOES_NOT_HOLD if contradicted else EQUIVALENT if equivalent == compared > 0 else NOT_SIGNIFICANT)
    summary = f"{better} of {compared} better beyond the margin, {worse} worse, {equivalent} equivalent within it"
    if duplicates:
        plural = "s" if len(duplicates) > 1 else ""
        summary += f" ({len(duplicates)} duplicate{plural} of identical outputs counted once)"
    return {"verdict": verdict, "summary": summary, "correction": f"{CORRECTION_TEXT[correction]}, alpha {alpha:g}",
            "counts": {"compared": compared, "better": better, "worse": worse, "equivalent": equivalent,
                       "undecided": compared - better - worse - equivalent, "duplicates": len(duplicates)},
            "evidence": rows}


def claim_verdicts(claims: Mapping[str, tuple[str, Sequence[Evidence]]], correction: str = HOLM,
                   alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """One verdict per claim: ``claims`` maps a claim key to (expectation, its evidence).

    ``correction``: "holm" (within each claim) or "bh" (over the unique comparisons of all claims), applied
    to the beyond-margin p-values and, separately, to the equivalence p-values.
    Each verdict: ``{"verdict", "summary": "3 of 12 better beyond the margin, 1 worse, 2 equivalent within it",
    "correction", "counts": {"compared", "better", "worse", "equivalent", "undecided", "duplicates"},
    "evidence": [{"key", "better", "p_value", "p_adjusted", "p_equivalence", "p_equivalence_adjusted",
    "duplicate_of", "significant", "equivalent"}]}`` (adjusted p-values None for a duplicate). Evidence keys
    must be unique within a claim.
    """
    if correction not in CORRECTION_TEXT:
        raise ValueError(f"unknown correction '{correction}'; use one of {sorted(CORRECTION_TEXT)}")
    deduplicated = {claim: deduplicate(evidence) for claim, (_, evidence) in claims.items()}
    pooled = [(claim, item) for claim, (unique, _) in deduplicated.items() for item in unique]
    families = ([[entry for entry in pooled if entry[0] == claim] for claim in deduplicated] if correction == HOLM
                else [pooled])
    adjusted: dict[str, dict[str, tuple[float | None, float | None]]] = {claim: {} for claim in claims}
    for family in families:
        beyond = _corrected([item.p_value for _, item in family], correction)
        equivalence = _corrected([item.p_equivalence for _, item in family], correction)
        for (claim, item), pair in zip(family, zip(beyond, equivalence)):
            adjusted[claim][item.key] = pair
    return {claim: _verdict(evidence, deduplicated[claim][1], adjusted[claim], expectation, correction, alpha)
            for claim, (expectation, evidence) in claims.items()}
