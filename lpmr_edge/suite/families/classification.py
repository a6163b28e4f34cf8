"""Accuracy and calibration on the ID set (every suite): top-1/top-5/balanced accuracy, ECE, MCE, NLL,
Brier, AURC, selective accuracy, the reliability diagram and a held-out fitted temperature."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.metrics import (
    accuracy_summary,
    calibration_summary,
    classification_outcomes,
    fit_logit_scale,
    reliability_diagram,
)
from lpmr_edge.schema import require
from lpmr_edge.stats import Summary, Table, calibration_errors, seeded_rng
from lpmr_edge.suite.families import base

ID_SET = "id"
ACCURACY_KEYS = ("top1", "top5", "balanced_accuracy")

TOP1 = base.MetricSpec("top1", "top-1 accuracy", True, base.PERCENT, base.POINTS, ("accuracy", "top1"), "id.top1")
ECE = base.MetricSpec("ece", "ECE", False, at=("calibration", "ece"), paired="id.ece")
NLL = base.MetricSpec("nll", "NLL (nats)", False, "nats", at=("calibration", "nll"), paired="id.nll")


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration on the ID set; ``logit_scale`` is "model" (the model's own) or a number (e.g. 100)."""

    bins: int = 15
    coverages: tuple[float, ...] = (0.8, 0.9, 0.95)
    logit_scale: str | float = "model"
    fit_temperature: bool = True
    fit_fraction: float = 0.2

    def __post_init__(self) -> None:
        require(self.bins >= 1, "bins must be at least 1")
        require(all(0 < coverage <= 1 for coverage in self.coverages), "coverages must be in (0, 1]")
        require(self.logit_scale == "model" or (isinstance(self.logit_scale, float) and self.logit_scale > 0),
                'logit_scale must be "model" or a positive number such as 100')
        require(0 < self.fit_fraction < 1, "fit_fraction must be between 0 and 1")


def resolve_logit_scale(setting: str | float, model_logit_scale: float) -> float:
    """The logit scale a suite uses: the model's own ("model") or the fixed number given."""
    return float(model_logit_scale) if setting == "model" else float(setting)


def classification_summary(calibration: CalibrationConfig) -> Summary:
    """Accuracy and calibration summary of one table of classification outcomes, with the debiased ECE
    (``ece_debiased``, Kumar et al. 2019: ``lpmr_edge.stats.calibration_errors``) beside the plug-in one."""
    def summary(tables: Sequence[Table]) -> dict[str, float]:
        outcomes = tables[0]
        debiased = calibration_errors(outcomes["confidence"], outcomes["correct"], calibration.bins)["ece_debiased"]
        return {**accuracy_summary(outcomes),
                **calibration_summary(outcomes, calibration.bins, calibration.coverages), "ece_debiased": debiased}

    return summary


def classification_probe(outcomes: Table, calibration: CalibrationConfig) -> base.Probe:
    """Accuracy and calibration of one labelled set."""
    return base.Probe(classification_summary(calibration), [outcomes], "confidence")


def score_context(outputs: Mapping[str, Any], calibration: CalibrationConfig) -> base.ScoreContext:
    """The ID set's logit scale and outcomes, which every family's scoring shares."""
    in_distribution = outputs[ID_SET]
    logit_scale = resolve_logit_scale(calibration.logit_scale, in_distribution.model_logit_scale)
    return base.ScoreContext(outputs, logit_scale, calibration, in_distribution.outcomes(logit_scale))


def _split_keys(values: Mapping[str, Any], keys: tuple[str, ...], keep: bool) -> dict[str, Any]:
    """The values (and their CIs) whose names are (``keep``) or are not in ``keys``."""
    chosen = {name: value for name, value in values.items() if name != "ci" and (name in keys) == keep}
    return {**chosen, "ci": {name: values["ci"][name] for name in chosen}}


def _fitted_temperature(context: base.ScoreContext, resamples: int, seed: int) -> dict[str, Any]:
    """Calibration at a logit scale fitted (min NLL) on a seeded held-out part of the ID set, scored on the rest."""
    in_distribution, calibration = context.outputs[ID_SET], context.calibration
    order = seeded_rng(seed, "temperature-split").permutation(len(in_distribution.labels))
    fit_size = max(1, round(calibration.fit_fraction * len(order)))
    fit, held_out = order[:fit_size], np.sort(order[fit_size:])
    if not len(held_out):
        raise UserError("the ID set is too small to hold out a temperature-fitting split; use more images "
                        "or set [calibration] fit_temperature = false")
    cosine = in_distribution.cosine()
    fitted = fit_logit_scale(cosine[fit], in_distribution.labels[fit])
    outcomes = classification_outcomes(fitted * cosine[held_out], in_distribution.labels[held_out])
    return {"logit_scale": fitted, "temperature": 1.0 / fitted, "fit_n": len(fit), "n": len(held_out),
            "note": "fitted on a seeded split of the ID set and scored on the remaining samples only",
            **classification_probe(outcomes, calibration).with_ci(resamples, seed)}


class Classification(base.Family):
    """Accuracy and calibration of the ID set."""

    name = "classification"
    table = "calibration"
    config = CalibrationConfig
    set_name = ID_SET
    required = True
    metrics = (TOP1, ECE, NLL)
    claims = (base.Claim("accuracy", "Quantization can (rarely) improve accuracy", "top1", "improve"),
              base.Claim("calibration", "Quantization can improve calibration (lower ECE)", "ece", "improve"))

    def plan(self, config: CalibrationConfig, context: base.PlanContext) -> list[base.EvalSet]:
        return [base.EvalSet(ID_SET, context.id_set, context.id_set)]

    def probe(self, config: CalibrationConfig, context: base.ScoreContext) -> base.Probe:
        return classification_probe(context.id_outcomes, config)

    def score(self, config: CalibrationConfig, probe: base.Probe, context: base.ScoreContext, resamples: int,
              seed: int) -> dict[str, Any]:
        id_n = len(context.outputs[ID_SET].labels)
        values = probe.with_ci(resamples, seed)
        outcomes = probe.tables[0]
        calibration = {
            **_split_keys(values, ACCURACY_KEYS, keep=False), "n": id_n, "bins": config.bins,
            "logit_scale": {"setting": config.logit_scale, "value": context.logit_scale},
            "reliability_diagram": reliability_diagram(outcomes["confidence"], outcomes["correct"], config.bins)}
        if config.fit_temperature:
            calibration["fitted_temperature"] = _fitted_temperature(context, resamples, seed)
        return {"accuracy": {**_split_keys(values, ACCURACY_KEYS, keep=True), "n": id_n}, "calibration": calibration}

    def comparisons(self, config: CalibrationConfig, result: base.Probe, reference: base.Probe) -> list[base.Compared]:
        return [base.Compared(ID_SET, result, reference,
                         (("top1", "top-1 accuracy", TOP1), ("ece", "ECE", ECE), ("nll", "NLL", NLL)))]

    def mcnemar(self, result: base.Probe, reference: base.Probe) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {ID_SET: (result.tables[0]["correct"], reference.tables[0]["correct"])}

    def sizes(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        accuracy = metrics.get("accuracy", {})  # n of the ID images the suite's cap chose them from
        return {"id": {"n": accuracy["n"], "of": accuracy.get("available")}} if "n" in accuracy else {}

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        return [base.headline_row(("top1",), "top-1 accuracy", metrics["accuracy"], "top1"),
                base.headline_row(("top5",), "top-5 accuracy", metrics["accuracy"], "top5"),
                *(base.headline_row((name,), label, metrics["calibration"], name)
                  for name, label in (("ece", "ECE"), ("ece_debiased", "ECE (debiased)"), ("nll", "NLL"),
                                      ("brier", "Brier")) if name in metrics["calibration"])]

    def conventions(self, config: CalibrationConfig) -> dict[str, str]:
        return {"calibration": f"top-1 confidence, {config.bins} equal-width bins (ece, mce) and equal-mass "
                               "bins (ece_equal_mass); ece_debiased: the plug-in ECE with the Kumar et al. (2019) "
                               "bias correction (can be slightly negative; a small ECE's interval is descriptive, "
                               "compare candidates with pick's paired decisions); NLL in nats; Brier summed "
                               "over classes",
                "logit_scale": "logits = logit_scale * cosine similarity (softmax temperature = 1 / logit_scale)",
                "scoring": "class probabilities = softmax of the logits for every model; SigLIP-family models score "
                           "sigmoid(logit_scale * cosine + logit_bias), and their bias, equal for all classes, "
                           "cancels in the softmax (the model's scoring and logit_bias are in the runtime's model "
                           "description)"}


FAMILY = Classification()
