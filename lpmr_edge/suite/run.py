"""Running a suite: plan its evaluation sets, run them through a runtime, score the stored outputs.

Every metric is computed from the stored outputs alone (``score_outputs``), so results produced on a
device can be scored on the host. Evaluation sets are named by their families: ``id`` (accuracy,
calibration), ``ood-<name>`` (ID = positive class), ``corruption-<kind>-<severity>`` (a seeded subset
of the ID set, ImageNet-C corruptions), ``shift`` and ``spurious`` (a group-labelled set).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.data import ImageDataset, PreprocessedSets, load_dataset, preprocess_batches
from lpmr_edge.manifest import machine_info, now_utc, read_json, sha256_json, tool_versions
from lpmr_edge.models import build_preprocess, build_tokenizer
from lpmr_edge.runtimes.base import CallTimer, Runtime
from lpmr_edge.stats import BCA, CONFIDENCE, JACKKNIFE_GROUPS
from lpmr_edge.suite.config import load_suite, with_overrides
from lpmr_edge.suite.families import FAMILIES
from lpmr_edge.suite.families.base import HeadlineRow, PlanContext, labelled
from lpmr_edge.suite.families.classification import ID_SET, score_context
from lpmr_edge.suite.outputs import (
    METRICS_FILE,
    OUTPUTS_DIR,
    EvalSet,
    SetOutputs,
    collect_outputs,
    load_outputs,
    write_result,
)
from lpmr_edge.suite.sizes import sample_sizes
from lpmr_edge.zeroshot import class_embeddings

Progress = Callable[[str, int], typing.ContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class EvalSettings:
    """How to run a suite. ``dataset``, ``limit`` and ``logit_scale`` override the suite's when given."""

    dataset: str | None = None
    limit: int | None = None
    batch_size: int = 64
    seed: int = 0
    skip_bad_images: bool = False
    suite: str = "basic"
    logit_scale: str | float | None = None


def apply_overrides(suite: Any, settings: EvalSettings) -> Any:
    """The suite with the run's ID set, image cap and logit scale when the settings give them."""
    return with_overrides(suite, settings.dataset, settings.limit, settings.logit_scale)


def plan_sets(suite: Any, seed: int, image_size: int | None = None, skip_bad_images: bool = False,
              available: dict[str, int] | None = None, id_indices: Sequence[int] | None = None,
              subsets: Mapping[str, Sequence[int]] | None = None) -> list[EvalSet]:
    """The evaluation sets of a suite, each capped at ``suite.limit`` images, family by family;
    ``available`` (if given) receives each loaded dataset's size before the cap, by the name it was loaded by;
    ``id_indices`` (if given) restricts the capped ID set to those images, in that order (sets derived from
    the ID set follow); ``subsets`` (outputs name -> indices) restricts other sets likewise."""
    def load(name: str) -> ImageDataset:
        dataset = load_dataset(name, skip_bad_images=skip_bad_images)
        if available is not None:
            available[name] = len(dataset)
        return dataset.head(suite.limit)

    id_set = labelled(load(suite.id), "ID")
    if id_indices is not None:
        id_set = id_set.subset(id_indices)
    context = PlanContext(id_set, seed, image_size, load)
    subsets = subsets or {}
    return [dataclasses.replace(eval_set, dataset=eval_set.dataset.subset(subsets[eval_set.name]))
            if eval_set.name in subsets else eval_set
            for family, config in suite.families() for eval_set in family.plan(config, context)]


def id_set(suite: Any, skip_bad_images: bool = False) -> ImageDataset:
    """The suite's capped ID set, as ``plan_sets`` plans it (``id_indices`` index it)."""
    return labelled(load_dataset(suite.id, skip_bad_images=skip_bad_images).head(suite.limit), "ID")


def suite_set_names(suite: Any) -> list[str]:
    """Outputs names of every evaluation set of a suite."""
    return [name for family, config in suite.families() for name in family.set_names(config)]


def load_suite_outputs(out_dir: Path, suite: Any) -> dict[str, SetOutputs]:
    """Stored outputs of every set of a suite."""
    return {name: load_outputs(out_dir, name) for name in suite_set_names(suite)}


def suite_probes(outputs: Mapping[str, SetOutputs], suite: Any) -> dict[str, Any]:
    """Every family's probe(s) from a suite's stored outputs, by family name (families the suite runs)."""
    context = score_context(outputs, suite.calibration)
    return {family.name: family.probe(config, context) for family, config in suite.families()}


def score_outputs(out_dir: Path, suite: Any, seed: int) -> dict[str, Any]:
    """All metric families of a suite, with bootstrap CIs, from the outputs stored in ``out_dir``."""
    outputs = load_suite_outputs(out_dir, suite)
    context = score_context(outputs, suite.calibration)
    metrics: dict[str, Any] = {}
    for family, config in suite.families():
        metrics.update(family.score(config, family.probe(config, context), context, suite.bootstrap_resamples, seed))
    record_ci_methods(metrics)
    return metrics


def metrics_of_same_outputs(source: Path, out_dir: Path, suite: Any, seed: int) -> dict[str, Any] | None:
    """``source``'s metrics if it scored exactly ``out_dir``'s per-sample outputs (every set's file byte for
    byte) with ``suite`` and ``seed`` — scoring is a function of those alone —, else None."""
    raw = read_json(Path(source) / METRICS_FILE, "metrics")
    if sha256_json(raw.get("suite")) != sha256_json(asdict(suite)) or raw.get("settings", {}).get("seed") != seed:
        return None
    mine, theirs = (sorted((Path(directory) / OUTPUTS_DIR).glob("*.npz")) for directory in (out_dir, source))
    if [path.name for path in mine] != [path.name for path in theirs] or any(
            path.read_bytes() != other.read_bytes() for path, other in zip(mine, theirs)):
        return None
    return {name: value for name, value in raw["metrics"].items() if name != "sequential"}


def record_ci_methods(node: Any, method: str = BCA) -> None:
    """Give every values node with a ``ci`` table a ``ci_method`` table naming each interval's method
    (``method`` unless the family recorded another, e.g. exact intervals)."""
    if not isinstance(node, dict):
        return
    if isinstance(node.get("ci"), dict):
        recorded = node.setdefault("ci_method", {})
        for name in node["ci"]:
            recorded.setdefault(name, method)
    for key, child in node.items():
        if key not in ("ci", "ci_method"):
            record_ci_methods(child, method)


def progress_task(progress: Progress | None, label: str, total: int) -> typing.ContextManager[Any]:
    """A task of ``progress`` (its context yields ``advance(n)``), or a context yielding None without one."""
    return progress(label, total) if progress else contextlib.nullcontext()


@dataclass(frozen=True)
class Collected:
    """A suite's per-sample outputs, written to ``out_dir`` by ``collect``, and what ``finish`` needs to score
    them into a result: everything the result and its manifest record besides the metrics."""

    out_dir: Path
    suite: Any
    settings: EvalSettings
    result: dict[str, Any]  # metrics.json without "metrics" and "created"
    manifest: dict[str, Any]  # manifest.json without "created" and "timing"
    available: int | None  # the ID images the suite's cap chose from
    sequential: dict[str, Any] | None
    timing: dict[str, float]  # the collection's CallTimer timing


def collect(runtime: Runtime, out_dir: Path, settings: EvalSettings = EvalSettings(),
            progress: Progress | None = None, suite: Any = None,
            preprocessed: PreprocessedSets | None = None, id_indices: Sequence[int] | None = None,
            sequential: Mapping[str, Any] | None = None,
            subsets: Mapping[str, Sequence[int]] | None = None) -> Collected:
    """Run every set of a suite (``suite``, else ``settings.suite``) through ``runtime`` and store its
    per-sample outputs in ``out_dir`` (sets already stored for the same inputs are kept); the arguments are
    ``evaluate``'s. Needs the runtime; ``finish`` then scores without it."""
    out_dir = Path(out_dir)
    timer = CallTimer(runtime)
    suite = apply_overrides(suite or load_suite(settings.suite), settings)
    model_info = runtime.model_info
    available: dict[str, int] = {}
    sets = plan_sets(suite, settings.seed, model_info["image_size"], settings.skip_bad_images, available, id_indices,
                     subsets)
    preprocess, tokenizer = build_preprocess(model_info), build_tokenizer(model_info)
    preprocess_key = sha256_json(model_info["preprocess"])

    def batches(dataset: ImageDataset) -> Iterable[np.ndarray]:
        if preprocessed is None:
            return preprocess_batches(dataset, preprocess, settings.batch_size)
        return preprocessed.batches(dataset, preprocess, preprocess_key, settings.batch_size)

    total = sum(len(eval_set.dataset) for eval_set in sets)
    with progress_task(progress, f"{suite.name} suite, {len(sets)} sets ({runtime.name})", total) as advance:
        for eval_set in sets:
            embeddings = class_embeddings(runtime, tokenizer, eval_set.classifier.class_names,
                                          eval_set.classifier.templates)
            if not collect_outputs(runtime, eval_set, embeddings, batches(eval_set.dataset), out_dir,
                                   advance) and advance:
                advance(len(eval_set.dataset))
    description = runtime.describe()
    datasets = {eval_set.name: eval_set.dataset.describe() for eval_set in sets}
    result = {
        "model": model_info["spec"], "model_label": model_info["label"], "runtime": runtime.name,
        "precision": description["precision"], "executed_precision": description["executed_precision"],
        "n": len(sets[0].dataset), "dataset": datasets[ID_SET], "datasets": datasets,
        "settings": asdict(settings), "suite": asdict(suite), "logit_scale": model_info["logit_scale"],
        "scoring": model_info.get("scoring"), "conventions": conventions(suite, settings.seed),
    }
    manifest = {"runtime": description, "dataset": datasets[ID_SET], "datasets": datasets, "suite": asdict(suite),
                "settings": asdict(settings), "tool_versions": tool_versions(), "machine": machine_info()}
    return Collected(out_dir, suite, settings, result, manifest, available.get(suite.id),
                     None if sequential is None else dict(sequential), timer.timing())


def finish(collected: Collected, scored_by: Path | None = None) -> dict[str, Any]:
    """Score ``collected``'s stored outputs (every metric family, bootstrap intervals) and write its
    ``metrics.json`` and manifest; returns the result. ``scored_by``: a result whose metrics are taken when it
    scored these very outputs (``metrics_of_same_outputs``). The manifest's ``timing`` adds the scoring's wall
    time to the collection's."""
    started = time.perf_counter()
    suite, seed = collected.suite, collected.settings.seed
    metrics = (scored_by and metrics_of_same_outputs(scored_by, collected.out_dir, suite, seed)) \
        or score_outputs(collected.out_dir, suite, seed)
    metrics["accuracy"]["available"] = collected.available
    if collected.sequential is not None:
        metrics["sequential"] = collected.sequential
    inside, wall = collected.timing["runtime_s"], collected.timing["wall_s"] + time.perf_counter() - started
    timing = {"runtime_s": inside, "wall_s": wall, "overhead": min(1.0, max(0.0, 1 - inside / wall)) if wall else 0.0}
    created = now_utc()
    result = {**collected.result, "metrics": metrics, "created": created}
    write_result(collected.out_dir, result, {**collected.manifest, "created": created, "timing": timing})
    return result


def evaluate(runtime: Runtime, out_dir: Path, settings: EvalSettings = EvalSettings(),
             progress: Progress | None = None, suite: Any = None,
             preprocessed: PreprocessedSets | None = None, id_indices: Sequence[int] | None = None,
             sequential: Mapping[str, Any] | None = None,
             subsets: Mapping[str, Sequence[int]] | None = None, scored_by: Path | None = None) -> dict[str, Any]:
    """Run a suite (``suite``, else ``settings.suite``) through ``runtime``; write and return ``metrics.json``
    (``collect``, then ``finish``).

    ``preprocessed`` keeps the preprocessed images for later evaluations in this process (sweep workers).
    ``id_indices`` evaluates only those images of the ID set (``plan_sets``; ``subsets`` those of other sets)
    and ``sequential`` (how they were chosen, ``lpmr_edge.suite.settle``) is recorded as ``metrics["sequential"]``.
    ``scored_by``: a result whose metrics are taken when it scored these very outputs (``metrics_of_same_outputs``).
    The results manifest's ``timing`` (``CallTimer``) says how much of this call's wall time was spent inside
    the runtime's calls.
    """
    return finish(collect(runtime, out_dir, settings, progress, suite, preprocessed, id_indices, sequential,
                          subsets), scored_by)


def conventions(suite: Any, seed: int) -> dict[str, str]:
    """How to read the numbers in metrics.json: the bootstrap, then each family's conventions."""
    return {
        "ci": f"{CONFIDENCE:.0%} BCa bootstrap (bias-corrected and accelerated; acceleration from a grouped "
              f"jackknife of {JACKKNIFE_GROUPS} groups), {suite.bootstrap_resamples} resamples, seed {seed}; "
              "OOD resamples ID and OOD separately, spurious resamples within each group; per-group and "
              "worst-group accuracies use exact (Clopper–Pearson) intervals; each value's method is in the "
              "ci_method table beside its ci",
        **{name: text for family in FAMILIES for name, text in family.conventions(suite.settings(family)).items()},
    }


def headline_metrics(metrics: Mapping[str, Any]) -> list[HeadlineRow]:
    """The headline numbers of a result as (key path, label, value, 95% CI), family by family."""
    return [row for family in FAMILIES for row in family.headline(metrics)]


def key_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline values as a nested mapping and the sample sizes behind them (``sizes``:
    ``lpmr_edge.suite.sizes.sample_sizes``), what `eval --json` adds to its summary."""
    summary: dict[str, Any] = {"sizes": sample_sizes(metrics)}
    for (*path, name), _, value, _ in headline_metrics(metrics):
        node = summary
        for part in path:
            node = node.setdefault(part, {})
        node[name] = value
    return summary
