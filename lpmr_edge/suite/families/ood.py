"""OOD detection against the ID set (ID is the positive class): AUROC, FPR@95%TPR and AUPR-in/-out for every
score (MSP, MCM, max logit, energy), per OOD set, per tag (near / far) and over all sets.

Sets. ``[ood] sets`` lists dataset names (``digits``, ``textiles``, ``folder:PATH``, ...), each tagged far-OOD
unless written ``near:NAME`` (``far:NAME`` is also accepted); each is scored against the full ID set. With
``class_split`` (default on), a near-OOD pair needing no new data (the zero-shot protocol of MCM, Ming et al.
2022) is added as the set ``class-split``: the ID set's classes are split at random (``split_seed``, recorded,
``lpmr_edge.data.near_ood.split_class_indices``) into an ID half and an OOD half; both halves' images are
scored with a text head of the ID half's class names only (the ID outputs' class embeddings restricted to
those classes: each class's embedding does not depend on the other classes), so it costs no extra inference.

Summaries over sets are named: per scope (``all``, ``near``, ``far``) and score, the worst set (lowest AUROC)
with its own interval, and the mean over the scope's sets only beside it; a set with AUROC <= 0.5 (at or
below chance) is flagged. The headline OOD figure is the worst set. The mean's interval (and that of its
paired delta in ``compare``) is the BCa interval of one bootstrap of all the scope's sets together
(``OodProbes.mean_probe``): the ID images are drawn once per resample and shared by every set, as they are
in the data, so the sets' correlation through the shared ID images is kept.

Keys. ``metrics.json``: ``ood.sets.<set>.{tag,n,id_n,below_chance,<score>.{auroc,fpr_at_95_tpr,aupr_in,
aupr_out}}``, ``ood.summary.<scope>.<score>.{worst_set,auroc,fpr_at_95_tpr,mean_auroc,sets,below_chance}``,
``ood.class_split`` (seed and class indices into ``datasets.id.classes``). ``compare`` deltas:
``ood.<set>.<score>.{auroc,fpr_at_95_tpr}`` and, over all sets, ``ood.mean.msp.{auroc,fpr_at_95_tpr}``. Metric keys (pick/report): ``auroc`` and ``fpr95``, one instance
per set (``ood_sets``); ``eval --json``: ``ood_auroc_worst.<scope>.<set>``, ``ood_auroc_mean.<scope>``
(scopes of 2 or more sets), ``ood_auroc.<set>.<score>``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from lpmr_edge.data.near_ood import split_class_indices
from lpmr_edge.errors import UserError
from lpmr_edge.metrics import OOD_SCORES, dense_ranks, ood_metrics_per_set, ood_scores
from lpmr_edge.schema import require
from lpmr_edge.stats import Table
from lpmr_edge.suite.families import base
from lpmr_edge.suite.families.classification import ID_SET

ID_POSITIVE = "in-distribution is the positive class; every score is higher for more in-distribution samples"
OOD_SCORE = "msp"  # the OOD score the tables, plots and picker use (maximum softmax probability)
NEAR, FAR = "near", "far"
TAGS = (NEAR, FAR)
CLASS_SPLIT = "class-split"  # the near-OOD pair made by splitting the ID set's classes
MEAN_OF_SETS = "mean"  # the "set" of compare's deltas of the mean over all sets (``ood.mean.<score>.<value>``)
ALL_SETS = "all"
MEAN_VALUES = ("auroc", "fpr_at_95_tpr")  # the values whose mean over a scope's sets the summary stores
CHANCE = 0.5


def ood_sets(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the OOD sets a result was evaluated on."""
    return sorted(metrics.get("ood", {}).get("sets", {}))


AUROC = base.MetricSpec("auroc", "OOD AUROC", True, at=("ood", "sets", "{set}", OOD_SCORE, "auroc"),
                        paired=f"ood.{{set}}.{OOD_SCORE}.auroc", datasets="ood-", instances=ood_sets,
                        mean_at=("ood", "summary", ALL_SETS, OOD_SCORE, "mean_auroc"))
FPR95 = base.MetricSpec("fpr95", "OOD FPR@95%TPR", False, base.PERCENT, base.POINTS,
                        at=("ood", "sets", "{set}", OOD_SCORE, "fpr_at_95_tpr"),
                        paired=f"ood.{{set}}.{OOD_SCORE}.fpr_at_95_tpr", datasets="ood-", instances=ood_sets,
                        mean_at=("ood", "summary", ALL_SETS, OOD_SCORE, "mean_fpr_at_95_tpr"))


def tagged_set(entry: str) -> tuple[str, str]:
    """``near:NAME`` / ``far:NAME`` / ``NAME`` (far) -> (tag, dataset name)."""
    tag, _, name = entry.partition(":")
    return (tag, name) if tag in TAGS and name else (FAR, entry)


@dataclass(frozen=True)
class OodConfig:
    """OOD detection of each set (tagged ``near:``/``far:``, default far) and of the ID set's class split."""

    sets: tuple[str, ...] = ("digits", "textiles")
    class_split: bool = True
    split_seed: int = 0
    mcm_temperature: float = 1.0

    def __post_init__(self) -> None:
        require((bool(self.sets) or self.class_split) and self.mcm_temperature > 0,
                "needs at least one set in sets (or class_split) and a positive mcm_temperature")
        names = [name for _, name in self.tagged()]
        require(len(set(names)) == len(names) and not {CLASS_SPLIT, MEAN_OF_SETS} & set(names),
                f"sets must be distinct and not named '{CLASS_SPLIT}' (the class split's name) or "
                f"'{MEAN_OF_SETS}' (the mean over sets)")

    def tagged(self) -> list[tuple[str, str]]:
        """(tag, dataset name) of every listed set."""
        return [tagged_set(entry) for entry in self.sets]

    def tags(self) -> dict[str, str]:
        """Every scored set's name -> its tag (the class split is near)."""
        return {**{name: tag for tag, name in self.tagged()}, **({CLASS_SPLIT: NEAR} if self.class_split else {})}


def ood_set_name(dataset: str) -> str:
    """Outputs name of an OOD set."""
    return "ood-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset).strip("_")


def _ranked(tables: Sequence[Table]) -> list[Table]:
    """The tables with each column replaced by its ``dense_ranks`` over every table holding that column (kept as
    is if a score is NaN or infinite): the OOD metrics of any resampled rows are unchanged, and counted."""
    ranked = [dict(table) for table in tables]
    for name in dict.fromkeys(name for table in tables for name in table):
        holding = [table for table in ranked if name in table]
        for table, column in zip(holding, dense_ranks([table[name] for table in holding]) or []):
            table[name] = column
    return ranked


def _all_values(tables: Sequence[Table]) -> dict[str, float]:
    return ood_metrics_per_set(tables[0]["score"], [tables[1]["score"]])[0]


def _compared_values(tables: Sequence[Table]) -> dict[str, float]:
    """The values ``compare`` tests (``Ood.comparisons``): AUROC and FPR@95%TPR."""
    return ood_metrics_per_set(tables[0]["score"], [tables[1]["score"]], aupr=False)[0]


def ood_probe(id_scores: np.ndarray, ood_scores_: np.ndarray) -> base.Probe:
    """AUROC, FPR@95%TPR, AUPR-in/-out for one score; ID and OOD resampled separately. The tables hold the
    scores' joint dense ranks (``_ranked``), pre-sorted by them (descending, as the stored results were
    bootstrapped)."""
    return base.Probe(_all_values, _ranked([{"score": id_scores}, {"score": ood_scores_}]), "score")


def class_split_head(cosine: np.ndarray, labels: np.ndarray, id_classes: np.ndarray, logit_scale: float,
                     mcm_temperature: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which ID images (by their ``labels``) are in the ID half, and every ID image's scores with a head of
    ``id_classes`` only, from the ID set's cosine similarities ``[N, classes]``."""
    in_id = np.isin(labels, id_classes)
    if in_id.all() or not in_id.any():
        raise UserError("the near-OOD class split left one half without images; raise --limit or the suite's "
                        "limit, or set [ood] class_split = false")
    return in_id, ood_scores(cosine[:, id_classes], logit_scale, mcm_temperature)


def class_split_scores(cosine: np.ndarray, labels: np.ndarray, id_classes: np.ndarray, logit_scale: float,
                       mcm_temperature: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scores of the ID half's and the OOD half's images with a head of ``id_classes`` only
    (``class_split_head``)."""
    in_id, scores = class_split_head(cosine, labels, id_classes, logit_scale, mcm_temperature)
    return ({name: values[in_id] for name, values in scores.items()},
            {name: values[~in_id] for name, values in scores.items()})


@dataclass(frozen=True)
class OodProbes:
    """The OOD family's probe: per set and score, ID vs that set (``sets``), and the per-sample scores
    that ``mean_probe`` resamples jointly."""

    sets: dict[str, dict[str, base.Probe]]
    id_scores: dict[str, np.ndarray]  # score -> every ID image's score (full head)
    listed: dict[str, dict[str, np.ndarray]]  # listed set -> score -> its images' scores
    split: tuple[np.ndarray, dict[str, np.ndarray]] | None  # class split: ID-half mask, ID-half-head scores

    def mean_probe(self, names: Sequence[str], scores: Sequence[str]) -> base.Probe:
        """The mean over ``names`` of each score's AUROC and FPR@95 (values ``<score>/auroc``,
        ``<score>/fpr_at_95_tpr``), all sets resampled jointly: the ID images once, shared by every set
        (split into the class split's two halves, each resampled on its own, when the class split is one of
        ``names``), and each listed set's images on their own."""
        listed = [name for name in names if name != CLASS_SPLIT]
        with_split = CLASS_SPLIT in names and self.split is not None
        columns = {score: self.id_scores[score] for score in scores}
        if with_split:
            in_half, split_scores = self.split  # type: ignore[misc]
            columns.update({f"{CLASS_SPLIT}/{score}": split_scores[score] for score in scores})
            id_tables = [{name: values[in_half] for name, values in columns.items()},
                         {name: values[~in_half] for name, values in columns.items()}]
        else:
            id_tables = [columns]
        tables = _ranked(id_tables + [{score: self.listed[name][score] for score in scores} for name in listed])

        def summary(resampled: Sequence[Table]) -> dict[str, float]:
            ids, oods = resampled[:len(id_tables)], resampled[len(id_tables):]
            values: dict[str, float] = {}
            for score in scores:
                id_scores = np.concatenate([table[score] for table in ids])
                per_set = ood_metrics_per_set(id_scores, [table[score] for table in oods], aupr=False)
                if with_split:
                    per_set += ood_metrics_per_set(ids[0][f"{CLASS_SPLIT}/{score}"],
                                                   [ids[1][f"{CLASS_SPLIT}/{score}"]], aupr=False)
                for value in ("auroc", "fpr_at_95_tpr"):
                    values[f"{score}/{value}"] = float(np.mean([metrics[value] for metrics in per_set]))
            return values

        return base.Probe(summary, tables)


def summarise_sets(sets: Mapping[str, Mapping[str, Any]], names: Sequence[str], score: str,
                   mean_cis: Mapping[str, list[float | None]] | None = None) -> dict[str, Any]:
    """The worst of ``names`` (lowest AUROC, with its own CI and FPR@95) and, beside it, their mean AUROC and
    mean FPR@95 (``mean_cis`` by value name: their intervals from the joint bootstrap,
    ``OodProbes.mean_probe``, with ``ci_method`` ``JOINT_BOOTSTRAP``; one set's own CIs when ``names`` is one
    set) and the sets at or below chance."""
    values = {name: sets[name][score] for name in names}
    worst = min(names, key=lambda name: values[name]["auroc"])
    means = {f"mean_{value}": float(np.mean([values[name][value] for name in names])) for value in MEAN_VALUES}
    joint = len(names) > 1 and mean_cis is not None
    cis = {f"mean_{value}": values[worst]["ci"][value] if len(names) == 1 else
           mean_cis[value] if mean_cis is not None else None for value in MEAN_VALUES}
    return {"worst_set": worst, "auroc": values[worst]["auroc"], "fpr_at_95_tpr": values[worst]["fpr_at_95_tpr"],
            **means, "sets": list(names), "below_chance": [name for name in names if values[name]["auroc"] <= CHANCE],
            "ci": {"auroc": values[worst]["ci"]["auroc"], "fpr_at_95_tpr": values[worst]["ci"]["fpr_at_95_tpr"], **cis},
            **({"ci_method": dict.fromkeys(cis, base.JOINT_BOOTSTRAP)} if joint else {})}


class Ood(base.Family):
    """OOD detection; its probe is one base.Probe per (OOD set, score)."""

    name = "ood"
    table = "ood"
    config = OodConfig
    presets: ClassVar[Mapping[str, Any]] = base.in_quick_and_full(OodConfig())
    metrics = (AUROC, FPR95)
    claims = (base.Claim("ood", "Quantization can improve OOD detection (higher AUROC)", "auroc", "improve"),)

    def set_names(self, config: OodConfig) -> list[str]:
        return [ood_set_name(name) for _, name in config.tagged()]

    def plan(self, config: OodConfig, context: base.PlanContext) -> list[base.EvalSet]:
        if config.class_split:
            split_class_indices(len(context.id_set.class_names), config.split_seed)  # refuses too few classes
        return [base.EvalSet(ood_set_name(name), context.load(name), context.id_set) for _, name in config.tagged()]

    def probe(self, config: OodConfig, context: base.ScoreContext) -> OodProbes:
        def scores(set_name: str) -> dict[str, np.ndarray]:
            return ood_scores(context.outputs[set_name].cosine(), context.logit_scale, config.mcm_temperature)

        id_scores = scores(ID_SET)
        listed = {name: scores(ood_set_name(name)) for _, name in config.tagged()}
        probes = {name: {score: ood_probe(id_scores[score], values[score]) for score in OOD_SCORES}
                  for name, values in listed.items()}
        split = None
        if config.class_split:
            stored = context.outputs[ID_SET]
            id_classes, _ = split_class_indices(len(stored.class_embeddings), config.split_seed)
            split = class_split_head(stored.cosine(), stored.labels, id_classes, context.logit_scale,
                                     config.mcm_temperature)
            in_id, split_scores = split
            probes[CLASS_SPLIT] = {score: ood_probe(split_scores[score][in_id], split_scores[score][~in_id])
                                   for score in OOD_SCORES}
        return OodProbes(probes, id_scores, listed, split)

    def score(self, config: OodConfig, probe: OodProbes, context: base.ScoreContext,
              resamples: int, seed: int) -> dict[str, Any]:
        tags = config.tags()
        sets = {}
        for name, by_score in probe.sets.items():
            values = {score: by.with_ci(resamples, seed) for score, by in by_score.items()}
            id_n, n = (len(table["score"]) for table in by_score[OOD_SCORE].tables)
            sets[name] = {"tag": tags[name], "n": n, "id_n": id_n,
                          "below_chance": [score for score, value in values.items() if value["auroc"] <= CHANCE],
                          **values}
        scopes = {ALL_SETS: list(sets), **{tag: [name for name in sets if tags[name] == tag] for tag in TAGS}}
        mean_cis = {tuple(names): probe.mean_probe(names, OOD_SCORES).with_ci(resamples, seed)["ci"]
                    for names in {tuple(names) for names in scopes.values() if len(names) > 1}}

        def scope_cis(names: Sequence[str], score: str) -> dict[str, list[float | None]] | None:
            cis = mean_cis.get(tuple(names))
            return None if cis is None else {value: cis[f"{score}/{value}"] for value in MEAN_VALUES}

        ood = {"positive_class": ID_POSITIVE, "scores": list(OOD_SCORES), "id_n": len(context.outputs[ID_SET].labels),
               "logit_scale": context.logit_scale, "mcm_temperature": config.mcm_temperature, "sets": sets,
               "summary": {scope: {score: summarise_sets(sets, names, score, scope_cis(names, score))
                                   for score in OOD_SCORES}
                           for scope, names in scopes.items() if names}}
        if config.class_split:
            classes = len(context.outputs[ID_SET].class_embeddings)
            id_classes, ood_classes = split_class_indices(classes, config.split_seed)
            ood["class_split"] = {"seed": config.split_seed, "id_classes": id_classes.tolist(),
                                  "ood_classes": ood_classes.tolist(),
                                  "classes": "indices into the ID set's classes (datasets.id.classes); the ID half's "
                                             "images are scored against the OOD half's with a head of the ID half's "
                                             "classes only"}
        return {"ood": ood}

    def comparisons(self, config: OodConfig, result: OodProbes, reference: OodProbes) -> list[base.Compared]:
        names = list(result.sets)
        over = f"mean of {len(names)} sets ({OOD_SCORE})"
        mean = base.Compared(f"ood.{MEAN_OF_SETS}", result.mean_probe(names, (OOD_SCORE,)),
                             reference.mean_probe(names, (OOD_SCORE,)),
                             ((f"{OOD_SCORE}/auroc", f"OOD AUROC, {over}", AUROC),
                              (f"{OOD_SCORE}/fpr_at_95_tpr", f"OOD FPR@95%TPR, {over}", FPR95)))
        return [base.Compared(f"ood.{name}.{score}", replace(probe, summary=_compared_values),
                              replace(reference.sets[name][score], summary=_compared_values),
                              (("auroc", f"OOD AUROC {name} ({score})", AUROC),
                               ("fpr_at_95_tpr", f"OOD FPR@95%TPR {name} ({score})", FPR95)))
                for name, by_score in result.sets.items() for score, probe in by_score.items()] + [mean]

    def sizes(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        if "ood" not in metrics:
            return {}
        return {"ood": {name: node.get("n") for name, node in metrics["ood"].get("sets", {}).items()}}

    def headline(self, metrics: Mapping[str, Any]) -> list[base.HeadlineRow]:
        ood = metrics.get("ood", {})
        rows = []
        for scope, by_score in ood.get("summary", {}).items():
            summary = by_score[OOD_SCORE]
            worst, count = summary["worst_set"], len(summary["sets"])
            flag = " - at or below chance" if summary["auroc"] <= CHANCE else ""
            sets = "sets" if scope == ALL_SETS else f"{scope}-OOD sets"
            rows.append(base.headline_row(("ood_auroc_worst", scope, worst),
                                          f"OOD AUROC, worst of {count} {sets}: {worst} ({OOD_SCORE}){flag}", summary,
                                          "auroc"))
            if count > 1:
                rows.append(base.headline_row(("ood_auroc_mean", scope), f"OOD AUROC, mean of {count} {sets} "
                                              f"(beside the worst, {OOD_SCORE})", summary, "mean_auroc"))
        return rows + [
            base.headline_row(("ood_auroc", name, score), f"OOD AUROC {name} [{values.get('tag', FAR)}] ({score})"
                              + (" - at or below chance" if values[score]["auroc"] <= CHANCE else ""),
                              values[score], "auroc")
            for name, values in ood.get("sets", {}).items() for score in OOD_SCORES]

    def report_notes(self, metrics: Sequence[Mapping[str, Any]]) -> list[str]:
        measured = [(name, values) for tree in metrics for name, values in tree.get("ood", {}).get("sets", {}).items()]
        if not measured:
            return []
        sets = {name: values.get("tag", FAR) for name, values in measured}  # results before tags had far sets only
        below = sorted({name for name, values in measured if values[OOD_SCORE]["auroc"] <= CHANCE})
        listed = ", ".join(f"{name} ({tag})" for name, tag in sorted(sets.items()))
        return [f"OOD metrics use the {OOD_SCORE} score, per set ({listed}); a summary over sets is the worst set "
                "(named), the mean beside it only (its CI, and that of its delta, is the BCa interval of a bootstrap "
                "resampling the ID images once for all sets and each set's images on their own)."
                + (f" At or below chance (AUROC <= 0.5) in some result: {', '.join(below)}." if below else "")]

    def conventions(self, config: OodConfig | None) -> dict[str, str]:
        return {"ood": f"{ID_POSITIVE}; sets tagged near/far; {CLASS_SPLIT}: near-OOD from a seeded split of the ID "
                       "set's classes, scored with the ID half's classes only; summaries name the worst set"}


FAMILY = Ood()
