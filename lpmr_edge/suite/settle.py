"""Evaluate until settled (``--until-settled``): the suite's ID set, shard by shard, until the picker's
decision on the objective is settled or the time budget is spent (``lpmr_edge.sequential`` has the rule).

The ID images are visited in the seeded order of ``shard_order``; after each shard every candidate the
decision still needs (``SettlingDecision.to_evaluate``) is run on it, the per-image losses of the objective
update the anytime-valid comparisons, and the ``EvaluationRecord`` (which candidate saw which images) is
written atomically to ``settling.json``. Each candidate's features of a shard are stored beside its
result (``<result dir>/settling/shard-<k>.npy``) before the record names the shard, so a run killed in
the middle of a shard redoes only that shard; running the same command again replays the record and
continues (also after a budget ran out). Then each candidate's suite runs with its ID set restricted to
the images it saw (sets derived from the ID set, corruptions and the rotate-scale shift, follow; OOD and
group sets are evaluated in full), and ``metrics["sequential"]`` says how its images were chosen.

Objective -> per-image loss (``OBJECTIVE_LOSSES``): accuracy -> top-1 error (bound 1); ece -> Brier score
(bound 2; ECE is not a mean of per-image losses, so calibration is *decided on Brier*, a proper scoring
rule, with the ECE margin); nll -> NLL clipped at ``NLL_BOUND`` nats, with the NLL margin. Other
objectives (OOD, worst-group) are not supported here.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.data import preprocess_batches
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_bytes, atomic_write_json, read_json, sha256_json
from lpmr_edge.metrics import classification_outcomes
from lpmr_edge.models import build_preprocess, build_tokenizer
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.sequential import (
    BRIER_BOUND,
    TOP1_BOUND,
    EvaluationRecord,
    SettleSettings,
    SettlingDecision,
    clipped_nll,
    replay,
)
from lpmr_edge.suite.config import load_suite
from lpmr_edge.suite.families.classification import ID_SET, resolve_logit_scale
from lpmr_edge.suite.outputs import EvalSet, store_outputs
from lpmr_edge.suite.run import EvalSettings, Progress, apply_overrides, evaluate, id_set, progress_task
from lpmr_edge.zeroshot import class_embeddings, cosine_similarities

SETTLING_FILE = "settling.json"
SHARDS_DIR = "settling"
NLL_BOUND = 10.0  # nats: p(label) below e^-10 counts as e^-10


@dataclass(frozen=True)
class ObjectiveLoss:
    """The decomposable per-image loss a settling decision compares, with its range ``[0, bound]``."""

    name: str
    bound: float
    loss: Callable[[Mapping[str, np.ndarray]], np.ndarray]  # classification outcomes -> losses


OBJECTIVE_LOSSES = {
    "accuracy": ObjectiveLoss("top-1 error", TOP1_BOUND, lambda o: 1.0 - o["correct"]),
    "ece": ObjectiveLoss("Brier score", BRIER_BOUND, lambda o: np.minimum(o["brier"], BRIER_BOUND)),
    "nll": ObjectiveLoss(f"NLL clipped at {NLL_BOUND:g}", NLL_BOUND, lambda o: clipped_nll(np.exp(-o["nll"]), NLL_BOUND)),
}


def objective_loss(objective: str) -> ObjectiveLoss:
    """The loss an objective is settled on; UserError for objectives without one."""
    if objective not in OBJECTIVE_LOSSES:
        raise UserError(f"--until-settled decides on a per-image loss, which objective '{objective}' has not; "
                        f"use --objective {' | '.join(OBJECTIVE_LOSSES)}")
    return OBJECTIVE_LOSSES[objective]


@dataclass(frozen=True)
class Candidate:
    """A runtime to decide on and the result directory its suite goes to."""

    runtime: Runtime
    out_dir: Path


@dataclass
class Settled:
    """Where a settling evaluation ended: the decision, the record and why it stopped
    (``settled``, ``budget`` or ``images``: every image seen)."""

    decision: SettlingDecision
    record: EvaluationRecord
    stopped: str
    loss: ObjectiveLoss
    objective: str

    def describe(self) -> dict[str, Any]:
        """JSON summary: the rule's decision, the loss, why it stopped and the images each candidate saw."""
        return {**self.decision.describe(), "loss": self.loss.name, "stopped": self.stopped,
                "images": {name: len(self.record.seen(name)) for name in self.decision.candidates},
                "of": self.record.n_images}

    def summary(self) -> str:
        """One line: settled or not, the recommendation, the undecided candidates, images per candidate."""
        states = self.decision.states()
        undecided = [name for name, state in states.items() if state == "undecided"]
        head = (f"settled at {self.decision.confidence:.0%} on {self.loss.name}" if self.stopped == "settled" else
                f"not settled ({'budget spent' if self.stopped == 'budget' else 'all images seen'}; "
                f"undecided: {', '.join(undecided)})")
        seen = ", ".join(f"{name} {len(self.record.seen(name))}" for name in self.decision.candidates)
        others = ", ".join(f"{name} {state}" for name, state in states.items() if state != "recommended")
        return (f"{head}: recommended {self.decision.recommended} ({others}); "
                f"images seen of {self.record.n_images}: {seen}")

    def sequential(self, name: str) -> dict[str, Any]:
        """What ``metrics["sequential"]`` of candidate ``name`` records."""
        relation = self.describe()["candidates"][name]
        return {"rule": self.decision.describe()["rule"], "objective": self.objective, "loss": self.loss.name,
                "stopped": self.stopped,
                "state": relation["state"], "images": len(self.record.seen(name)), "of": self.record.n_images,
                "seed": self.record.seed, "confidence": self.decision.confidence, "margin": self.decision.margin}


def _shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / SHARDS_DIR / f"shard-{shard:05d}.npy"


def _save_features(path: Path, features: np.ndarray) -> None:
    handle = io.BytesIO()
    np.save(handle, features)
    atomic_write_bytes(path, handle.getvalue())


class _Scorer:
    """One candidate's features and losses on images of the ID set."""

    def __init__(self, candidate: Candidate, suite: Any, id_images: Any, batch_size: int, loss: ObjectiveLoss):
        runtime = candidate.runtime
        self.candidate, self.id_images, self.batch_size, self.loss = candidate, id_images, batch_size, loss
        info = runtime.model_info
        self.preprocess = build_preprocess(info)
        self.embeddings = class_embeddings(runtime, build_tokenizer(info), id_images.class_names, id_images.templates)
        self.logit_scale = resolve_logit_scale(suite.calibration.logit_scale, info["logit_scale"])

    def features(self, indices: np.ndarray) -> np.ndarray:
        """Image features of the images at ``indices``, as stored (float32, like the suite's outputs)."""
        subset = self.id_images.subset(indices)
        return np.concatenate([self.candidate.runtime.image_features(batch)
                               for batch in preprocess_batches(subset, self.preprocess, self.batch_size)]
                              ).astype(np.float32)

    def losses(self, features: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """The objective's per-image losses, scored as the suite scores stored outputs."""
        logits = self.logit_scale * cosine_similarities(features, self.embeddings)
        return self.loss.loss(classification_outcomes(logits, self.id_images.labels[indices]))


def _resume(path: Path, key: str, names: list[str], scorers: Mapping[str, _Scorer], decision: SettlingDecision,
            n_images: int, seed: int) -> EvaluationRecord:
    """The stored record when it was made for the same inputs and its shard features are all there (its
    shards replayed into ``decision``), else a new one."""
    if not path.is_file() or read_json(path, "settling record").get("inputs_sha256") != key:
        return EvaluationRecord(n_images, seed)
    record = EvaluationRecord.from_json(read_json(path, "settling record")["record"])
    losses = {name: np.full(n_images, np.nan) for name in names}
    for shard_number, shard in enumerate(record.shards):
        indices = np.asarray(shard["indices"])
        for name in shard["candidates"]:
            stored = _shard_path(scorers[name].candidate.out_dir, shard_number)
            if not stored.is_file():
                return EvaluationRecord(n_images, seed)
            losses[name][indices] = scorers[name].losses(np.load(stored), indices)
    replay(decision, record, losses)
    return record


def settle(candidates: Mapping[str, Candidate], record_path: Path, settings: EvalSettings, objective: str,
           margin: float, until: SettleSettings, log: Callable[[str], None] = print,
           progress: Progress | None = None) -> Settled:
    """Evaluate ``candidates`` shard by shard on the ID set of ``settings``' suite (order seeded by
    ``settings.seed``) until the decision on ``objective`` is settled, ``until.deadline`` has passed
    (checked after each shard) or every image was seen; resumes the record at ``record_path`` when it was
    made for the same candidates, data and rule."""
    suite = apply_overrides(load_suite(settings.suite), settings)
    loss = objective_loss(objective)
    names = list(candidates)
    id_images = id_set(suite, settings.skip_bad_images)
    scorers = {name: _Scorer(candidate, suite, id_images, settings.batch_size, loss) for name, candidate in candidates.items()}
    key = sha256_json({"candidates": {name: c.runtime.identity for name, c in candidates.items()},
                       "dataset": id_images.sha256, "loss": loss.name, "margin": margin,
                       "confidence": until.confidence, "seed": settings.seed,
                       "logit_scale": {name: s.logit_scale for name, s in scorers.items()}})
    decision = SettlingDecision(names, margin, until.confidence, loss.bound)
    record = _resume(record_path, key, names, scorers, decision, len(id_images), settings.seed)
    if record.shards:
        log(f"  settling: resumed after {len(record.shards)} shard(s), {record.position} images")
    stopped = "settled"
    with progress_task(progress, f"settling on {loss.name}", len(id_images)) as advance:
        if advance:
            advance(record.position)
        while not decision.settled:
            indices = record.next_indices(until.shard_size)
            if not len(indices):
                stopped = "images"
                break
            evaluated = decision.to_evaluate
            shard_losses = {}
            for name in evaluated:
                features = scorers[name].features(indices)
                _save_features(_shard_path(candidates[name].out_dir, len(record.shards)), features)
                shard_losses[name] = scorers[name].losses(features, indices)
            decision.update(shard_losses)
            record.add(indices, evaluated)
            atomic_write_json(record_path, {"inputs_sha256": key, "record": record.to_json(),
                                            "decision": decision.describe()})
            if advance:
                advance(len(indices))
            if not decision.settled and until.deadline is not None and time.monotonic() >= until.deadline:
                stopped = "budget"
                break
    return Settled(decision, record, stopped, loss, objective)


def evaluate_seen(settled: Settled, name: str, candidate: Candidate, settings: EvalSettings,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Candidate ``name``'s suite over the ID images it saw (its shard features, in visiting order, are
    stored as its ID outputs first, so they are not recomputed); returns its result (``evaluate``)."""
    suite = apply_overrides(load_suite(settings.suite), settings)
    seen = settled.record.seen(name)
    subset = id_set(suite, settings.skip_bad_images).subset(seen)
    features = [np.load(_shard_path(candidate.out_dir, number))
                for number, shard in enumerate(settled.record.shards) if name in shard["candidates"]]
    runtime = candidate.runtime
    embeddings = class_embeddings(runtime, build_tokenizer(runtime.model_info), subset.class_names, subset.templates)
    store_outputs(runtime, EvalSet(ID_SET, subset, subset), embeddings, np.concatenate(features), candidate.out_dir)
    return evaluate(runtime, candidate.out_dir, settings, progress, id_indices=seen, sequential=settled.sequential(name))


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
