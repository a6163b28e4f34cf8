"""ImageNet-C corruptions (all 19 kinds of ``lpmr_edge.data.corruptions``, severities 1-5) of a seeded
subset of the ID images: accuracy, ECE and accuracy relative to clean per kind and severity, with means
per kind, per group (noise, blur, weather, digital, extra), over ImageNet-C's 15 kinds and over all.

Against the FP32 reference of the same model and runtime (``compare``), corruption errors (Hendrycks &
Dietterich 2019), with E the top-1 error on the same images:

  CE_c            = sum_s E_{s,c}(result) / sum_s E_{s,c}(reference)
  relative CE_c   = sum_s (E_{s,c} - E_clean)(result) / sum_s (E_{s,c} - E_clean)(reference)
                    (undefined, NaN, when the reference does not lose accuracy on kind c)
  mCE, relative mCE: their means over the ImageNet-C kinds present (not the 4 extra ones);
  group mCE: the mean CE over a group's kinds present.

The reference's CE is 1 by definition; ``compare`` reports each as a delta CE - 1 (below 0: fewer errors than
the reference) with a paired bootstrap interval: both results' rows (the same corrupted images) are
resampled together.

Keys. ``metrics.json``: ``corruptions.<kind>.<severity>.{accuracy,ece,relative_accuracy}``,
``corruptions.<kind>.mean.*``, ``corruptions.groups.<group>.*``, ``corruptions.imagenet_c.*`` (the 15
kinds), ``corruptions.mean.*`` (every kind run), ``corruptions.clean_accuracy``, each with a sibling ``ci``.
``compare`` deltas: ``corruptions.<same path>`` for accuracies, and ``corruptions.ce.<kind>``,
``corruptions.relative_ce.<kind>``, ``corruptions.groups.<group>.mce``, ``corruptions.mce``,
``corruptions.relative_mce``. Metric keys (pick/report): ``corrupted`` (mean over every kind run),
``noise_accuracy`` (the noise group: the study's claim), ``corruption_group_accuracy`` (one instance per
group present).

Cost: corrupting takes about 3.8 s per source image for all 19 kinds x 5 severities on one core (ms per
224x224 image: noise gaussian 37, shot 63, impulse 29; blur defocus 31, glass 59, motion 48, zoom 228;
weather snow 26, frost 21, fog 7, brightness 57; digital contrast 8, elastic 38, pixelate 2, jpeg 3; extra
speckle 10, gaussian_blur 11, spatter 16, saturate 70), paid once per image: corrupted images are cached
on disk and shared by every artifact. Quick: 3 noise kinds x 5 severities x 200 images = 3,000 images
(about 2.2 min of corruption); full: 19 x 5 x 200 = 19,000 images (about 12.7 min).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.data.corruptions import CORRUPTION_GROUPS, CORRUPTIONS, IMAGENET_C_GROUPS, SEVERITIES, corrupt
from lpmr_edge.errors import UserError
from lpmr_edge.metrics import expected_calibration_error
from lpmr_edge.schema import require
from lpmr_edge.stats import Table, seeded_rng
from lpmr_edge.suite.families import base
from lpmr_edge.suite.outputs import OUTPUTS_DIR

NOISE_GROUP = "noise"
QUICK_IMAGES = FULL_IMAGES = 200
CELL_METRICS = ("accuracy", "ece", "relative_accuracy")


def corruption_groups(metrics: Mapping[str, Any]) -> list[str]:
    """The corruption groups a result was evaluated on, in ``CORRUPTION_GROUPS`` order."""
    present = metrics.get("corruptions", {}).get("groups", {})
    return [group for group in CORRUPTION_GROUPS if group in present]


CORRUPTED = base.MetricSpec("corrupted", "corrupted accuracy", True, base.PERCENT, base.POINTS,
                            ("corruptions", "mean", "accuracy"), "corruptions.mean.accuracy", "corruption-")
NOISE_ACCURACY = base.MetricSpec("noise_accuracy", "noise-corrupted accuracy", True, base.PERCENT, base.POINTS,
                                 ("corruptions", "groups", NOISE_GROUP, "accuracy"),
                                 f"corruptions.groups.{NOISE_GROUP}.accuracy", "corruption-")
GROUP_ACCURACY = base.MetricSpec("corruption_group_accuracy", "corrupted accuracy by group", True, base.PERCENT,
                                 base.POINTS, ("corruptions", "groups", "{set}", "accuracy"),
                                 "corruptions.groups.{set}.accuracy", "corruption-", corruption_groups)
# Corruption errors exist only against a reference (compare), so they are no per-result MetricSpec.
CORRUPTION_ERROR = base.MetricSpec("ce", "corruption error (CE, reference = 1)", False)
MEAN_CORRUPTION_ERROR = base.MetricSpec("mce", "mean corruption error (mCE, reference = 1)", False)


@dataclass(frozen=True)
class CorruptionConfig:
    """ImageNet-C corruptions of a seeded subset of ``images`` ID images."""

    kinds: tuple[str, ...] = CORRUPTION_GROUPS[NOISE_GROUP]
    severities: tuple[int, ...] = SEVERITIES
    images: int = 1000

    def __post_init__(self) -> None:
        require(set(self.kinds) <= set(CORRUPTIONS), f"kinds must be among {', '.join(CORRUPTIONS)}")
        require(bool(self.kinds) and bool(self.severities) and set(self.severities) <= set(SEVERITIES)
                and self.images >= 1, "needs kinds, severities between 1 and 5 and images >= 1")

    def cells(self) -> list[tuple[str, int]]:
        """Every (kind, severity), kinds outermost."""
        return [(kind, severity) for kind in self.kinds for severity in self.severities]

    def scopes(self) -> dict[str, list[str]]:
        """Summary scope -> its kinds: each group present (``groups/<group>``), ``imagenet_c`` (the 15 kinds'
        part, if any) and ``mean`` (every kind)."""
        scopes = {f"groups/{group}": [kind for kind in self.kinds if CORRUPTIONS[kind].group == group]
                  for group in CORRUPTION_GROUPS}
        imagenet_c = [kind for kind in self.kinds if CORRUPTIONS[kind].group in IMAGENET_C_GROUPS]
        return {**{scope: kinds for scope, kinds in scopes.items() if kinds},
                **({"imagenet_c": imagenet_c} if imagenet_c else {}), "mean": list(self.kinds)}


def corruption_set_name(kind: str, severity: int) -> str:
    """Outputs name of a corrupted set."""
    return f"corruption-{kind}-{severity}"


def corruption_positions(id_size: int, images: int, seed: int) -> np.ndarray:
    """The seeded subset of ID positions every corruption is applied to (sorted)."""
    return np.sort(seeded_rng(seed, "corruption-subset").permutation(id_size)[:images])


def corruption_probe(clean: Table, corrupted: Mapping[tuple[str, int], Table], config: CorruptionConfig,
                     bins: int) -> base.Probe:
    """Per kind/severity accuracy, ECE and accuracy relative to clean, with their means per kind and per
    ``config.scopes()``. All corrupted sets share their images (rows), so rows are resampled jointly."""
    cells = config.cells()
    table = {"clean_correct": clean["correct"],
             "correct": np.stack([corrupted[cell]["correct"] for cell in cells], axis=1),
             "confidence": np.stack([corrupted[cell]["confidence"] for cell in cells], axis=1)}
    scopes = {**{f"{kind}/mean": [kind] for kind in config.kinds}, **config.scopes()}

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
        for scope, kinds in scopes.items():
            for metric in CELL_METRICS:
                values[f"{scope}/{metric}"] = float(np.mean([values[f"{kind}/{severity}/{metric}"]
                                                             for kind in kinds for severity in config.severities]))
        return values

    return base.Probe(summary, [table])


def corruption_error_probe(result: base.Probe, reference: base.Probe, config: CorruptionConfig) -> base.Probe:
    """CE and relative CE per kind, their means per group and over the ImageNet-C kinds present (mCE,
    relative mCE), of ``result`` against ``reference`` (both ``corruption_probe``s of the same images);
    one table holding both results' rows, so a resample draws the same images for both."""
    mine, theirs = result.tables[0], reference.tables[0]
    table = {"result_correct": mine["correct"], "result_clean": mine["clean_correct"],
             "reference_correct": theirs["correct"], "reference_clean": theirs["clean_correct"]}
    columns = {kind: [column for column, cell in enumerate(config.cells()) if cell[0] == kind]
               for kind in config.kinds}
    groups = {scope.removeprefix("groups/"): kinds for scope, kinds in config.scopes().items()
              if scope.startswith("groups/")}
    imagenet_c = config.scopes().get("imagenet_c", [])

    def summary(tables: Sequence[Table]) -> dict[str, float]:
        rows = tables[0]
        values: dict[str, float] = {}
        for kind, kind_columns in columns.items():
            errors = {side: 1.0 - rows[f"{side}_correct"][:, kind_columns].mean(axis=0)
                      for side in ("result", "reference")}
            clean = {side: 1.0 - float(np.mean(rows[f"{side}_clean"])) for side in ("result", "reference")}
            values[f"ce/{kind}"] = _ratio(errors["result"].sum(), errors["reference"].sum())
            values[f"relative_ce/{kind}"] = _ratio((errors["result"] - clean["result"]).sum(),
                                                   (errors["reference"] - clean["reference"]).sum())
        for group, kinds in groups.items():
            values[f"groups/{group}/mce"] = float(np.mean([values[f"ce/{kind}"] for kind in kinds]))
        if imagenet_c:
            values["mce"] = float(np.mean([values[f"ce/{kind}"] for kind in imagenet_c]))
            values["relative_mce"] = float(np.mean([values[f"relative_ce/{kind}"] for kind in imagenet_c]))
        return values

    return base.Probe(summary, [table])


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is not positive (undefined ratio of errors)."""
    return float(numerator / denominator) if denominator > 0 else float("nan")


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
    """Robustness to ImageNet-C corruptions; its probe resamples the shared subset's rows jointly."""

    name = "corruptions"
    table = "corruptions"
    config = CorruptionConfig
    presets: ClassVar[Mapping[str, Any]] = {"quick": CorruptionConfig(images=QUICK_IMAGES),
                                            "full": CorruptionConfig(kinds=tuple(CORRUPTIONS), images=FULL_IMAGES)}
    metrics = (CORRUPTED, NOISE_ACCURACY, GROUP_ACCURACY)
    comparison_metrics = (MEAN_CORRUPTION_ERROR,)
    claims = (base.Claim("noise", "Quantization can improve robustness to noise (accuracy on the noise group of "
                                  "ImageNet-C corruptions)", NOISE_ACCURACY.key, "improve"),)

    def set_names(self, config: CorruptionConfig) -> list[str]:
        return [corruption_set_name(kind, severity) for kind, severity in config.cells()]

    def plan(self, config: CorruptionConfig, context: base.PlanContext) -> list[base.EvalSet]:
        positions = corruption_positions(len(context.id_set), config.images, context.seed)
        return [base.EvalSet(corruption_set_name(kind, severity),
                             corrupt(context.id_set, kind, severity, context.seed).subset(positions), context.id_set,
                             positions)
                for kind, severity in config.cells()]

    def probe(self, config: CorruptionConfig, context: base.ScoreContext) -> base.Probe:
        corrupted = {cell: context.outputs[corruption_set_name(*cell)] for cell in config.cells()}
        positions = next(iter(corrupted.values())).id_index
        if any(not np.array_equal(positions, other.id_index) for other in corrupted.values()):
            raise UserError("the stored corrupted sets were computed on different ID subsets; delete the "
                            f"{OUTPUTS_DIR}/corruption-* files and re-run the suite")
        clean = {name: column[positions] for name, column in context.id_outcomes.items()}
        return corruption_probe(clean, {cell: stored.outcomes(context.logit_scale) for cell, stored in corrupted.items()},
                                config, context.calibration.bins)

    def score(self, config: CorruptionConfig, probe: base.Probe, context: base.ScoreContext, resamples: int,
              seed: int) -> dict[str, Any]:
        images = len(probe.tables[0]["clean_correct"])
        return {"corruptions": {"images": images, "kinds": list(config.kinds), "severities": list(config.severities),
                                "groups_of_kinds": {kind: CORRUPTIONS[kind].group for kind in config.kinds},
                                "n": images * len(config.cells()), **_nest(probe.with_ci(resamples, seed))}}

    def comparisons(self, config: CorruptionConfig, result: base.Probe, reference: base.Probe) -> list[base.Compared]:
        scopes = config.scopes()
        accuracies = (("mean/accuracy", "mean corrupted accuracy", CORRUPTED),
                      *((f"{scope}/accuracy", f"{scope.removeprefix('groups/')} corrupted accuracy",
                         NOISE_ACCURACY if scope == f"groups/{NOISE_GROUP}" else GROUP_ACCURACY)
                        for scope in scopes if scope != "mean"),
                      *((f"{kind}/mean/accuracy", f"{kind} accuracy (mean over severities)", CORRUPTED)
                        for kind in config.kinds))
        errors = (*((f"ce/{kind}", f"CE {kind}", CORRUPTION_ERROR) for kind in config.kinds),
                  *((f"relative_ce/{kind}", f"relative CE {kind}", CORRUPTION_ERROR) for kind in config.kinds),
                  *((f"{scope}/mce", f"{scope.removeprefix('groups/')} mCE", MEAN_CORRUPTION_ERROR)
                    for scope in scopes if scope.startswith("groups/")),
                  *((("mce", "mCE (ImageNet-C kinds)", MEAN_CORRUPTION_ERROR),
                     ("relative_mce", "relative mCE (ImageNet-C kinds)", MEAN_CORRUPTION_ERROR)) if "imagenet_c" in scopes
                    else ()))
        return [base.Compared("corruptions", result, reference, accuracies),
                base.Compared("corruptions", corruption_error_probe(result, reference, config),
                              corruption_error_probe(reference, reference, config), errors)]

    def sizes(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        corruptions = metrics.get("corruptions")
        if not corruptions or "images" not in corruptions:
            return {}
        kinds, severities = len(corruptions.get("kinds", [])), len(corruptions.get("severities", []))
        return {"corruptions": {"images": corruptions["images"], "kinds": kinds, "severities": severities,
                                "total": corruptions["images"] * kinds * severities}}

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        if "corruptions" not in metrics:
            return []
        corruptions = metrics["corruptions"]
        mean = corruptions["mean"]
        return [base.headline_row(("corrupted_accuracy",), "corrupted accuracy (mean over kinds)", mean, "accuracy"),
                base.headline_row(("corrupted_relative_accuracy",), "corrupted / clean accuracy (mean)", mean,
                                  "relative_accuracy"),
                *(base.headline_row(("corrupted_group_accuracy", group), f"corrupted accuracy, {group} group",
                                    corruptions["groups"][group], "accuracy")
                  for group in corruption_groups(metrics))]

    def conventions(self, config: CorruptionConfig | None) -> dict[str, str]:
        return {"corruptions": "ImageNet-C kinds from imagecorruptions-imaug at 224x224 (smaller images upsampled, "
                               "grey replicated to RGB); relative_accuracy = corrupted / clean accuracy on the same "
                               "images; groups: noise, blur, weather, digital (ImageNet-C) and extra; compare adds "
                               "CE, mCE and relative mCE against the reference (CE of the reference = 1)"}


FAMILY = Corruptions()
