"""Reliance on spurious correlations: worst-group, average-group and overall accuracy on a
group-labelled set, resampled within each group (BCa). Each group's accuracy gets an exact
(Clopper–Pearson) interval and the worst group is named with its size; the worst-group accuracy's
interval is the exact one of ``lpmr_edge.stats.worst_group_accuracy``. Below ``min_group_size``
images in the smallest group the worst-group accuracy is "not enough data" (``status``): its value is
still stored, but pick and the report do not use it. The demo's ``fmnist-colour`` set has 20 groups
(class x aligned/conflicting background colour) of about 100 images in the quick suite (500 in the full
10 000), well above the default 30."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.metrics import group_summary
from lpmr_edge.schema import require
from lpmr_edge.stats import MIN_GROUP_SIZE, Table, worst_group_accuracy
from lpmr_edge.suite.families import base

SPURIOUS_SET = "spurious"
WORST_GROUP = base.MetricSpec("worst_group", "worst-group accuracy", True, base.PERCENT, base.POINTS, ("spurious", "worst_group"),
                         "spurious.worst_group", "spurious")
AVERAGE_GROUP = base.MetricSpec("average_group", "average-group accuracy", True, base.PERCENT, base.POINTS,
                           ("spurious", "average_group"), "spurious.average_group", "spurious")


@dataclass(frozen=True)
class SpuriousConfig:
    """Worst-group accuracy on a group-labelled set (``fmnist-colour``, ``waterbirds:PATH``)."""

    set: str = "fmnist-colour"
    min_group_size: int = MIN_GROUP_SIZE

    def __post_init__(self) -> None:
        require(self.min_group_size >= 1, "min_group_size must be at least 1")


def group_probe(outcomes: Table, groups: np.ndarray) -> base.Probe:
    """Worst-group, average-group and overall accuracy; resampled within each group (groups ascending)."""
    def summary(tables: Sequence[Table]) -> dict[str, float]:
        correct = [table["correct"] for table in tables]
        return {**group_summary(correct), "accuracy": float(np.mean(np.concatenate(correct)))}

    return base.Probe(summary, [{"correct": outcomes["correct"][groups == group]} for group in np.unique(groups)])


class Spurious(base.Family):
    """Worst-group accuracy on a group-labelled set."""

    name = "spurious"
    table = "spurious"
    config = SpuriousConfig
    set_name = SPURIOUS_SET
    presets: ClassVar[Mapping[str, Any]] = base.in_quick_and_full(SpuriousConfig())
    metrics = (WORST_GROUP,)
    claims = (base.Claim("spurious", "Quantization can worsen reliance on spurious correlations (worst-group accuracy)",
                         "worst_group", "worsen"),)

    def plan(self, config: SpuriousConfig, context: base.PlanContext) -> list[base.EvalSet]:
        grouped = base.labelled(context.load(config.set), "spurious-correlation")
        if grouped.groups is None:
            raise UserError(f"the spurious-correlation set '{config.set}' has no group labels; use "
                            "fmnist-colour or waterbirds:PATH")
        return [base.EvalSet(SPURIOUS_SET, grouped, grouped)]

    def probe(self, config: SpuriousConfig, context: base.ScoreContext) -> base.Probe:
        grouped = context.outputs[SPURIOUS_SET]
        return group_probe(grouped.outcomes(context.logit_scale), grouped.groups)

    def score(self, config: SpuriousConfig, probe: base.Probe, context: base.ScoreContext, resamples: int,
              seed: int) -> dict[str, Any]:
        grouped = context.outputs[SPURIOUS_SET]
        names = [str(group) for group in np.unique(grouped.groups)]
        exact = worst_group_accuracy({name: table["correct"] for name, table in zip(names, probe.tables)},
                                     config.min_group_size)
        values = probe.with_ci(resamples, seed)
        methods = {}  # the exact worst-group interval where there is enough data (else the bootstrap's stays)
        if exact["ci"] is not None:
            values["ci"]["worst_group"], methods["worst_group"] = exact["ci"], exact["method"]
        return {"spurious": {
            "set": config.set, "n": len(grouped.labels), **values, "ci_method": methods,
            "status": {"worst_group": exact["status"]}, "status_reason": {"worst_group": exact["reason"]},
            "n_groups": exact["n_groups"], "min_group_size": config.min_group_size,
            "worst": exact["worst_group"], "smallest": exact["smallest_group"], "groups": exact["groups"]}}

    def comparisons(self, config: SpuriousConfig, result: base.Probe, reference: base.Probe) -> list[base.Compared]:
        return [base.Compared(SPURIOUS_SET, result, reference, (("worst_group", "worst-group accuracy", WORST_GROUP),
                                                           ("average_group", "average-group accuracy",
                                                            AVERAGE_GROUP)))]

    def sizes(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        spurious = metrics.get("spurious", {})
        if "n" not in spurious:
            return {}
        return {"spurious": {"n": spurious["n"], "groups": spurious.get("n_groups", len(spurious.get("groups", {}))),
                             **{key: spurious[key] for key in ("smallest", "worst", "min_group_size") if key in spurious},
                             "status": spurious.get("status", {}).get("worst_group", "ok")}}

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        if "spurious" not in metrics:
            return []
        status = metrics["spurious"].get("status", {}).get("worst_group", "ok")
        label = "worst-group accuracy" + ("" if status == "ok" else f" ({status})")
        return [base.headline_row(("worst_group_accuracy",), label, metrics["spurious"], "worst_group"),
                base.headline_row(("average_group_accuracy",), "average-group accuracy", metrics["spurious"],
                             "average_group")]


FAMILY = Spurious()
