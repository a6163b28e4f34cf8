"""Evaluate until settled (``--until-settled``): the suite's sets, shard by shard, until the picker's decision
on the objective is settled or the time budget is spent (``lpmr_edge.sequential`` has the rule,
``lpmr_edge.suite.settle_plan`` the visited sets, the decision's strata and the objective's per-sample loss).

**Shards.** Each visited set is visited in its own seeded order (``shard_order``), a shard of each at a
time: after shard ``k`` every candidate the decision still needs (``SettlingDecision.to_evaluate``) has
run on shard ``k`` of every visited set, the per-sample losses of the objective update the anytime-valid
comparisons, and one ``EvaluationRecord`` per set (which candidate saw which images) is written
atomically to ``settling.json``. Each candidate's features of a shard are stored beside its result
(``<result dir>/settling/<set>/shard-<k>.npy``) before the record names the shard, so a run killed in the
middle of a shard redoes only that shard; running the same command again replays the record and continues
(also after a budget ran out). The run stops when the sets that feed the decision run out. Then each
candidate's suite runs on the images of each visited set it saw, and ``metrics["sequential"]`` says how
its images were chosen and how many of each set it saw. The report's claims use those images with the
fixed-n paired tests: they are not part of the stopping rule.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_bytes, atomic_write_json, read_json, sha256_json
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.sequential import EvaluationRecord, SettleSettings, SettlingDecision
from lpmr_edge.suite.config import load_suite
from lpmr_edge.suite.families.classification import ID_SET
from lpmr_edge.suite.families.ood import CLASS_SPLIT, ood_set_name
from lpmr_edge.suite.families.spurious import SPURIOUS_SET
from lpmr_edge.suite.outputs import EvalSet, store_outputs
from lpmr_edge.suite.run import EvalSettings, Progress, apply_overrides, evaluate, progress_task
from lpmr_edge.suite.settle_plan import (
    GROUPS_FEED,
    OOD_FEED,
    ObjectiveLoss,
    ShardScorer,
    VisitPlan,
    class_embeddings_by_set,
    objective_loss,
    plan_visits,
    set_seed,
)

SETTLING_FILE = "settling.json"
SHARDS_DIR = "settling"


@dataclass(frozen=True)
class Candidate:
    """A runtime to decide on and the result directory its suite goes to."""

    runtime: Runtime
    out_dir: Path


@dataclass
class Settled:
    """Where a settling evaluation ended: the decision, the record per visited set and why it stopped
    (``settled``, ``budget`` or ``images``: no more samples for the decision)."""

    decision: SettlingDecision
    records: dict[str, EvaluationRecord]
    stopped: str
    objective: str
    plan: VisitPlan | None = field(default=None, compare=False)

    @property
    def loss(self) -> ObjectiveLoss:
        """The per-sample loss the objective is settled on (derived, so a Settled pickles: no function held)."""
        return objective_loss(self.objective)

    @property
    def record(self) -> EvaluationRecord:
        """The ID set's record."""
        return self.records[ID_SET]

    def seen(self, name: str) -> dict[str, list[int]]:
        """The image indices of each visited set candidate ``name`` was evaluated on, in visiting order."""
        return {set_name: record.seen(name) for set_name, record in self.records.items()}

    def _sets(self, name: str) -> dict[str, dict[str, int]]:
        return {set_name: {"images": len(record.seen(name)), "of": record.n_images}
                for set_name, record in self.records.items() if set_name != ID_SET}

    def describe(self) -> dict[str, Any]:
        """JSON summary: the rule's decision, the loss, why it stopped and the images each candidate saw (of the
        ID set; ``sets``: of each other visited set)."""
        described = {**self.decision.describe(), "loss": self.loss.name, "stopped": self.stopped,
                     "images": {name: len(self.record.seen(name)) for name in self.decision.candidates},
                     "of": self.record.n_images}
        if len(self.records) > 1:
            described["sets"] = {name: self._sets(name) for name in self.decision.candidates}
        return described

    def summary(self) -> str:
        """One line: settled or not, the recommendation, the undecided candidates, images per candidate."""
        states = self.decision.states()
        undecided = [name for name, state in states.items() if state == "undecided"]
        head = (f"settled at {self.decision.confidence:.0%} on {self.loss.name}" if self.stopped == "settled" else
                f"not settled ({'budget spent' if self.stopped == 'budget' else 'all images seen'}; "
                f"undecided: {', '.join(undecided)})")
        seen = "; ".join(f"{set_name} of {record.n_images}: " + ", ".join(
            f"{name} {len(record.seen(name))}" for name in self.decision.candidates)
            for set_name, record in self.records.items())
        others = ", ".join(f"{name} {state}" for name, state in states.items() if state != "recommended")
        return f"{head}: recommended {self.decision.recommended} ({others}); images seen, {seen}"

    def sequential(self, name: str) -> dict[str, Any]:
        """What ``metrics["sequential"]`` of candidate ``name`` records."""
        relation = self.describe()["candidates"][name]
        node = {"rule": self.decision.describe()["rule"], "objective": self.objective, "loss": self.loss.name,
                "stopped": self.stopped,
                "state": relation["state"], "images": len(self.record.seen(name)), "of": self.record.n_images,
                "seed": self.record.seed, "confidence": self.decision.confidence, "margin": self.decision.margin}
        return {**node, "sets": self._sets(name)} if len(self.records) > 1 else node


def _shard_path(out_dir: Path, set_name: str, shard: int) -> Path:
    return Path(out_dir) / SHARDS_DIR / set_name / f"shard-{shard:05d}.npy"


def _save_features(path: Path, features: np.ndarray) -> None:
    handle = io.BytesIO()
    np.save(handle, features)
    atomic_write_bytes(path, handle.getvalue())


def _feed(decision: SettlingDecision, scorers: Mapping[str, ShardScorer], evaluated: list[str],
          features: Mapping[str, Mapping[str, np.ndarray]], indices: Mapping[str, np.ndarray]) -> None:
    """Update ``decision`` with one shard: ``features[candidate][set]`` of the ``indices[set]`` images."""
    losses = {name: scorers[name].losses(features[name], indices) for name in evaluated}
    for stratum in decision.strata:
        decision.update({name: losses[name][stratum] for name in evaluated}, stratum)


def _exhausted(loss: ObjectiveLoss, plan: VisitPlan, indices: Mapping[str, np.ndarray]) -> bool:
    """Whether the next shard (``indices``: the visited sets that still have images) adds no sample to the decision."""
    if loss.feeds == GROUPS_FEED:
        return SPURIOUS_SET not in indices
    if ID_SET not in indices:
        return True
    return loss.feeds == OOD_FEED and not any(stratum == CLASS_SPLIT or ood_set_name(stratum) in indices
                                              for stratum in plan.strata)


def _resume(path: Path, key: str, candidates: Mapping[str, Candidate], scorers: Mapping[str, ShardScorer],
            decision: SettlingDecision, fresh: dict[str, EvaluationRecord]) -> dict[str, EvaluationRecord]:
    """The stored records when they were made for the same inputs and every shard's features are there (their
    shards replayed into ``decision``), else ``fresh``."""
    if not path.is_file() or read_json(path, "settling record").get("inputs_sha256") != key:
        return fresh
    records = {name: EvaluationRecord.from_json(data)
               for name, data in read_json(path, "settling record")["records"].items()}
    if set(records) != set(fresh):
        return fresh
    shards = [{name: record.shards[k] for name, record in records.items() if k < len(record.shards)}
              for k in range(max(len(record.shards) for record in records.values()))]
    paths = [{name: {set_name: _shard_path(candidates[name].out_dir, set_name, k) for set_name in shard}
              for name in next(iter(shard.values()))["candidates"]} for k, shard in enumerate(shards)]
    if not all(p.is_file() for by in paths for sets in by.values() for p in sets.values()):
        return fresh
    for shard, by_candidate in zip(shards, paths):
        indices = {set_name: np.asarray(part["indices"]) for set_name, part in shard.items()}
        features = {name: {set_name: np.load(p) for set_name, p in sets.items()} for name, sets in by_candidate.items()}
        _feed(decision, scorers, list(by_candidate), features, indices)
    return records


def settle(candidates: Mapping[str, Candidate], record_path: Path, settings: EvalSettings, objective: str,
           margin: float, until: SettleSettings, log: Callable[[str], None] = print,
           progress: Progress | None = None, suite: Any = None) -> Settled:
    """Evaluate ``candidates`` shard by shard on the visited sets of the suite (``suite``, else ``settings.suite``;
    orders seeded by ``settings.seed``) until the decision on ``objective`` is settled, ``until.deadline`` has
    passed (checked after each shard) or the samples ran out; resumes the record at ``record_path`` when it
    was made for the same candidates, data and rule."""
    suite = apply_overrides(suite or load_suite(settings.suite), settings)
    loss = objective_loss(objective)
    names = list(candidates)
    plan = plan_visits(suite, settings, loss)
    scorers = {name: ShardScorer(candidate.runtime, suite, plan, settings.batch_size, loss)
               for name, candidate in candidates.items()}
    key = sha256_json({"candidates": {name: c.runtime.identity for name, c in candidates.items()},
                       "datasets": {name: s.dataset.sha256 for name, s in plan.sets.items()},
                       "loss": loss.name, "strata": plan.strata, "combine": loss.combine, "margin": margin,
                       "confidence": until.confidence, "seed": settings.seed,
                       "logit_scale": {name: s.logit_scale for name, s in scorers.items()}})
    decision = SettlingDecision(names, margin, until.confidence, loss.bound, strata=plan.strata, combine=loss.combine)
    records = _resume(record_path, key, candidates, scorers, decision,
                      {name: EvaluationRecord(len(s.dataset), set_seed(settings.seed, name))
                       for name, s in plan.sets.items()})
    if records[ID_SET].shards:
        log(f"  settling: resumed after {len(records[ID_SET].shards)} shard(s), "
            + ", ".join(f"{name} {record.position}" for name, record in records.items()) + " images")
    stopped = "settled"
    total = sum(record.n_images for record in records.values())
    with progress_task(progress, f"settling on {loss.name}", total) as advance:
        if advance:
            advance(sum(record.position for record in records.values()))
        while not decision.settled:
            indices = {name: record.next_indices(until.shard_size) for name, record in records.items()}
            indices = {name: shard for name, shard in indices.items() if len(shard)}
            if _exhausted(loss, plan, indices):
                stopped = "images"
                break
            evaluated = decision.to_evaluate
            features: dict[str, dict[str, np.ndarray]] = {}
            for name in evaluated:
                features[name] = {}
                for set_name, shard in indices.items():
                    features[name][set_name] = scorers[name].features(set_name, shard)
                    _save_features(_shard_path(candidates[name].out_dir, set_name, len(records[set_name].shards)),
                                   features[name][set_name])
            _feed(decision, scorers, evaluated, features, indices)
            for set_name, shard in indices.items():
                records[set_name].add(shard, evaluated)
            atomic_write_json(record_path, {"inputs_sha256": key,
                                            "records": {name: record.to_json() for name, record in records.items()},
                                            "decision": decision.describe()})
            if advance:
                advance(sum(len(shard) for shard in indices.values()))
            if not decision.settled and until.deadline is not None and time.monotonic() >= until.deadline:
                stopped = "budget"
                break
    return Settled(decision, records, stopped, objective, plan)


def evaluate_seen(settled: Settled, name: str, candidate: Candidate, settings: EvalSettings,
                  progress: Progress | None = None, suite: Any = None) -> dict[str, Any]:
    """Candidate ``name``'s suite over the images of each visited set it saw (its shard features, in visiting
    order, are stored as those sets' outputs first, so they are not recomputed); returns its result
    (``evaluate``; ``suite`` as for ``settle``)."""
    assert settled.plan is not None
    seen = settled.seen(name)
    runtime = candidate.runtime
    id_subset = settled.plan.sets[ID_SET].dataset.subset(seen[ID_SET])
    subsets = {set_name: EvalSet(set_name, id_subset, id_subset) if set_name == ID_SET else
               EvalSet(set_name, eval_set.dataset.subset(seen[set_name]), eval_set.classifier)
               for set_name, eval_set in settled.plan.sets.items()}
    embeddings = class_embeddings_by_set(runtime, subsets)
    for set_name, eval_set in subsets.items():
        features = [np.load(_shard_path(candidate.out_dir, set_name, number))
                    for number, shard in enumerate(settled.records[set_name].shards) if name in shard["candidates"]]
        store_outputs(runtime, eval_set, embeddings[set_name], np.concatenate(features), candidate.out_dir)
    return evaluate(runtime, candidate.out_dir, settings, progress, suite, id_indices=seen[ID_SET],
                    sequential=settled.sequential(name),
                    subsets={set_name: indices for set_name, indices in seen.items() if set_name != ID_SET})


def read_records(path: Path) -> dict[str, EvaluationRecord]:
    """The records per visited set of a ``settling.json``."""
    return {name: EvaluationRecord.from_json(data) for name, data in read_json(path, "settling record")["records"].items()}


def reference_images(records: Iterable[Mapping[str, EvaluationRecord]]) -> dict[str, Any]:
    """How to evaluate a reference beside settled evaluations (``records``: each one's records per visited set):
    ``evaluate``'s keyword arguments covering, per visited set, the images any of their candidates saw (the
    longest prefix of the set's order), with the reference's ``metrics["sequential"]`` node."""
    longest: dict[str, EvaluationRecord] = {}
    for by_set in records:
        for set_name, record in by_set.items():
            if set_name not in longest or record.position > longest[set_name].position:
                longest[set_name] = record
    seen = {set_name: [i for shard in record.shards for i in shard["indices"]] for set_name, record in longest.items()}
    node = {"state": "reference", "stopped": "the images any candidate saw", "images": len(seen[ID_SET]),
            "of": longest[ID_SET].n_images, "seed": longest[ID_SET].seed}
    subsets = {set_name: indices for set_name, indices in seen.items() if set_name != ID_SET}
    if subsets:
        node["sets"] = {set_name: {"images": len(indices), "of": longest[set_name].n_images}
                        for set_name, indices in subsets.items()}
    return {"id_indices": seen[ID_SET], "subsets": subsets, "sequential": node}


REFERENCE_NAME = "torch-fp32"


def against_reference(runtime: Runtime, out_dir: Path, settings: EvalSettings, objective: str, margin: float,
                      until: SettleSettings, log: Callable[[str], None] = print,
                      progress: Progress | None = None) -> tuple[dict[str, Any], Settled]:
    """``eval --until-settled``: ``runtime`` and the torch FP32 reference of its model (result in
    ``out_dir/reference``) settled against each other on ``objective``; returns ``runtime``'s result."""
    from lpmr_edge.models import load_model
    from lpmr_edge.runtimes.torch_runtime import TorchRuntime

    reference = TorchRuntime(load_model(runtime.model_info["spec"]))
    if reference.identity == runtime.identity:
        raise UserError("--until-settled compares a runtime with the torch FP32 reference; give --artifact or "
                        "another --runtime")
    name = f"{runtime.name}-{runtime.describe()['precision']}"
    candidates = {REFERENCE_NAME: Candidate(reference, Path(out_dir) / "reference"), name: Candidate(runtime, out_dir)}
    settled = settle(candidates, Path(out_dir) / SETTLING_FILE, settings, objective, margin, until, log, progress)
    evaluate_seen(settled, REFERENCE_NAME, candidates[REFERENCE_NAME], settings, progress)
    return evaluate_seen(settled, name, candidates[name], settings, progress), settled
