"""What a settling evaluation (``lpmr_edge.suite.settle``) visits and compares: the objective's per-sample
loss, the visited sets and the decision's strata, and each candidate's losses per stratum on a shard.

**Which sets are visited.** The ID set, every OOD set and the group-labelled set of the suite (sets derived
from the ID set — corruptions, the rotate-scale shift, the near-OOD class split — follow its images); the
objective says which of them feed the decision (the ID set; the OOD sets of an OOD objective; the group
set for worst-group accuracy). Each visited set is visited in its own seeded order (``set_seed``: the ID
set's seed is the run's, another set's is derived from the seed and its name).

**Objective -> per-sample loss** (``objective_loss``): accuracy -> top-1 error (bound 1); ece -> Brier score
(bound 2; ECE is not a mean of per-image losses, so calibration is *decided on Brier*, a proper scoring
rule, with the ECE margin); nll -> NLL clipped at ``NLL_BOUND`` nats, with the NLL margin; ``auroc:SET`` ->
the per-pair AUROC loss of the MSP score on disjoint (ID, OOD) pairs, the k-th image of the ID order with
the k-th of the set's (the class split pairs the ID half's and the OOD half's images of each ID shard in
order), one stratum per set: ``auroc:worst`` decides on the worst set, ``auroc`` on the mean over sets;
``worst-group`` -> top-1 error per group of the group-labelled set, one stratum per group, decided on the
worst group. FPR@95%TPR is a quantile, not a mean: refused.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpmr_edge.data import load_dataset, preprocess_batches
from lpmr_edge.data.near_ood import split_class_indices
from lpmr_edge.errors import UserError
from lpmr_edge.metrics import classification_outcomes, ood_scores
from lpmr_edge.models import build_preprocess, build_tokenizer
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.sequential import (
    BRIER_BOUND,
    MEAN,
    ONE_STREAM,
    TOP1_BOUND,
    WORST,
    clipped_nll,
    pair_auroc_losses,
)
from lpmr_edge.suite.families.base import PlanContext
from lpmr_edge.suite.families.classification import ID_SET, resolve_logit_scale
from lpmr_edge.suite.families.ood import CLASS_SPLIT, OOD_SCORE, ood_set_name
from lpmr_edge.suite.families.spurious import SPURIOUS_SET
from lpmr_edge.suite.outputs import EvalSet
from lpmr_edge.suite.run import EvalSettings, id_set
from lpmr_edge.zeroshot import class_embeddings, cosine_similarities

NLL_BOUND = 10.0  # nats: p(label) below e^-10 counts as e^-10
ID_FEED, OOD_FEED, GROUPS_FEED = "id", "ood", "spurious"  # the family whose sets feed a decision


@dataclass(frozen=True)
class ObjectiveLoss:
    """The per-sample loss a settling decision compares, with its range ``[0, bound]``: on the ID images
    (``loss``: classification outcomes -> losses), or per stratum of the sets of ``feeds`` (OOD sets, or
    groups), combined by ``combine``; ``instance`` names the one OOD set of ``auroc:SET``."""

    name: str
    bound: float
    loss: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None
    feeds: str = ID_FEED
    instance: str | None = None
    combine: str = MEAN


OBJECTIVE_LOSSES = {
    "accuracy": ObjectiveLoss("top-1 error", TOP1_BOUND, lambda o: 1.0 - o["correct"]),
    "ece": ObjectiveLoss("Brier score", BRIER_BOUND, lambda o: np.minimum(o["brier"], BRIER_BOUND)),
    "nll": ObjectiveLoss(f"NLL clipped at {NLL_BOUND:g}", NLL_BOUND, lambda o: clipped_nll(np.exp(-o["nll"]), NLL_BOUND)),
}
SETTLED_OBJECTIVES = "accuracy | ece | nll | auroc | auroc:SET | auroc:worst | worst-group"


def objective_loss(objective: str) -> ObjectiveLoss:
    """The loss an objective is settled on; UserError for objectives without one."""
    name, _, instance = objective.partition(":")
    if name in OBJECTIVE_LOSSES and not instance:
        return OBJECTIVE_LOSSES[name]
    if name == "auroc":
        scope = "worst set" if instance == WORST else f"set {instance}" if instance else "mean over sets"
        return ObjectiveLoss(f"AUROC pair loss ({OOD_SCORE}, {scope})", TOP1_BOUND, feeds=OOD_FEED,
                             instance=None if instance in ("", WORST) else instance,
                             combine=WORST if instance == WORST else MEAN)
    if name == "worst-group" and not instance:
        return ObjectiveLoss("top-1 error per group (worst group)", TOP1_BOUND, feeds=GROUPS_FEED, combine=WORST)
    raise UserError(f"--until-settled decides on a per-sample loss, which objective '{objective}' has not; "
                    f"use --objective {SETTLED_OBJECTIVES}")


@dataclass(frozen=True)
class VisitPlan:
    """The sets a settling evaluation visits (outputs name -> set, ID first), the decision's strata and the
    config of the family that feeds it (None for the ID set)."""

    sets: dict[str, EvalSet]
    strata: list[str]
    config: Any = None


def set_seed(seed: int, set_name: str) -> int:
    """The seed of a visited set's order: the run's for the ID set, else derived from it and the set's name."""
    return seed if set_name == ID_SET else zlib.crc32(f"{seed}:{set_name}".encode())


def plan_visits(suite: Any, settings: EvalSettings, loss: ObjectiveLoss) -> VisitPlan:
    """The sets to visit in ``suite`` (capped as the suite caps them, planned by their families): the ID set, every
    OOD set and the group-labelled set of the suite; the strata of ``loss`` say which of them feed the decision."""
    id_images = id_set(suite, settings.skip_bad_images)
    sets = {ID_SET: EvalSet(ID_SET, id_images, id_images)}
    context = PlanContext(id_images, settings.seed, None, lambda name: load_dataset(
        name, skip_bad_images=settings.skip_bad_images).head(suite.limit))
    configs = {}
    for family, config in suite.families():
        if family.name in (OOD_FEED, GROUPS_FEED):
            sets.update({eval_set.name: eval_set for eval_set in family.plan(config, context)})
            configs[family.name] = config
    if loss.feeds == ID_FEED:
        return VisitPlan(sets, [ONE_STREAM])
    if loss.feeds not in configs:
        raise UserError(f"the suite {suite.name} has no [{loss.feeds}] sets, which this objective is decided on; "
                        "use a suite with them (quick, full) or another --objective")
    config = configs[loss.feeds]
    if loss.feeds == GROUPS_FEED:
        return VisitPlan(sets, [str(g) for g in np.unique(sets[SPURIOUS_SET].dataset.groups)], config)
    names = [name for _, name in config.tagged()] + ([CLASS_SPLIT] if config.class_split else [])
    if loss.instance is not None:
        if loss.instance not in names:
            raise UserError(f"objective auroc:{loss.instance}: the suite has no OOD set '{loss.instance}'; its sets "
                            f"are {', '.join(names)}")
        names = [loss.instance]
    return VisitPlan(sets, names, config)


class ShardScorer:
    """One candidate's features and objective losses on images of the visited sets."""

    def __init__(self, runtime: Runtime, suite: Any, plan: VisitPlan, batch_size: int, loss: ObjectiveLoss):
        self.runtime, self.plan, self.batch_size, self.loss = runtime, plan, batch_size, loss
        info = runtime.model_info
        self.preprocess = build_preprocess(info)
        self.embeddings = class_embeddings_by_set(runtime, plan.sets)
        self.logit_scale = resolve_logit_scale(suite.calibration.logit_scale, info["logit_scale"])

    def features(self, set_name: str, indices: np.ndarray) -> np.ndarray:
        """Image features of the images at ``indices`` of a visited set, as stored (float32, like the suite's)."""
        subset = self.plan.sets[set_name].dataset.subset(indices)
        return np.concatenate([self.runtime.image_features(batch)
                               for batch in preprocess_batches(subset, self.preprocess, self.batch_size)]
                              ).astype(np.float32)

    def _cosine(self, set_name: str, features: Mapping[str, np.ndarray]) -> np.ndarray:
        if set_name not in features:  # a set whose images ran out: no samples this shard
            return np.zeros((0, len(self.embeddings[set_name])))
        return cosine_similarities(features[set_name], self.embeddings[set_name])

    def _ood_score(self, cosine: np.ndarray) -> np.ndarray:
        return ood_scores(cosine, self.logit_scale, self.plan.config.mcm_temperature)[OOD_SCORE]

    def losses(self, features: Mapping[str, np.ndarray], indices: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The objective's per-sample losses of one shard, per stratum (``features``/``indices``: by visited set),
        scored as the suite scores stored outputs."""
        def labels(set_name: str) -> np.ndarray:
            return self.plan.sets[set_name].dataset.labels[indices.get(set_name, [])]

        if self.loss.feeds == ID_FEED:
            logits = self.logit_scale * self._cosine(ID_SET, features)
            return {ONE_STREAM: self.loss.loss(classification_outcomes(logits, labels(ID_SET)))}
        if self.loss.feeds == GROUPS_FEED:
            correct = classification_outcomes(self.logit_scale * self._cosine(SPURIOUS_SET, features),
                                              labels(SPURIOUS_SET))["correct"]
            groups = self.plan.sets[SPURIOUS_SET].dataset.groups[indices.get(SPURIOUS_SET, [])].astype(str)
            return {group: 1.0 - correct[groups == group] for group in self.plan.strata}
        id_cosine = self._cosine(ID_SET, features)
        id_scores, losses = self._ood_score(id_cosine), {}
        for stratum in self.plan.strata:
            if stratum == CLASS_SPLIT:
                id_classes, _ = split_class_indices(id_cosine.shape[1], self.plan.config.split_seed)
                split_scores = self._ood_score(id_cosine[:, id_classes])
                in_id = np.isin(labels(ID_SET), id_classes)
                losses[stratum] = pair_auroc_losses(split_scores[in_id], split_scores[~in_id])
            else:
                losses[stratum] = pair_auroc_losses(id_scores, self._ood_score(self._cosine(ood_set_name(stratum),
                                                                                           features)))
        return losses


def class_embeddings_by_set(runtime: Runtime, sets: Mapping[str, EvalSet]) -> dict[str, np.ndarray]:
    """Each set's zero-shot class embeddings through ``runtime`` (computed once per distinct classifier)."""
    tokenizer, computed, by_set = build_tokenizer(runtime.model_info), {}, {}
    for name, eval_set in sets.items():
        key = (eval_set.classifier.class_names, eval_set.classifier.templates)
        if key not in computed:
            computed[key] = class_embeddings(runtime, tokenizer, *key)
        by_set[name] = computed[key]
    return by_set
