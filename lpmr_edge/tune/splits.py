"""Validation and test splits of a suite's evaluation sets, and evaluating a runtime on one of them.

Every set a suite loads by name (the ID set, each OOD set, the spurious-correlation set) is split by a seeded
permutation of its (capped) indices: the first ``validation_fraction`` go to validation, the rest to test.
The permutation depends only on the set's size and the seed, so sets of the same size drawn from the same
images (``fmnist-test`` and ``fmnist-colour``, both the Fashion-MNIST test split) are split identically and a
test image never reaches validation in another colour. Sets derived from the ID set (corruptions, shift, the
class split) follow the ID set's split. Tuning decisions read validation results only; the final comparison
reads test results only; ``Splits.describe`` (sizes and index hashes per set) goes into the tune manifest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.data import ImageDataset, preprocess_batches
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import machine_info, now_utc, sha256_json, tool_versions
from lpmr_edge.models import build_preprocess, build_tokenizer
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.suite.families.classification import ID_SET
from lpmr_edge.suite.families.ood import ood_set_name
from lpmr_edge.suite.families.spurious import SPURIOUS_SET
from lpmr_edge.suite.outputs import EvalSet, collect_outputs, write_result
from lpmr_edge.suite.run import EvalSettings, conventions, id_set, plan_sets, score_outputs
from lpmr_edge.zeroshot import class_embeddings

VALIDATION, TEST = "validation", "test"
SPLITS = (VALIDATION, TEST)
SPLIT_RULE = ("each set loaded by name is split by a seeded permutation of its indices (validation = the first "
              "fraction); sets derived from the ID set follow the ID split; tuning reads validation only")


@dataclass(frozen=True)
class Splits:
    """How every evaluation set is split into validation and test."""

    validation_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.validation_fraction < 1:
            raise UserError(f"validation fraction {self.validation_fraction} must be in (0, 1); e.g. 0.5")

    def indices(self, count: int, split: str) -> np.ndarray:
        """Sorted indices of ``split`` among ``count`` samples (disjoint from the other split, together all)."""
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}'; use {' or '.join(SPLITS)}")
        order = np.random.default_rng(self.seed).permutation(count)
        cut = round(count * self.validation_fraction)
        if cut == 0 or cut == count:
            raise UserError(f"a set of {count} images cannot be split {self.validation_fraction:g} : "
                            f"{1 - self.validation_fraction:g}; use more images (--limit) or another --validation-fraction")
        return np.sort(order[:cut] if split == VALIDATION else order[cut:])

    def describe_set(self, dataset: ImageDataset) -> dict[str, Any]:
        """One set's split: its name, size, and the size and index hash of each split."""
        return {"dataset": dataset.name, "n": len(dataset), "sha256": dataset.sha256,
                **{split: {"n": len(chosen), "indices_sha256": sha256_json(chosen.tolist())}
                   for split in SPLITS for chosen in (self.indices(len(dataset), split),)}}


def _split_by_name(eval_set: EvalSet) -> bool:
    """Whether a set is loaded by name (split on its own indices) rather than derived from the ID set."""
    return eval_set.name == SPURIOUS_SET or eval_set.name.startswith(ood_set_name(""))


def split_sets(suite: Any, splits: Splits, split: str, settings: EvalSettings,
               image_size: int | None = None) -> list[EvalSet]:
    """The suite's evaluation sets restricted to ``split``."""
    id_images = id_set(suite, settings.skip_bad_images)
    sets = plan_sets(suite, settings.seed, image_size, settings.skip_bad_images,
                     id_indices=splits.indices(len(id_images), split))
    return [replace(eval_set, dataset=eval_set.dataset.subset(splits.indices(len(eval_set.dataset), split)))
            if _split_by_name(eval_set) else eval_set for eval_set in sets]


def describe_splits(suite: Any, splits: Splits, settings: EvalSettings) -> dict[str, Any]:
    """Manifest entry: the rule and, per set loaded by name, its size and each split's size and index hash."""
    full = plan_sets(suite, settings.seed, None, settings.skip_bad_images)
    return {**asdict(splits), "rule": SPLIT_RULE,
            "sets": {eval_set.name: splits.describe_set(eval_set.dataset)
                     for eval_set in full if eval_set.name == ID_SET or _split_by_name(eval_set)}}


def evaluate_split(runtime: Runtime, out_dir: Path, suite: Any, splits: Splits, split: str,
                   settings: EvalSettings) -> dict[str, Any]:
    """Run ``suite`` through ``runtime`` on one split (outputs reused when stored); write and return the
    result, which reads like any other result directory (``lpmr_edge.results.read_result``) plus ``split``."""
    out_dir = Path(out_dir)
    model_info = runtime.model_info
    sets = split_sets(suite, splits, split, settings, model_info["image_size"])
    preprocess, tokenizer = build_preprocess(model_info), build_tokenizer(model_info)
    for eval_set in sets:
        embeddings = class_embeddings(runtime, tokenizer, eval_set.classifier.class_names,
                                      eval_set.classifier.templates)
        collect_outputs(runtime, eval_set, embeddings,
                        preprocess_batches(eval_set.dataset, preprocess, settings.batch_size), out_dir)
    metrics = score_outputs(out_dir, suite, settings.seed)
    description = runtime.describe()
    datasets = {eval_set.name: eval_set.dataset.describe() for eval_set in sets}
    split_record = {"name": split, **asdict(splits)}
    created = now_utc()
    result = {
        "model": model_info["spec"], "model_label": model_info["label"], "runtime": runtime.name,
        "precision": description["precision"], "executed_precision": description["executed_precision"],
        "n": len(sets[0].dataset), "dataset": datasets[ID_SET], "datasets": datasets, "split": split_record,
        "settings": asdict(settings), "suite": asdict(suite), "logit_scale": model_info["logit_scale"],
        "scoring": model_info.get("scoring"), "conventions": conventions(suite, settings.seed),
        "metrics": metrics, "created": created,
    }
    write_result(out_dir, result, {"runtime": description, "dataset": datasets[ID_SET], "datasets": datasets,
                                   "split": split_record, "suite": asdict(suite), "settings": asdict(settings),
                                   "tool_versions": tool_versions(), "machine": machine_info(), "created": created})
    return result

