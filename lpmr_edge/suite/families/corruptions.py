"""ImageNet-C corruptions of a seeded subset of the ID images: accuracy, ECE and accuracy relative to
clean per corruption and severity, with per-kind and overall means."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from lpmr_edge.errors import UserError
from lpmr_edge.metrics import expected_calibration_error
from lpmr_edge.schema import require
from lpmr_edge.stats import Table, seeded_rng
from lpmr_edge.suite.families import base
from lpmr_edge.suite.outputs import OUTPUTS_DIR

CORRUPTED = base.MetricSpec("corrupted", "corrupted accuracy", True, base.PERCENT, base.POINTS, ("corruptions", "mean", "accuracy"),
                       "corruptions.mean.accuracy", "corruption-")


@dataclass(frozen=True)
class CorruptionConfig:
    """ImageNet-C corruptions of a seeded subset of ``images`` ID images."""

    kinds: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise")
    severities: tuple[int, ...] = SEVERITIES
    images: int = 1000

    def __post_init__(self) -> None:
        require(set(self.kinds) <= set(CORRUPTIONS), f"kinds must be among {', '.join(CORRUPTIONS)}")
        require(bool(self.kinds) and bool(self.severities) and set(self.severities) <= set(SEVERITIES)
                and self.images >= 1, "needs kinds, severities between 1 and 5 and images >= 1")

    def cells(self) -> list[tuple[str, int]]:
        """Every (kind, severity), kinds outermost."""
        return [(kind, severity) for kind in self.kinds for severity in self.severities]


def corruption_set_name(kind: str, severity: int) -> str:
    """Outputs name of a corrupted set."""
    return f"corruption-{kind}-{severity}"


def corruption_positions(id_size: int, images: int, seed: int) -> np.ndarray:
    """The seeded subset of ID positions every corruption is applied to (sorted)."""
    return np.sort(seeded_rng(seed, "corruption-subset").permutation(id_size)[:images])


def corruption_probe(clean: Table, corrupted: Mapping[tuple[str, int], Table], bins: int) -> base.Probe:
    """Per corruption/severity accuracy, ECE and accuracy relative to clean, plus per-kind and overall means.

    All corrupted sets share their images (rows), so rows are resampled jointly across them.
    """
    cells = list(corrupted)
    scopes = {**{f"{kind}/mean": [cell for cell in cells if cell[0] == kind] for kind, _ in cells}, "mean": cells}
    table = {"clean_correct": clean["correct"],
             "correct": np.stack([corrupted[cell]["correct"] for cell in cells], axis=1),
             "confidence": np.stack([corrupted[cell]["confidence"] for cell in cells], axis=1)}

    def summary(tables: Sequence[Table]) -> dict[str, float]:
        rows = tables[0]
        clean_accuracy = float(np.mean(rows["clean_correct"]))
        values: dict[str, float] = {"clean_accuracy": clean_accuracy}
        for column, (kind, severity) in enumerate(cells):
            accuracy = float(np.mean(rows["correct"][:, column]))
            values[f"{kind}/{severity}/accuracy"] = accuracy
            values[f"{kind}/{severity}/ece"] = expected_calibration_error(
                rows["confidence"][:, column], rows["correct"][:, column], bins)
            values[f"{kind}/{severity}/relative_accuracy"] = accuracy / clean_accuracy if clean_accuracy else np.nan
        for scope, members in scopes.items():
            for metric in ("accuracy", "ece", "relative_accuracy"):
                values[f"{scope}/{metric}"] = float(np.mean([values[f"{kind}/{severity}/{metric}"]
                                                             for kind, severity in members]))
        return values

    return base.Probe(summary, [table])


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b/metric": v, "ci": {"a/b/metric": ci}}`` -> ``{"a": {"b": {"metric": v, "ci": {"metric": ci}}}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key == "ci":
            continue
        *path, metric = key.split("/")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[metric] = value
        node.setdefault("ci", {})[metric] = flat["ci"][key]
    return nested


class Corruptions(base.Family):
    """Robustness to ImageNet-C noise; its probe resamples the shared subset's rows jointly."""

    name = "corruptions"
    table = "corruptions"
    config = CorruptionConfig
    presets: ClassVar[Mapping[str, Any]] = {"quick": CorruptionConfig(images=200), "full": CorruptionConfig(kinds=tuple(CORRUPTIONS))}
    metrics = (CORRUPTED,)
    claims = (base.Claim("noise", "Quantization can improve robustness to noise (corrupted accuracy)", "corrupted",
                         "improve"),)

    def set_names(self, config: CorruptionConfig) -> list[str]:
        return [corruption_set_name(kind, severity) for kind, severity in config.cells()]

    def plan(self, config: CorruptionConfig, context: base.PlanContext) -> list[base.EvalSet]:
        positions = corruption_positions(len(context.id_set), config.images, context.seed)
        return [base.EvalSet(corruption_set_name(kind, severity),
                        corrupt(context.id_set, kind, severity, context.seed).subset(positions),
                        context.id_set, positions)
                for kind, severity in config.cells()]

    def probe(self, config: CorruptionConfig, context: base.ScoreContext) -> base.Probe:
        corrupted = {cell: context.outputs[corruption_set_name(*cell)] for cell in config.cells()}
        positions = next(iter(corrupted.values())).id_index
        if any(not np.array_equal(positions, other.id_index) for other in corrupted.values()):
            raise UserError("the stored corrupted sets were computed on different ID subsets; delete the "
                            f"{OUTPUTS_DIR}/corruption-* files and re-run the suite")
        clean = {name: column[positions] for name, column in context.id_outcomes.items()}
        return corruption_probe(clean, {cell: stored.outcomes(context.logit_scale) for cell, stored in corrupted.items()},
                                context.calibration.bins)

    def score(self, config: CorruptionConfig, probe: base.Probe, context: base.ScoreContext, resamples: int,
              seed: int) -> dict[str, Any]:
        return {"corruptions": {"images": len(probe.tables[0]["clean_correct"]), "kinds": list(config.kinds),
                                "severities": list(config.severities), **_nest(probe.with_ci(resamples, seed))}}

    def comparisons(self, config: CorruptionConfig, result: base.Probe, reference: base.Probe) -> list[base.Compared]:
        labels = (("mean/accuracy", "mean corrupted accuracy", CORRUPTED),
                  *((f"{kind}/mean/accuracy", f"{kind} accuracy (mean over severities)", CORRUPTED)
                    for kind in config.kinds))
        return [base.Compared("corruptions", result, reference, labels)]

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        if "corruptions" not in metrics:
            return []
        mean = metrics["corruptions"]["mean"]
        return [base.headline_row(("corrupted_accuracy",), "corrupted accuracy (mean)", mean, "accuracy"),
                base.headline_row(("corrupted_relative_accuracy",), "corrupted / clean accuracy (mean)", mean,
                             "relative_accuracy")]

    def conventions(self, config: CorruptionConfig | None) -> dict[str, str]:
        return {"corruptions": "ImageNet-C parameters; relative_accuracy = corrupted / clean accuracy on the same "
                               "images"}


FAMILY = Corruptions()
