"""The tune's selection rule, its test-split verdict and its Pareto plot.

Selection (validation split only): a trial is feasible when its validation top-1 is at most
``max_accuracy_drop`` points below uniform FP32's, its latency at most ``max_latency_ratio`` x uniform
INT8's (measured in the same interleaved benchmark run) and at most ``max_latency_ms``; the chosen
configuration is the feasible quantized trial with the best validation objective (ties: the faster).

Verdict (test split only): the chosen configuration against uniform INT8 on the objective with the suite's
paired bootstrap (``lpmr_edge.stats.paired_decisions``: BCa interval, two-sided test at 5%, TOST against the
picker's equivalence margin). "significantly more reliable" only when that decision is ``better``.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpmr_edge.manifest import atomic_write_bytes
from lpmr_edge.pick import objective_metric, pareto_front
from lpmr_edge.results import read_result
from lpmr_edge.samples import metric_samples
from lpmr_edge.stats import BETTER, PairedDecision, paired_decisions
from lpmr_edge.suite.families import METRIC_BY_KEY, MetricSpec

TOP1 = METRIC_BY_KEY["top1"]
OBJECTIVE_ALIASES = {"top1": "accuracy", "worst_group": "worst-group"}  # tune objective names -> the picker's
TUNED, INT8 = "tuned", "uniform int8"


def objective_spec(objective: str) -> MetricSpec:
    """The metric of a tune objective (ece, nll, top1, auroc:SET, auroc:worst, worst_group)."""
    name, colon, instance = objective.partition(":")
    return objective_metric(OBJECTIVE_ALIASES.get(name, name) + colon + instance)


@dataclass(frozen=True)
class TuneConstraints:
    """What the chosen configuration must satisfy on validation (None: no limit)."""

    max_latency_ratio: float | None = None  # x uniform INT8's latency
    max_latency_ms: float | None = None
    max_accuracy_drop: float | None = None  # top-1 percentage points below uniform FP32

    def violations(self, trial: Mapping[str, Any], fp32_top1: float | None, spec: MetricSpec) -> list[str]:
        """Why a trial cannot be chosen (empty when it can)."""
        found = []
        if value(trial, spec) is None:
            status = ((trial.get("validation") or {}).get(spec.key) or {}).get("status")
            found.append(f"no usable validation {spec.label}{f' ({status})' if status else ''}")
        top1 = value(trial, TOP1)
        if self.max_accuracy_drop is not None and fp32_top1 is not None and top1 is not None and \
                100 * (fp32_top1 - top1) > self.max_accuracy_drop:
            found.append(f"top-1 {100 * (fp32_top1 - top1):.2f} pp below fp32 > {self.max_accuracy_drop:g} pp")
        latency = trial.get("latency") or {}
        if self.max_latency_ratio is not None and latency.get("ratio_to_int8", math.inf) > self.max_latency_ratio:
            found.append(f"latency {latency.get('ratio_to_int8', math.nan):.2f}x int8 > {self.max_latency_ratio:g}x")
        if self.max_latency_ms is not None and latency.get("median_ms", math.inf) > self.max_latency_ms:
            found.append(f"latency {latency.get('median_ms', math.nan):.2f} ms > {self.max_latency_ms:g} ms")
        return found


def value(trial: Mapping[str, Any], spec: MetricSpec) -> float | None:
    """A trial's validation value of a metric (None when missing, or flagged unusable by the suite, e.g.
    a worst-group accuracy over groups below the suite's minimum size)."""
    figure = (trial.get("validation") or {}).get(spec.key)
    return None if figure is None or figure.get("status") else float(figure["value"])


def best_trial(trials: Sequence[Mapping[str, Any]], spec: MetricSpec) -> Mapping[str, Any] | None:
    """The trial with the best validation objective (ties: the lower latency ratio), or None."""
    scored = [trial for trial in trials if value(trial, spec) is not None]
    if not scored:
        return None
    return min(scored, key=lambda trial: (-spec.goodness(value(trial, spec)),  # type: ignore[arg-type]
                                          (trial.get("latency") or {}).get("ratio_to_int8", math.inf)))


def test_decision(spec: MetricSpec, tuned_dir: Path, int8_dir: Path, margin: float) -> PairedDecision:
    """The tuned configuration against uniform INT8 on the test split (paired, same images)."""
    tuned, int8 = metric_samples(read_result(tuned_dir), spec), metric_samples(read_result(int8_dir), spec)
    decisions = paired_decisions(int8.summary, {TUNED: tuned.tables, INT8: int8.tables}, spec.key,
                                 spec.higher_is_better, INT8, margin, int8.n_resamples, int8.seed)
    return decisions[TUNED]


def verdict_text(spec: MetricSpec, chosen: Mapping[str, Any] | None, decision: PairedDecision | None,
                 tried: int, int8_violations: Sequence[str] = ()) -> str:
    """The one-sentence verdict (``int8_violations``: why uniform INT8 itself was not eligible, if it was not)."""
    if chosen is None:
        why = f"; uniform INT8: {', '.join(int8_violations)}" if int8_violations else ""
        return f"no configuration met the constraints on the validation split ({tried} tried{why})"
    if decision is None:
        return (f"no configuration beat uniform INT8 on {spec.label}: uniform INT8 was the best of {tried} "
                "configurations on the validation split")
    ratio = (chosen.get("latency") or {}).get("ratio_to_int8", math.nan)
    interval = f"[{decision.ci[0]:+.4g}, {decision.ci[1]:+.4g}]" if decision.ci else "undefined"
    figures = (f"test split: {decision.value:.4g} vs {decision.reference_value:.4g}, paired 95% CI of the "
               f"difference {interval}, p={decision.p_superiority:.3g}, n={decision.n}")
    if decision.decision == BETTER:
        return (f"significantly more reliable than uniform INT8 on {spec.label} at {ratio:.2f}x its latency "
                f"({chosen['label']}; {figures})")
    return (f"no configuration beat uniform INT8 on {spec.label}: the validation winner ({chosen['label']}, "
            f"{ratio:.2f}x its latency) is '{decision.decision}' on the test split ({figures})")


def pareto_plot(trials: Sequence[Mapping[str, Any]], spec: MetricSpec, chosen_key: str | None, path: Path,
                title: str) -> Path | None:
    """Validation objective against measured latency (x uniform INT8) of every trial with both; uniform
    configurations marked, the Pareto front joined, the chosen one starred. None when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(trial, (trial.get("latency") or {}).get("ratio_to_int8"), value(trial, spec)) for trial in trials]
    points = [(trial, x, y) for trial, x, y in points if x is not None and y is not None]
    if not points:
        return None
    figure, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    tuned = [(x, y) for trial, x, y in points if not trial["uniform"]]
    if tuned:
        ax.scatter(*zip(*tuned), s=22, c="0.55", label="tried configurations")
    front = sorted((x, -spec.goodness(y)) for _, x, y in points)
    ranked = [front[index] for index in pareto_front(front)]
    ax.plot([x for x, _ in ranked], [-g if spec.higher_is_better else g for _, g in ranked], c="0.3", lw=1,
            ls="--", label="Pareto front")
    for trial, x, y in points:
        if trial["uniform"]:
            ax.scatter([x], [y], s=70, marker="s", label=f"uniform {trial['config']['precision']}")
        if trial["key"] == chosen_key:
            ax.scatter([x], [y], s=160, marker="*", c="tab:red", label=f"chosen: {trial['label']}"[:60])
    ax.set_xlabel("image-tower latency (x uniform INT8, same benchmark run)")
    ax.set_ylabel(f"validation {spec.label}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
