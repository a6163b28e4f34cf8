"""Covariate shift: accuracy and calibration on a shifted copy of the ID set (or a shifted dataset),
and the accuracy lost relative to the ID set."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.data.shifts import SHIFTS, shift
from lpmr_edge.stats import Table
from lpmr_edge.suite.families import base
from lpmr_edge.suite.families.classification import ECE, CalibrationConfig, classification_summary

SHIFT_SET = "shift"
SHIFTED = base.MetricSpec("shifted", "shifted accuracy", True, base.PERCENT, base.POINTS, ("shift", "top1"), "shift.top1", "shift")


@dataclass(frozen=True)
class ShiftConfig:
    """Covariate shift: a built-in shift of the ID set (``rotate-scale``, ``invert``) or a dataset."""

    set: str = "rotate-scale"


def shift_probe(shifted: Table, in_distribution: Table, calibration: CalibrationConfig) -> base.Probe:
    """Accuracy and calibration on the shifted set, and the accuracy lost relative to the ID set."""
    classification = classification_summary(calibration)

    def summary(tables: Sequence[Table]) -> dict[str, float]:
        values = classification(tables[:1])
        id_accuracy = float(np.mean(tables[1]["correct"]))
        return {**values, "accuracy_drop": id_accuracy - values["top1"],
                "relative_accuracy": values["top1"] / id_accuracy if id_accuracy else np.nan}

    return base.Probe(summary, [shifted, {"correct": in_distribution["correct"]}], "confidence")


class Shift(base.Family):
    """Covariate shift of the ID set."""

    name = "shift"
    table = "shift"
    config = ShiftConfig
    set_name = SHIFT_SET
    presets: ClassVar[Mapping[str, Any]] = base.in_quick_and_full(ShiftConfig())
    metrics = (SHIFTED,)
    claims = (base.Claim("covariate_shift", "Quantization does not help under covariate shift (shifted accuracy)",
                         "shifted", "not improve"),)

    def plan(self, config: ShiftConfig, context: base.PlanContext) -> list[base.EvalSet]:
        shifted = (shift(context.id_set, config.set, context.seed) if config.set in SHIFTS
                   else base.labelled(context.load(config.set), "shifted"))
        return [base.EvalSet(SHIFT_SET, shifted, shifted)]

    def probe(self, config: ShiftConfig, context: base.ScoreContext) -> base.Probe:
        return shift_probe(context.outputs[SHIFT_SET].outcomes(context.logit_scale), context.id_outcomes,
                           context.calibration)

    def score(self, config: ShiftConfig, probe: base.Probe, context: base.ScoreContext, resamples: int,
              seed: int) -> dict[str, Any]:
        return {"shift": {"set": config.set, "n": len(context.outputs[SHIFT_SET].labels),
                          **probe.with_ci(resamples, seed)}}

    def comparisons(self, config: ShiftConfig, result: base.Probe, reference: base.Probe) -> list[base.Compared]:
        return [base.Compared(SHIFT_SET, result, reference, (("top1", "shifted accuracy", SHIFTED),
                                                        ("ece", "shifted ECE", ECE)))]

    def mcnemar(self, result: base.Probe, reference: base.Probe) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {SHIFT_SET: (result.tables[0]["correct"], reference.tables[0]["correct"])}

    def sizes(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        return {"shift": {"n": metrics["shift"]["n"]}} if "n" in metrics.get("shift", {}) else {}

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        if "shift" not in metrics:
            return []
        return [base.headline_row(("shifted_accuracy",), f"shifted accuracy ({metrics['shift']['set']})",
                             metrics["shift"], "top1")]


FAMILY = Shift()
