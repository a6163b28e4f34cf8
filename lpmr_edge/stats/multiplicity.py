"""Multiplicity control and claim verdicts over many paired comparisons.

Corrections: Holm's step-down (family-wise error, within one claim) and Benjamini–Hochberg (false
discovery rate, across every comparison of a report; ``scipy.stats.false_discovery_control``).
Evidence is deduplicated first: comparisons whose per-sample outputs are identical (same
``outputs_hash``, supplied by the caller, e.g. a sha256 of the result's and the reference's stored
outputs) are one piece of evidence; later ones are marked ``duplicate_of`` the first and not counted.

Verdict of a claim, from its unique comparisons after correction (significant: adjusted p < alpha):
the claim is *supported* by significant changes in its direction ("better" for "improve", "worse"
for "worsen" and "not improve") and *contradicted* by significant changes the other way:
  holds           some support, no contradiction
  mixed           both
  does not hold   contradiction only
  not significant neither
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control

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
    p_value: float  # two-sided, uncorrected
    outputs_hash: str | None = None  # equal hashes (same per-sample outputs) count once


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


def _verdict(evidence: Sequence[Evidence], duplicates: Mapping[str, str], adjusted: Mapping[str, float],
             expectation: str, correction: str, alpha: float) -> dict[str, Any]:
    if expectation not in EXPECTATIONS:
        raise ValueError(f"unknown claim expectation '{expectation}'; use one of {sorted(EXPECTATIONS)}")
    rows = [{"key": item.key, "better": item.better, "p_value": item.p_value,
             "p_adjusted": adjusted.get(item.key), "duplicate_of": duplicates.get(item.key),
             "significant": bool(item.key not in duplicates and adjusted[item.key] < alpha)} for item in evidence]
    better = sum(row["significant"] and row["better"] for row in rows)
    worse = sum(row["significant"] and not row["better"] for row in rows)
    supported, contradicted = (better, worse) if EXPECTATIONS[expectation] else (worse, better)
    verdict = (MIXED if supported and contradicted else HOLDS if supported
               else DOES_NOT_HOLD if contradicted else NOT_SIGNIFICANT)
    compared = len(rows) - len(duplicates)
    summary = f"{better} of {compared} significantly better, {worse} worse"
    if duplicates:
        plural = "s" if len(duplicates) > 1 else ""
        summary += f" ({len(duplicates)} duplicate{plural} of identical outputs counted once)"
    return {"verdict": verdict, "summary": summary, "correction": f"{CORRECTION_TEXT[correction]}, alpha {alpha:g}",
            "counts": {"compared": compared, "better": better, "worse": worse,
                       "not_significant": compared - better - worse, "duplicates": len(duplicates)},
            "evidence": rows}


def claim_verdicts(claims: Mapping[str, tuple[str, Sequence[Evidence]]], correction: str = HOLM,
                   alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """One verdict per claim: ``claims`` maps a claim key to (expectation, its evidence).

    ``correction``: "holm" (within each claim) or "bh" (over the unique comparisons of all claims).
    Each verdict: ``{"verdict", "summary": "3 of 12 significantly better, 1 worse", "correction",
    "counts": {"compared", "better", "worse", "not_significant", "duplicates"},
    "evidence": [{"key", "better", "p_value", "p_adjusted", "duplicate_of", "significant"}]}``
    (``p_adjusted`` None for a duplicate). Evidence keys must be unique within a claim.
    """
    if correction not in CORRECTION_TEXT:
        raise ValueError(f"unknown correction '{correction}'; use one of {sorted(CORRECTION_TEXT)}")
    deduplicated = {claim: deduplicate(evidence) for claim, (_, evidence) in claims.items()}
    adjusted: dict[str, dict[str, float]] = {}
    if correction == HOLM:
        for claim, (unique, _) in deduplicated.items():
            adjusted[claim] = {item.key: float(p) for item, p in zip(unique, holm([item.p_value for item in unique]))}
    else:
        pooled = [(claim, item) for claim, (unique, _) in deduplicated.items() for item in unique]
        for (claim, item), p in zip(pooled, benjamini_hochberg([item.p_value for _, item in pooled])):
            adjusted.setdefault(claim, {})[item.key] = float(p)
    return {claim: _verdict(evidence, deduplicated[claim][1], adjusted.get(claim, {}), expectation, correction, alpha)
            for claim, (expectation, evidence) in claims.items()}
