"""The study's claims checked over every comparison with a reference: the change of one metric (``Delta``)
with its tests against a practical margin, and one verdict per claim over all its comparisons.

A ``Delta`` is ``result - reference`` with its 95% interval and p-values: the two-sided test of no change,
the two-sided test that the change lies beyond ±margin and TOST equivalence within ±margin (from the paired
bootstrap, or from the normal approximation of an interval: ``delta_from_interval``). ``assess_claims``
judges each claim (``lpmr_edge.suite.families.CLAIMS``) on the deltas of its metric by the practical-margin
rule of ``claim_rule``: Holm-corrected within the claim over its unique comparisons
(``lpmr_edge.stats.claim_verdicts``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scipy.special import ndtr, ndtri

from lpmr_edge.pick import margin_text
from lpmr_edge.report_document import NOT_MEASURED
from lpmr_edge.results import Result
from lpmr_edge.samples import outputs_digest
from lpmr_edge.stats import Evidence, claim_verdicts
from lpmr_edge.suite.families import CLAIMS, METRIC_BY_KEY, MetricSpec

ALPHA = 0.05  # claim verdicts: family-wise error within a claim


@dataclass(frozen=True)
class Delta:
    """``result - reference`` for one metric, with its 95% CI, whether the change is significant (the CI
    excludes 0), the two-sided p-value of that test and, for an accuracy, the exact McNemar p. Against the
    metric's practical ``margin`` m: ``p_beyond_margin`` (two-sided test that |change| > m, p < 5% iff the CI
    lies wholly beyond ±m) and ``p_equivalence`` (TOST within ±m; None at m = 0)."""

    value: float
    ci: tuple[float, float] | None
    significant: bool
    better: bool  # the change goes the metric's good way (meaningful when significant)
    method: str
    p_value: float | None = None
    mcnemar_p: float | None = None
    margin: float = 0.0
    p_beyond_margin: float | None = None
    p_equivalence: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"value": self.value, "ci": list(self.ci) if self.ci else None, "significant": self.significant,
                "better": self.better, "method": self.method, "p_value": self.p_value, "mcnemar_p": self.mcnemar_p,
                "margin": self.margin, "p_beyond_margin": self.p_beyond_margin, "p_equivalence": self.p_equivalence}


def delta_from_interval(spec: MetricSpec, value: float, ci: tuple[float, float] | None, method: str,
                        p_value: float | None = None, mcnemar_p: float | None = None, margin: float = 0.0,
                        p_beyond_margin: float | None = None, p_equivalence: float | None = None) -> Delta:
    """A Delta whose significance is "the CI excludes zero"; p-values not given come from the normal
    approximation of the CI (its half-width / 1.96 as the standard error): the two-sided test of 0, the
    two one-sided tests against ±``margin`` (``p_beyond_margin`` = 2 x the smaller) and TOST."""
    significant = ci is not None and (ci[0] > 0 or ci[1] < 0)
    if ci is not None and None in (p_value, p_beyond_margin):
        spread = (ci[1] - ci[0]) / (2 * float(ndtri(0.975)))

        def p_above(null: float) -> float:  # one-sided p of H0: change <= null
            return float(ndtr((null - value) / spread)) if spread > 0 else float(value <= null)

        def p_below(null: float) -> float:  # one-sided p of H0: change >= null
            return float(ndtr((value - null) / spread)) if spread > 0 else float(value >= null)

        p_value = p_value if p_value is not None else min(1.0, 2 * min(p_above(0.0), p_below(0.0)))
        p_beyond_margin = min(1.0, 2 * min(p_above(margin), p_below(-margin)))
        p_equivalence = max(p_below(margin), p_above(-margin)) if margin > 0 else None
    return Delta(value, ci, significant, spec.better(value, 0.0), method, p_value, mcnemar_p, margin,
                 p_beyond_margin, p_equivalence)


class Comparison(Protocol):
    """A result compared with its reference on every metric (the report's table row): what a claim reads."""

    @property
    def result(self) -> Result: ...

    @property
    def reference(self) -> Result | None: ...

    @property
    def deltas(self) -> Mapping[str, Delta]: ...


def claim_rule(spec: MetricSpec, margin: float, alpha: float = ALPHA) -> str:
    """How ``assess_claims`` judges a claim on ``spec`` with practical ``margin``, in words."""
    shown = margin_text(spec, margin)
    return (f"practical margin ±{shown} ({spec.label}): a comparison counts as better or worse only when its "
            f"{1 - alpha:.0%} paired interval lies wholly beyond +{shown} or -{shown} (two one-sided tests against "
            f"the margin at {alpha / 2:.1%} each; p = 2 x the smaller), and as equivalent within the margin when its "
            f"{1 - 2 * alpha:.0%} interval lies inside ±{shown} (TOST at {alpha:.0%}); both families of p-values "
            f"Holm-corrected within the claim over its unique comparisons")


def assess_claims(rows: Mapping[tuple[str, str], Sequence[Comparison]],
                  digest: Callable[[Result], str | None] = outputs_digest) -> list[dict[str, Any]]:
    """One verdict per claim over all its comparisons (``lpmr_edge.stats.claim_verdicts``, Holm-corrected
    within the claim) by the practical-margin rule of ``claim_rule``, with the margin each delta was tested
    against. Comparisons whose result and reference both have identical stored outputs (``digest``) to an
    earlier comparison's count once and are marked ``duplicate_of`` it."""
    digests: dict[Path, str | None] = {}

    def pair_hash(row: Comparison) -> str | None:
        for result in (row.result, row.reference):
            if result is not None and result.directory not in digests:
                digests[result.directory] = digest(result)
        mine, theirs = digests[row.result.directory], digests[row.reference.directory] if row.reference else None
        return f"{mine}:{theirs}" if mine and theirs else None

    assessed = []
    for claim in CLAIMS:
        spec = METRIC_BY_KEY[claim.metric]
        compared = [(model, target, row, row.deltas[claim.metric]) for (model, target), group in rows.items()
                    for row in group
                    if claim.metric in row.deltas and row.deltas[claim.metric].p_beyond_margin is not None]
        keys = [f"{target} ({model}): {row.result.variant} vs {row.reference.variant if row.reference else '-'}"
                for model, target, row, _ in compared]
        evidence = [Evidence(key, delta.better, delta.p_beyond_margin, pair_hash(row),  # type: ignore[arg-type]
                             delta.p_equivalence) for key, (_, _, row, delta) in zip(keys, compared)]
        judged = claim_verdicts({claim.key: (claim.expectation, evidence)}, alpha=ALPHA)[claim.key] if evidence else None
        margin = compared[0][3].margin if compared else None  # build_rows tests a metric against one margin
        items = [{"model": model, "target": target, "variant": row.result.variant,
                  "reference": row.reference.variant if row.reference else None, "delta": delta.to_json(),
                  "test": f"{delta.method}: tests against the margin ±{margin_text(spec, delta.margin)}",
                  **{name: judged_row[name] for name in ("p_value", "p_adjusted", "p_equivalence",
                                                         "p_equivalence_adjusted", "duplicate_of", "significant",
                                                         "equivalent")}}
                 for (model, target, row, delta), judged_row in zip(compared, judged["evidence"] if judged else [])]
        assessed.append({"claim": claim.key, "statement": claim.statement, "metric": claim.metric,
                         "metric_label": spec.label, "expectation": claim.expectation,
                         "verdict": judged["verdict"] if judged else NOT_MEASURED,
                         "summary": (f"{judged['summary']} (margin ±{margin_text(spec, margin)})"  # type: ignore[arg-type]
                                     if judged else "no quantized result measured this"),
                         "correction": judged["correction"] if judged else "",
                         "margin": margin, "rule": claim_rule(spec, margin) if margin is not None else "",
                         "counts": judged["counts"] if judged else {}, "evidence": items})
    return assessed
