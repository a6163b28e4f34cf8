"""Reliance on spurious correlations: worst-group, average-group and overall accuracy on a
group-labelled set, resampled within each group."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.metrics import group_summary
from lpmr_edge.stats import Table
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
        return {"spurious": {
            "set": config.set, "n": len(grouped.labels), **probe.with_ci(resamples, seed),
            "groups": {str(group): {"n": len(table["correct"]), "accuracy": float(np.mean(table["correct"]))}
                       for group, table in zip(np.unique(grouped.groups), probe.tables)}}}

    def comparisons(self, config: SpuriousConfig, result: base.Probe, reference: base.Probe) -> list[base.Compared]:
        return [base.Compared(SPURIOUS_SET, result, reference, (("worst_group", "worst-group accuracy", WORST_GROUP),
                                                           ("average_group", "average-group accuracy",
                                                            AVERAGE_GROUP)))]

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        if "spurious" not in metrics:
            return []
        return [base.headline_row(("worst_group_accuracy",), "worst-group accuracy", metrics["spurious"], "worst_group"),
                base.headline_row(("average_group_accuracy",), "average-group accuracy", metrics["spurious"],
                             "average_group")]


FAMILY = Spurious()
