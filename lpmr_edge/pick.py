"""Pick the (runtime, precision) to deploy on each target from result directories (``lpmr_edge.results``).

Picking, per (model, target):

1. a candidate is dropped when it breaks a constraint: latency (measured timings only, never emulated
   ones), image-tower size, top-1 drop against its FP32 reference (percentage points), or when it lacks
   the objective metric;
2. the best objective value wins, but candidates whose 95% CI overlaps the winner's are statistically
   tied with it, and among those the fastest measured (then the smallest image tower) is recommended;
3. the Pareto front of the remaining candidates (objective vs measured latency) lists the alternatives.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.results import HOST_TARGET, Result, comparable, format_estimate, group_results, reference_for
from lpmr_edge.suite.families import METRIC_BY_KEY, MetricSpec

OBJECTIVES = {"ece": "ece", "nll": "nll", "auroc": "auroc", "fpr95": "fpr95", "accuracy": "top1",
              "worst-group": "worst_group"}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when both coordinates are to be minimised."""
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 <= x and y2 <= y and (x2, y2) != (x, y) for x2, y2 in points)]


@dataclass(frozen=True)
class Constraints:
    """What the deployment must satisfy and what to optimise."""

    objective: str = "ece"
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_accuracy_drop: float | None = None  # top-1, percentage points

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective '{self.objective}'; use one of {', '.join(OBJECTIVES)}")
        for option, value in (("--max-latency-ms", self.max_latency_ms), ("--max-size-mb", self.max_size_mb),
                              ("--max-accuracy-drop", self.max_accuracy_drop)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserError(f"{option} is {value}; give a non-negative number")

    @property
    def metric(self) -> MetricSpec:
        """The objective's metric."""
        return METRIC_BY_KEY[OBJECTIVES[self.objective]]

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        return {"objective": self.objective, "max_latency_ms": self.max_latency_ms,
                "max_size_mb": self.max_size_mb, "max_accuracy_drop_pp": self.max_accuracy_drop}


def violations(result: Result, constraints: Constraints, results: Sequence[Result]) -> list[str]:
    """Why ``result`` cannot be recommended under ``constraints`` (empty when it can)."""
    problems = []
    if constraints.metric.key not in result.metrics:
        problems.append(f"no {constraints.metric.label} measured (its suite lacks it)")
    if constraints.max_latency_ms is not None:
        if result.timing is None:
            problems.append("no latency measured (run `lpmr-edge bench`)")
        elif result.timing.emulated:
            problems.append("only emulated timings, not a device latency")
        elif result.timing.latency_ms > constraints.max_latency_ms:
            problems.append(f"latency {result.timing.latency_ms:.2f} ms > {constraints.max_latency_ms:g} ms")
    if constraints.max_size_mb is not None:
        if result.size_mb is None:
            problems.append("image-tower size unknown")
        elif result.size_mb > constraints.max_size_mb:
            problems.append(f"image tower {result.size_mb:.1f} MB > {constraints.max_size_mb:g} MB")
    if constraints.max_accuracy_drop is not None and not result.is_reference:
        reference = reference_for(result, results)
        if reference is None or "top1" not in result.metrics or "top1" not in reference.metrics:
            problems.append("no FP32 top-1 to measure the accuracy drop against")
        elif not comparable(result, reference, METRIC_BY_KEY["top1"]):
            problems.append(f"{reference.variant} was evaluated on other images; re-run both with the same suite")
        else:
            drop = 100 * (reference.metrics["top1"].value - result.metrics["top1"].value)
            if drop > constraints.max_accuracy_drop:
                problems.append(f"top-1 drop {drop:.2f} pp > {constraints.max_accuracy_drop:g} pp "
                                f"(vs {reference.variant})")
    return problems


@dataclass(frozen=True)
class Candidate:
    """A result and the constraints it breaks."""

    result: Result
    violations: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """The recommendation for one (model, target)."""

    model: str
    target: str
    objective: MetricSpec
    recommended: Result | None
    reason: str
    alternatives: tuple[Result, ...]  # Pareto front of objective vs measured latency
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON form (also the ``pick --json`` output and report.json's ``recommendations``)."""
        def brief(result: Result) -> dict[str, Any]:
            estimate = result.metrics.get(self.objective.key)
            return {"runtime": result.runtime, "precision": result.precision, "variant": result.variant,
                    "results_dir": str(result.directory), "objective": estimate.to_json() if estimate else None,
                    "latency_ms": result.measured_latency_ms, "size_mb": result.size_mb}

        return {"model": self.model, "target": self.target, "objective": self.objective.key,
                "recommended": brief(self.recommended) if self.recommended else None, "reason": self.reason,
                "pareto": [brief(result) for result in self.alternatives],
                "rejected": [{**brief(c.result), "violations": list(c.violations)}
                             for c in self.candidates if c.violations]}


def _latency_key(result: Result) -> tuple[float, float]:
    return (result.measured_latency_ms if result.measured_latency_ms is not None else math.inf,
            result.size_mb if result.size_mb is not None else math.inf)


def _tie_break(chosen: Result, tied: Sequence[Result]) -> str:
    if chosen.measured_latency_ms is not None:
        return f"fastest of the {len(tied)} statistically tied ({chosen.measured_latency_ms:.2f} ms measured)"
    if chosen.size_mb is not None:
        return f"smallest of the {len(tied)} statistically tied ({chosen.size_mb:.1f} MB; none has a measured latency)"
    return f"{len(tied)} statistically tied, none with a measured latency or size"


def _reason(spec: MetricSpec, chosen: Result, best: Result, tied: Sequence[Result], feasible: int) -> str:
    value = format_estimate(spec, chosen.metrics[spec.key])
    reason = (f"best {spec.label} of {feasible} candidate(s) meeting the constraints: {value}" if chosen is best
              else f"{spec.label} {value}, whose 95% CI overlaps the best's ({best.variant}, "
                   f"{format_estimate(spec, best.metrics[spec.key])})")
    return f"{reason}; {_tie_break(chosen, tied)}" if len(tied) > 1 else reason


def choose(model: str, target: str, group: Sequence[Result], constraints: Constraints,
           results: Sequence[Result]) -> Choice:
    """The recommendation for one (model, target) group of results."""
    spec = constraints.metric
    candidates = tuple(Candidate(result, tuple(violations(result, constraints, results))) for result in group)
    feasible = [c.result for c in candidates if not c.violations]
    if not feasible:
        closest = min(candidates, key=lambda c: (len(c.violations), *_latency_key(c.result)))
        return Choice(model, target, spec, None, f"nothing satisfies the constraints (closest: "
                      f"{closest.result.variant}: {'; '.join(closest.violations)})", (), candidates)
    best = max(feasible, key=lambda r: spec.goodness(r.metrics[spec.key].value))
    tied = [r for r in feasible if r.metrics[spec.key].overlaps(best.metrics[spec.key])]
    chosen = min(tied, key=lambda r: (*_latency_key(r), -spec.goodness(r.metrics[spec.key].value)))
    timed = [r for r in feasible if r.measured_latency_ms is not None]
    front = pareto_front([(r.measured_latency_ms, -spec.goodness(r.metrics[spec.key].value)) for r in timed])
    alternatives = tuple(sorted((timed[i] for i in front), key=_latency_key))
    return Choice(model, target, spec, chosen, _reason(spec, chosen, best, tied, len(feasible)), alternatives,
                  candidates)


def pick(results: Sequence[Result], constraints: Constraints) -> list[Choice]:
    """A recommendation (or the reason there is none) for every (model, target) with exported artifacts.

    The host's eager torch results are references, not deployments: they get no recommendation.
    """
    if not any(constraints.metric.key in result.metrics for result in results):
        raise UserError(f"no result has {constraints.metric.label} (objective '{constraints.objective}'); "
                        "evaluate with a suite that measures it (e.g. --suite quick) or pick another objective")
    return [choose(model, target, group, constraints, results)
            for (model, target), group in group_results(results).items() if target != HOST_TARGET]


class NoFeasibleChoice(UserError):
    """Nothing satisfies the constraints on some target (the CLI exits with status 3)."""


def require_recommendations(choices: Sequence[Choice]) -> None:
    """Raise NoFeasibleChoice (one line) if any target has no recommendation, UserError if there are none."""
    if not choices:
        raise UserError("the results hold no exported artifact, only the host's torch reference; export and "
                        "evaluate artifacts first (`lpmr-edge export`, then `lpmr-edge eval --artifact DIR`)")
    failed = [choice for choice in choices if choice.recommended is None]
    if failed:
        raise NoFeasibleChoice("; ".join(f"target {choice.target} ({choice.model}): {choice.reason}"
                                         for choice in failed) + "; relax the constraints")
