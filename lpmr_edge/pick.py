"""Pick the (runtime, precision) to deploy on each target from result directories (``lpmr_edge.results``).

Picking, per (model, target):

1. a candidate is dropped when it breaks a constraint: latency (measured timings only, never emulated
   ones), image-tower size, top-1 drop against its FP32 reference (percentage points), or when it lacks
   the objective metric;
2. the best objective value is the reference. Every other feasible candidate is compared with it on the
   *paired* bootstrap of their difference (the same resampled images for both, BCa interval, from the
   per-sample outputs stored in each result directory; ``lpmr_edge.stats.paired_decisions``), with a
   practical equivalence margin per metric (``DEFAULT_MARGINS``, ``--margin``):
     equivalent within margin  (TOST rejects): tied with the best;
     worse                     (the two-sided paired test rejects and TOST does not): out;
     undecided                 (neither rejects): the recommendation stands on the best point estimate
                               and the reason names these candidates as not separated from it.
   Among the best and its equivalents the fastest measured (then the smallest image tower) is recommended.
   Candidates that cannot be paired with the best (no stored outputs, other samples or another suite)
   fall back to the overlap of the two stored 95% CIs, and the reason says so (that is not a test);
3. the Pareto front of the remaining candidates (objective vs measured latency) lists the alternatives.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.results import (
    HOST_TARGET,
    Result,
    comparable,
    format_estimate,
    group_results,
    read_estimate,
    reference_for,
)
from lpmr_edge.stats import EQUIVALENT, UNDECIDED, WORSE, PairedDecision, paired_decisions
from lpmr_edge.suite.families import METRIC_BY_KEY, MetricSpec
from lpmr_edge.suite.families.base import WORST

OBJECTIVES = {"ece": "ece", "nll": "nll", "auroc": "auroc", "fpr95": "fpr95", "accuracy": "top1",
              "worst-group": "worst_group"}
# Practical equivalence margins (the metric's unit; percent metrics as fractions): a difference smaller than
# this does not matter for deployment. 0.5 pp of top-1, 0.005 ECE, 0.01 nats NLL, 0.005 AUROC, 1 pp FPR@95
# and worst-group accuracy.
DEFAULT_MARGINS = {"top1": 0.005, "ece": 0.005, "nll": 0.01, "auroc": 0.005, "fpr95": 0.01, "worst_group": 0.01}


def _metric_key(name: str) -> str:
    """The metric key of an objective name or a metric key; UserError for anything else."""
    key = OBJECTIVES.get(name, name)
    if key not in DEFAULT_MARGINS:
        raise UserError(f"unknown metric '{name}' in --margin; use one of {', '.join(sorted(DEFAULT_MARGINS))}")
    return key


def parse_margin(text: str) -> tuple[str, float]:
    """``METRIC=VALUE`` (``top1=0.5pp``, ``ece=0.005``) -> (metric key, margin in the metric's unit).

    Percent metrics take percentage points (``0.5pp``) or a fraction below 1 (``0.005``)."""
    match = re.fullmatch(r"\s*([\w-]+)\s*=\s*([0-9.eE+-]+)\s*(pp)?\s*", text)
    if not match:
        raise UserError(f"--margin '{text}' is not METRIC=VALUE; write e.g. ece=0.005 or top1=0.5pp")
    key, points = _metric_key(match[1]), bool(match[3])
    try:
        value = float(match[2])
    except ValueError:
        raise UserError(f"--margin '{text}': '{match[2]}' is not a number") from None
    spec = METRIC_BY_KEY[key]
    if points and not spec.percent:
        raise UserError(f"--margin '{text}': {spec.label} is not a percentage; give a plain number")
    if spec.percent and not points and value >= 1:
        raise UserError(f"--margin '{text}': write percentage points as {value:g}pp, or a fraction below 1")
    value = value / 100 if points else value
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"--margin '{text}' must be a non-negative number")
    return key, value


def objective_metric(objective: str) -> MetricSpec:
    """The metric of an objective name; ``NAME:INSTANCE`` (``auroc:textiles``) reads one instance of a
    per-instance metric (e.g. one OOD set) and ``NAME:worst`` the worst instance."""
    name, _, instance = objective.partition(":")
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective '{objective}'; use one of {', '.join(OBJECTIVES)} "
                        "(auroc:SET and auroc:worst for one OOD set or the worst)")
    spec = METRIC_BY_KEY[OBJECTIVES[name]]
    if not instance:
        return spec
    if spec.instances is None:
        raise UserError(f"objective '{objective}': {spec.label} has no instances; use '{name}'")
    if instance == WORST:
        return replace(spec, key=f"{spec.key}:{WORST}", label=f"{spec.label} (worst set)", combine=WORST)
    return replace(spec, key=f"{spec.key}:{instance}", label=f"{spec.label} {instance}",
                   instances=lambda metrics: [instance])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when both coordinates are to be minimised."""
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 <= x and y2 <= y and (x2, y2) != (x, y) for x2, y2 in points)]


@dataclass(frozen=True)
class Constraints:
    """What the deployment must satisfy and what to optimise; ``margins`` (metric key -> margin in the
    metric's unit) override ``DEFAULT_MARGINS``."""

    objective: str = "ece"
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_accuracy_drop: float | None = None  # top-1, percentage points
    margins: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        objective_metric(self.objective)
        for option, value in (("--max-latency-ms", self.max_latency_ms), ("--max-size-mb", self.max_size_mb),
                              ("--max-accuracy-drop", self.max_accuracy_drop)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserError(f"{option} is {value}; give a non-negative number")
        for key, margin in self.margins.items():
            if _metric_key(key) != key or not (math.isfinite(margin) and margin >= 0):
                raise UserError(f"margin {key}={margin}: give a known metric key and a non-negative number")

    @classmethod
    def from_options(cls, margin: Sequence[str] | None = None, **options: Any) -> Constraints:
        """From the CLI options: ``margin`` holds ``METRIC=VALUE`` texts (see ``parse_margin``)."""
        return cls(**options, margins=dict(parse_margin(text) for text in margin or ()))

    @property
    def metric(self) -> MetricSpec:
        """The objective's metric."""
        return objective_metric(self.objective)

    def margin(self, spec: MetricSpec) -> float:
        """The equivalence margin of a metric (its ``NAME:INSTANCE`` variants share the metric's)."""
        key = spec.key.partition(":")[0]
        return self.margins.get(key, DEFAULT_MARGINS.get(key, 0.0))

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        return {"objective": self.objective, "max_latency_ms": self.max_latency_ms,
                "max_size_mb": self.max_size_mb, "max_accuracy_drop_pp": self.max_accuracy_drop,
                "margins": {**DEFAULT_MARGINS, **self.margins}}


def violations(result: Result, constraints: Constraints, results: Sequence[Result]) -> list[str]:
    """Why ``result`` cannot be recommended under ``constraints`` (empty when it can)."""
    problems = []
    objective = result.metrics.get(constraints.metric.key)
    if objective is None:
        problems.append(f"no {constraints.metric.label} measured (its suite lacks it)")
    elif objective.status:
        problems.append(f"{constraints.metric.label}: {objective.status}")
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
    """The recommendation for one (model, target); ``decisions`` are the paired decisions of the feasible
    candidates against the best (by variant; empty when none could be paired)."""

    model: str
    target: str
    objective: MetricSpec
    recommended: Result | None
    reason: str
    alternatives: tuple[Result, ...]  # Pareto front of objective vs measured latency
    candidates: tuple[Candidate, ...]
    decisions: Mapping[str, PairedDecision] = field(default_factory=dict)
    unpaired: Mapping[str, str] = field(default_factory=dict)  # variant -> why it could not be paired

    def to_json(self) -> dict[str, Any]:
        """JSON form (also the ``pick --json`` output and report.json's ``recommendations``)."""
        def brief(result: Result) -> dict[str, Any]:
            estimate = result.metrics.get(self.objective.key)
            return {"runtime": result.runtime, "precision": result.precision, "variant": result.variant,
                    "results_dir": str(result.directory), "objective": estimate.to_json() if estimate else None,
                    "latency_ms": result.measured_latency_ms, "size_mb": result.size_mb}

        return {"model": self.model, "target": self.target, "objective": self.objective.key,
                "recommended": brief(self.recommended) if self.recommended else None, "reason": self.reason,
                "decisions": {variant: decision.to_json() for variant, decision in self.decisions.items()},
                "unpaired": dict(self.unpaired),
                "pareto": [brief(result) for result in self.alternatives],
                "rejected": [{**brief(c.result), "violations": list(c.violations)}
                             for c in self.candidates if c.violations]}


def _latency_key(result: Result) -> tuple[float, float]:
    return (result.measured_latency_ms if result.measured_latency_ms is not None else math.inf,
            result.size_mb if result.size_mb is not None else math.inf)


def _tie_break(chosen: Result, tied: Sequence[Result]) -> str:
    if chosen.measured_latency_ms is not None:
        return f"fastest of the {len(tied)} tied ({chosen.measured_latency_ms:.2f} ms measured)"
    if chosen.size_mb is not None:
        return f"smallest of the {len(tied)} tied ({chosen.size_mb:.1f} MB; none has a measured latency)"
    return f"{len(tied)} tied, none with a measured latency or size"


def paired_against_best(spec: MetricSpec, feasible: Sequence[Result], best: Result,
                        margin: float) -> tuple[dict[str, PairedDecision], dict[str, str]]:
    """Paired decisions of every feasible candidate against ``best`` on the same samples, and the
    candidates that cannot be paired with it (variant -> why)."""
    from lpmr_edge.samples import metric_samples

    samples, unpaired = {}, {}
    for result in feasible:
        try:
            if result is not best and not comparable(result, best, spec):
                raise UserError("evaluated on other images than the best")
            samples[result.variant] = metric_samples(result, spec)
        except UserError as error:
            unpaired[result.variant] = str(error)
    if best.variant not in samples:
        why = f"the best ({best.variant}) cannot be paired: {unpaired[best.variant]}"
        return {}, {r.variant: why for r in feasible if r is not best}
    reference = samples[best.variant]
    for variant, sample in list(samples.items()):
        if sample.suite != reference.suite:
            unpaired[variant] = "scored with other suite settings than the best"
            del samples[variant]
    try:
        decisions = paired_decisions(reference.summary, {v: sample.tables for v, sample in samples.items()}, spec.key,
                                     spec.higher_is_better, best.variant, margin, reference.n_resamples,
                                     reference.seed)
    except UserError as error:  # e.g. different numbers of samples
        return {}, {r.variant: str(error) for r in feasible if r is not best}
    return decisions, unpaired


def margin_text(spec: MetricSpec, margin: float) -> str:
    """A margin as people read it (percentage points for percent metrics)."""
    return f"{100 * margin:g} pp" if spec.percent else f"{margin:g}"


def _paired_summary(spec: MetricSpec, decisions: Mapping[str, PairedDecision], margin: float) -> str:
    """What the paired comparison with the best found, naming the test and the margin."""
    others = [d for d in decisions.values() if d.reference != d.candidate]
    if not others:
        return ""
    counts = {label: [d.candidate for d in others if d.decision == label] for label in (EQUIVALENT, WORSE, UNDECIDED)}
    found = "; ".join(f"{label}: {', '.join(names)}" for label, names in counts.items() if names)
    return (f"paired bootstrap of each candidate's difference from the best ({others[0].n} samples resampled "
            f"together, BCa 95% interval; equivalence = TOST with margin ±{margin_text(spec, margin)}, "
            f"difference = two-sided test at 5%): {found}")


def _reason(spec: MetricSpec, chosen: Result, best: Result, tied: Sequence[Result], feasible: int,
            decisions: Mapping[str, PairedDecision], unpaired: Mapping[str, str], margin: float) -> str:
    value = format_estimate(spec, chosen.metrics[spec.key])
    if chosen is best:
        parts = [f"best {spec.label} of {feasible} candidate(s) meeting the constraints: {value}"]
    elif chosen.variant in decisions:
        parts = [f"{spec.label} {value}, {decisions[chosen.variant].reason}"]
    else:
        parts = [(f"{spec.label} {value}, whose 95% CI overlaps the best's ({best.variant}, "
                 f"{format_estimate(spec, best.metrics[spec.key])}): unpaired fallback, not a test")]
    if len(tied) > 1:
        parts.append(_tie_break(chosen, tied))
    parts.append(_paired_summary(spec, decisions, margin))
    undecided = [d.candidate for d in decisions.values() if d.decision == UNDECIDED]
    if undecided:
        parts.append(f"not separated from the best ({', '.join(undecided)}: undecided), so the recommendation "
                     "rests on the point estimates")
    if unpaired:
        by_reason: dict[str, list[str]] = {}
        for variant, text in unpaired.items():
            by_reason.setdefault(text, []).append(variant)
        why = "; ".join(f"{', '.join(variants)}: {text}" for text, variants in by_reason.items())
        parts.append(f"not paired, judged by the overlap of the stored 95% CIs instead ({why})")
    return "; ".join(part for part in parts if part)


def settled_states(group: Sequence[Result], objective: str) -> dict[str, Mapping[str, Any]] | None:
    """The ``metrics["sequential"]`` node of each result (variant -> node) when every one of them comes from
    one evaluation until settled on ``objective`` (``lpmr-edge run --until-settled``), else None."""
    nodes = {result.variant: result.raw["metrics"].get("sequential") or {} for result in group}
    if not nodes or any(node.get("objective") != objective or "state" not in node for node in nodes.values()):
        return None
    return nodes


def _settled_reason(nodes: Mapping[str, Mapping[str, Any]], chosen: Result, tied: Sequence[Result]) -> str:
    node = nodes[chosen.variant]
    states = ", ".join(f"{variant} {other['state']} ({other['images']} images)" for variant, other in nodes.items())
    stopped = {"settled": "settled", "budget": "not settled: the budget ran out",
               "images": "not settled: every image seen"}.get(node["stopped"], node["stopped"])
    parts = [(f"evaluation until settled on {node['loss']} ({node['rule']}, {node['confidence']:.0%}, margin "
              f"{node['margin']:g}; {stopped}): {states}")]
    if len(tied) > 1:
        parts.append(_tie_break(chosen, tied))
    if any(other["state"] == "undecided" for other in nodes.values()):
        parts.append("undecided candidates do not take the recommendation")
    return "; ".join(parts)


def choose(model: str, target: str, group: Sequence[Result], constraints: Constraints,
           results: Sequence[Result]) -> Choice:
    """The recommendation for one (model, target) group of results. Results of one evaluation until settled
    on the objective are tied as that decision says (its recommendation and the equivalent ones)."""
    spec = constraints.metric
    candidates = tuple(Candidate(result, tuple(violations(result, constraints, results))) for result in group)
    feasible = [c.result for c in candidates if not c.violations]
    if not feasible:
        closest = min(candidates, key=lambda c: (len(c.violations), *_latency_key(c.result)))
        return Choice(model, target, spec, None, f"nothing satisfies the constraints (closest: "
                      f"{closest.result.variant}: {'; '.join(closest.violations)})", (), candidates)
    best = max(feasible, key=lambda r: spec.goodness(r.metrics[spec.key].value))
    margin = constraints.margin(spec)
    decisions, unpaired = paired_against_best(spec, feasible, best, margin)
    equivalent = {variant for variant, decision in decisions.items() if decision.decision == EQUIVALENT}
    overlapping = {r.variant for r in feasible
                   if r.variant in unpaired and r.metrics[spec.key].overlaps(best.metrics[spec.key])}
    tied = [r for r in feasible if r is best or r.variant in equivalent | overlapping]
    nodes = settled_states(group, constraints.objective)
    settled_tie = [r for r in feasible if nodes and nodes[r.variant]["state"] in ("recommended", "equivalent")]
    if settled_tie:
        tied = settled_tie
    chosen = min(tied, key=lambda r: (*_latency_key(r), -spec.goodness(r.metrics[spec.key].value)))
    timed = [r for r in feasible if r.measured_latency_ms is not None]
    front = pareto_front([(r.measured_latency_ms, -spec.goodness(r.metrics[spec.key].value)) for r in timed])
    alternatives = tuple(sorted((timed[i] for i in front), key=_latency_key))
    reason = _settled_reason(nodes, chosen, tied) if settled_tie and nodes else \
        _reason(spec, chosen, best, tied, len(feasible), decisions, unpaired, margin)
    return Choice(model, target, spec, chosen, reason, alternatives, candidates, decisions, unpaired)


def _with_objective(results: Sequence[Result], spec: MetricSpec) -> list[Result]:
    """The results with the objective's estimate among their metrics (an ``auroc:SET`` objective is not
    one of the registered metrics)."""
    if spec.key in METRIC_BY_KEY:
        return list(results)
    return [replace(result, metrics={**result.metrics, spec.key: estimate})
            if (estimate := read_estimate(spec, result.raw["metrics"])) is not None else result
            for result in results]


def pick(results: Sequence[Result], constraints: Constraints) -> list[Choice]:
    """A recommendation (or the reason there is none) for every (model, target) with exported artifacts.

    The host's eager torch results are references, not deployments: they get no recommendation. An objective
    that is a mean over several instances reads the joint bootstrap interval where the outputs are stored
    (``lpmr_edge.samples.with_joint_intervals``), as the paired test and the report do.
    """
    from lpmr_edge.samples import with_joint_intervals

    results = with_joint_intervals(_with_objective(results, constraints.metric), [constraints.metric])
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
