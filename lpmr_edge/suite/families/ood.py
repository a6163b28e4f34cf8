"""OOD detection of each OOD set against the ID set (ID is the positive class): AUROC, FPR@95%TPR and
AUPR-in/-out for every score (MSP, MCM, max logit, energy)."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.metrics import OOD_SCORES, ood_metrics, ood_scores
from lpmr_edge.schema import require
from lpmr_edge.suite.families import base
from lpmr_edge.suite.families.classification import ID_SET

ID_POSITIVE = "in-distribution is the positive class; every score is higher for more in-distribution samples"
OOD_SCORE = "msp"  # the OOD score the tables, plots and picker use (maximum softmax probability)


def ood_sets(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the OOD sets a result was evaluated on."""
    return sorted(metrics.get("ood", {}).get("sets", {}))


AUROC = base.MetricSpec("auroc", "OOD AUROC", True, at=("ood", "sets", "{set}", OOD_SCORE, "auroc"),
                   paired=f"ood.{{set}}.{OOD_SCORE}.auroc", datasets="ood-", instances=ood_sets)
FPR95 = base.MetricSpec("fpr95", "OOD FPR@95%TPR", False, base.PERCENT, base.POINTS,
                   at=("ood", "sets", "{set}", OOD_SCORE, "fpr_at_95_tpr"),
                   paired=f"ood.{{set}}.{OOD_SCORE}.fpr_at_95_tpr", datasets="ood-", instances=ood_sets)


@dataclass(frozen=True)
class OodConfig:
    """OOD detection of each set against the ID set."""

    sets: tuple[str, ...] = ("digits", "textiles")
    mcm_temperature: float = 1.0

    def __post_init__(self) -> None:
        require(bool(self.sets) and self.mcm_temperature > 0,
                "needs at least one set in sets and a positive mcm_temperature")


def ood_set_name(dataset: str) -> str:
    """Outputs name of an OOD set."""
    return "ood-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset).strip("_")


def ood_probe(id_scores: np.ndarray, ood_scores_: np.ndarray) -> base.Probe:
    """AUROC, FPR@95%TPR, AUPR-in/-out for one score; ID and OOD resampled separately."""
    return base.Probe(lambda tables: ood_metrics(tables[0]["score"], tables[1]["score"]),
                 [{"score": id_scores}, {"score": ood_scores_}], "score")


class Ood(base.Family):
    """OOD detection; its probe is one base.Probe per (OOD set, score)."""

    name = "ood"
    table = "ood"
    config = OodConfig
    presets: ClassVar[Mapping[str, Any]] = base.in_quick_and_full(OodConfig())
    metrics = (AUROC, FPR95)
    claims = (base.Claim("ood", "Quantization can improve OOD detection (higher AUROC)", "auroc", "improve"),)

    def set_names(self, config: OodConfig) -> list[str]:
        return [ood_set_name(name) for name in config.sets]

    def plan(self, config: OodConfig, context: base.PlanContext) -> list[base.EvalSet]:
        return [base.EvalSet(ood_set_name(name), context.load(name), context.id_set) for name in config.sets]

    def probe(self, config: OodConfig, context: base.ScoreContext) -> dict[str, dict[str, base.Probe]]:
        def scores(set_name: str) -> dict[str, np.ndarray]:
            return ood_scores(context.outputs[set_name].cosine(), context.logit_scale, config.mcm_temperature)

        id_scores = scores(ID_SET)
        return {name: {score: ood_probe(id_scores[score], values[score]) for score in OOD_SCORES}
                for name in config.sets for values in (scores(ood_set_name(name)),)}

    def score(self, config: OodConfig, probe: dict[str, dict[str, base.Probe]], context: base.ScoreContext, resamples: int,
              seed: int) -> dict[str, Any]:
        return {"ood": {"positive_class": ID_POSITIVE, "scores": list(OOD_SCORES),
                        "id_n": len(context.outputs[ID_SET].labels), "logit_scale": context.logit_scale,
                        "mcm_temperature": config.mcm_temperature,
                        "sets": {name: {"n": len(context.outputs[ood_set_name(name)].labels),
                                        **{score: by.with_ci(resamples, seed) for score, by in by_score.items()}}
                                 for name, by_score in probe.items()}}}

    def comparisons(self, config: OodConfig, result: dict[str, dict[str, base.Probe]],
                    reference: dict[str, dict[str, base.Probe]]) -> list[base.Compared]:
        return [base.Compared(f"ood.{name}.{score}", probe, reference[name][score],
                         (("auroc", f"OOD AUROC {name} ({score})", AUROC),
                          ("fpr_at_95_tpr", f"OOD FPR@95%TPR {name} ({score})", FPR95)))
                for name, by_score in result.items() for score, probe in by_score.items()]

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        return [base.headline_row(("ood_auroc", name, score), f"OOD AUROC {name} ({score})", by_score[score], "auroc")
                for name, by_score in metrics.get("ood", {}).get("sets", {}).items() for score in OOD_SCORES]

    def report_notes(self, metrics: Sequence[Mapping[str, Any]]) -> list[str]:
        sets = sorted({name for tree in metrics for name in ood_sets(tree)})
        if not sets:
            return []
        return [(f"OOD metrics use the {OOD_SCORE} score averaged over the OOD sets ({', '.join(sets)}); the CI "
                 "of that mean (and of its delta) is the mean of the per-set CIs, which is conservative.")]

    def conventions(self, config: OodConfig | None) -> dict[str, str]:
        return {"ood": ID_POSITIVE}


FAMILY = Ood()
