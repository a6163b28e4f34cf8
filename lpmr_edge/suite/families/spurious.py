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
from lpmr_edge.suite.families.base import (
    PERCENT,
    POINTS,
    Claim,
    Compared,
    EvalSet,
    Family,
    HeadlineRow,
    MetricSpec,
    PlanContext,
    Probe,
    ScoreContext,
    headline_row,
    labelled,
)

SPURIOUS_SET = "spurious"
WORST_GROUP = MetricSpec("worst_group", "worst-group accuracy", True, PERCENT, POINTS, ("spurious", "worst_group"),
                         "spurious.worst_group", "spurious")
AVERAGE_GROUP = MetricSpec("average_group", "average-group accuracy", True, PERCENT, POINTS,
                           ("spurious", "average_group"), "spurious.average_group", "spurious")


@dataclass(frozen=True)
class SpuriousConfig:
    """Worst-group accuracy on a group-labelled set (``fmnist-colour``, ``waterbirds:PATH``)."""

    set: str = "fmnist-colour"


def group_probe(outcomes: Table, groups: np.ndarray) -> Probe:
    """Worst-group, average-group and overall accuracy; resampled within each group (groups ascending)."""
    def summary(tables: Sequence[Table]) -> dict[str, float]:
        correct = [table["correct"] for table in tables]
        return {**group_summary(correct), "accuracy": float(np.mean(np.concatenate(correct)))}

    return Probe(summary, [{"correct": outcomes["correct"][groups == group]} for group in np.unique(groups)])


class Spurious(Family):
    """Worst-group accuracy on a group-labelled set."""

    name = "spurious"
    table = "spurious"
    config = SpuriousConfig
    presets: ClassVar[Mapping[str, Any]] = {"quick": SpuriousConfig(), "full": SpuriousConfig()}
    metrics = (WORST_GROUP,)
    claims = (Claim("spurious", "Quantization can worsen reliance on spurious correlations (worst-group accuracy)",
                    "worst_group", "worsen"),)

    def set_names(self, config: SpuriousConfig) -> list[str]:
        return [SPURIOUS_SET]

    def plan(self, config: SpuriousConfig, context: PlanContext) -> list[EvalSet]:
        grouped = labelled(context.load(config.set), "spurious-correlation")
        if grouped.groups is None:
            raise UserError(f"the spurious-correlation set '{config.set}' has no group labels; use "
                            "fmnist-colour or waterbirds:PATH")
        return [EvalSet(SPURIOUS_SET, grouped, grouped)]

    def probe(self, config: SpuriousConfig, context: ScoreContext) -> Probe:
        grouped = context.outputs[SPURIOUS_SET]
        return group_probe(grouped.outcomes(context.logit_scale), grouped.groups)

    def score(self, config: SpuriousConfig, probe: Probe, context: ScoreContext, resamples: int,
              seed: int) -> dict[str, Any]:
        grouped = context.outputs[SPURIOUS_SET]
        return {"spurious": {
            "set": config.set, "n": len(grouped.labels), **probe.with_ci(resamples, seed),
            "groups": {str(group): {"n": len(table["correct"]), "accuracy": float(np.mean(table["correct"]))}
                       for group, table in zip(np.unique(grouped.groups), probe.tables)}}}

    def comparisons(self, config: SpuriousConfig, result: Probe, reference: Probe) -> list[Compared]:
        return [Compared(SPURIOUS_SET, result, reference, (("worst_group", "worst-group accuracy", WORST_GROUP),
                                                           ("average_group", "average-group accuracy",
                                                            AVERAGE_GROUP)))]

    def headline(self, metrics: Mapping[str, Any]) -> list[HeadlineRow]:
        if "spurious" not in metrics:
            return []
        return [headline_row(("worst_group_accuracy",), "worst-group accuracy", metrics["spurious"], "worst_group"),
                headline_row(("average_group_accuracy",), "average-group accuracy", metrics["spurious"],
                             "average_group")]


FAMILY = Spurious()
