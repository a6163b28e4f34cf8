"""The reliability suite: run evaluation sets through a runtime, store per-sample outputs, compute metrics.

Results layout (one directory per (runtime/artifact, suite run)):
  outputs/<set>.npz   per-sample image features (float32), labels, groups, the zero-shot class
                      embeddings, the model's logit scale, runtime identity and dataset hash
  metrics.json        metric values with bootstrap CIs, settings and conventions (written atomically, last)
  manifest.json       runtime + artifact manifest, datasets, suite, seeds, tool versions
Every metric is computed from the stored outputs alone (``score_outputs``), so results produced on a
device can be scored on the host. Outputs already on disk for the same runtime identity, dataset
and classifier are reused, so a killed run resumes with the sets it had finished.

Evaluation sets: ``id`` (accuracy, calibration), ``ood-<name>`` (ID = positive class),
``corruption-<kind>-<severity>`` (a seeded subset of the ID set, ImageNet-C corruptions),
``shift`` (a deterministic shift of the ID set, or a dataset) and ``spurious`` (a group-labelled set).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.data import ImageDataset, PreprocessedSets, load_dataset, preprocess_batches
from lpmr_edge.data.shifts import CORRUPTIONS, SEVERITIES, SHIFTS, corrupt, shift
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import (
    atomic_write_bytes,
    atomic_write_json,
    machine_info,
    now_utc,
    read_json,
    sha256_json,
    tool_versions,
)
from lpmr_edge.metrics import (
    OOD_SCORES,
    accuracy_summary,
    calibration_summary,
    classification_outcomes,
    expected_calibration_error,
    fit_logit_scale,
    group_summary,
    ood_metrics,
    ood_scores,
    reliability_diagram,
)
from lpmr_edge.models import build_preprocess, build_tokenizer
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.stats import CONFIDENCE, DEFAULT_RESAMPLES, Summary, Table, seeded_rng, with_ci
from lpmr_edge.zeroshot import class_embeddings, cosine_similarities

OUTPUTS_DIR = "outputs"
METRICS_FILE = "metrics.json"
ID_SET = "id"
SHIFT_SET = "shift"
SPURIOUS_SET = "spurious"
ID_POSITIVE = "in-distribution is the positive class; every score is higher for more in-distribution samples"

Progress = Callable[[str, int], typing.ContextManager[Callable[[int], None]]]


# ----------------------------------------------------------------------------- suite definition

@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration on the ID set; ``logit_scale`` is "model" (the model's own) or a number (e.g. 100)."""

    bins: int = 15
    coverages: tuple[float, ...] = (0.8, 0.9, 0.95)
    logit_scale: str | float = "model"
    fit_temperature: bool = True
    fit_fraction: float = 0.2


@dataclass(frozen=True)
class OodConfig:
    """OOD detection of each set against the ID set."""

    sets: tuple[str, ...] = ("digits", "textiles")
    mcm_temperature: float = 1.0


@dataclass(frozen=True)
class CorruptionConfig:
    """ImageNet-C corruptions of a seeded subset of ``images`` ID images."""

    kinds: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise")
    severities: tuple[int, ...] = SEVERITIES
    images: int = 1000


@dataclass(frozen=True)
class ShiftConfig:
    """Covariate shift: a built-in shift of the ID set (``rotate-scale``, ``invert``) or a dataset."""

    set: str = "rotate-scale"


@dataclass(frozen=True)
class SpuriousConfig:
    """Worst-group accuracy on a group-labelled set (``fmnist-colour``, ``waterbirds:PATH``)."""

    set: str = "fmnist-colour"


@dataclass(frozen=True)
class SuiteConfig:
    """Which families run on which sets. A family without a table is skipped (accuracy and calibration always run)."""

    name: str = "basic"
    id: str = "fmnist-test"
    limit: int | None = None
    bootstrap_resamples: int = DEFAULT_RESAMPLES
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    ood: OodConfig | None = None
    corruptions: CorruptionConfig | None = None
    shift: ShiftConfig | None = None
    spurious: SpuriousConfig | None = None


BUILTIN_SUITES = {
    "basic": SuiteConfig(),
    "quick": SuiteConfig(name="quick", limit=2000, ood=OodConfig(), corruptions=CorruptionConfig(images=200),
                         shift=ShiftConfig(), spurious=SpuriousConfig()),
    "full": SuiteConfig(name="full", ood=OodConfig(), corruptions=CorruptionConfig(kinds=tuple(CORRUPTIONS)),
                        shift=ShiftConfig(), spurious=SpuriousConfig()),
}


def _describe_type(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe_type(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return names.get(hint, f"a [{hint.__name__}] table")


def _parse_value(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:
            return _parse_value(value, options[0], where)
        for option in options:
            with contextlib.suppress(UserError):
                return _parse_value(value, option, where)
        raise UserError(f"{where} must be {' or '.join(map(_describe_type, options))}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return _parse_table(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise UserError(f"{where} must be {_describe_type(hint)}, got {value!r}")
        return tuple(_parse_value(item, typing.get_args(hint)[0], f"{where}[{i}]") for i, item in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type(value) is hint:
        return value
    raise UserError(f"{where} must be {_describe_type(hint)}, got {value!r}")


def _is_table(hint: Any) -> bool:
    return any(dataclasses.is_dataclass(option) for option in (hint, *typing.get_args(hint)))


def _parse_table(cls: type, table: Any, where: str) -> Any:
    """``where``: "" for the top level, "[name]" for a table."""
    if not isinstance(table, Mapping):
        raise UserError(f"{where} must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise UserError(f"unknown key '{unknown[0]}' in {where or 'the top level'}; valid keys: {', '.join(hints)}")
    return cls(**{key: _parse_value(value, hints[key], f"[{key}]" if _is_table(hints[key]) else f"{where} {key}".strip())
                  for key, value in table.items()})


def _check_suite(suite: SuiteConfig) -> None:
    calibration, ood, corruptions = suite.calibration, suite.ood, suite.corruptions
    rules = (
        (suite.limit is None or suite.limit >= 1, "limit must be at least 1"),
        (suite.bootstrap_resamples >= 10, "bootstrap_resamples must be at least 10"),
        (calibration.bins >= 1, "[calibration] bins must be at least 1"),
        (all(0 < coverage <= 1 for coverage in calibration.coverages), "[calibration] coverages must be in (0, 1]"),
        (calibration.logit_scale == "model" or (isinstance(calibration.logit_scale, float)
                                                and calibration.logit_scale > 0),
         '[calibration] logit_scale must be "model" or a positive number such as 100'),
        (0 < calibration.fit_fraction < 1, "[calibration] fit_fraction must be between 0 and 1"),
        (ood is None or (ood.sets and ood.mcm_temperature > 0),
         "[ood] needs at least one set in sets and a positive mcm_temperature"),
        (corruptions is None or set(corruptions.kinds) <= set(CORRUPTIONS),
         f"[corruptions] kinds must be among {', '.join(CORRUPTIONS)}"),
        (corruptions is None or (corruptions.kinds and corruptions.severities
                                 and set(corruptions.severities) <= set(SEVERITIES) and corruptions.images >= 1),
         "[corruptions] needs kinds, severities between 1 and 5 and images >= 1"),
    )
    for holds, problem in rules:
        if not holds:
            raise UserError(problem)


def suite_from_mapping(data: Mapping[str, Any], source: str) -> SuiteConfig:
    """Build and validate a suite from a mapping (a parsed TOML file or a stored ``metrics.json`` entry)."""
    try:
        suite = _parse_table(SuiteConfig, data, "")
        _check_suite(suite)
    except UserError as error:
        raise UserError(f"suite {source}: {error}; fix the suite definition") from None
    return suite


def load_suite(spec: str) -> SuiteConfig:
    """A built-in suite (basic, quick, full) or a suite TOML file."""
    if spec in BUILTIN_SUITES:
        return BUILTIN_SUITES[spec]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"unknown suite '{spec}'; use {', '.join(BUILTIN_SUITES)} or a path to a suite .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"suite {path} is not valid TOML ({error}); fix the syntax") from None
    return suite_from_mapping({"name": path.stem, **data}, str(path))


# ----------------------------------------------------------------------------- evaluation sets

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


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: the images and the dataset whose classes make the zero-shot head."""

    name: str
    dataset: ImageDataset
    classifier: ImageDataset
    id_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def ood_set_name(dataset: str) -> str:
    """Outputs name of an OOD set."""
    return f"ood-{_slug(dataset)}"


def corruption_set_name(kind: str, severity: int) -> str:
    """Outputs name of a corrupted set."""
    return f"corruption-{kind}-{severity}"


def corruption_positions(id_size: int, images: int, seed: int) -> np.ndarray:
    """The seeded subset of ID positions every corruption is applied to (sorted)."""
    return np.sort(seeded_rng(seed, "corruption-subset").permutation(id_size)[:images])


def _labelled(dataset: ImageDataset, role: str) -> ImageDataset:
    if not dataset.class_names or np.any(dataset.labels < 0):
        raise UserError(f"the {role} set '{dataset.name}' has no class labels; use a labelled set "
                        "(fmnist-test, a class-folder, waterbirds:PATH)")
    return dataset


def plan_sets(suite: SuiteConfig, seed: int, image_size: int | None = None,
              skip_bad_images: bool = False) -> list[EvalSet]:
    """The evaluation sets of a suite, each capped at ``suite.limit`` images."""
    def load(name: str) -> ImageDataset:
        return load_dataset(name, skip_bad_images=skip_bad_images).head(suite.limit)

    id_set = _labelled(load(suite.id), "ID")
    sets = [EvalSet(ID_SET, id_set, id_set)]
    if suite.ood:
        sets += [EvalSet(ood_set_name(name), load(name), id_set) for name in suite.ood.sets]
    if suite.corruptions:
        positions = corruption_positions(len(id_set), suite.corruptions.images, seed)
        sets += [EvalSet(corruption_set_name(kind, severity),
                         corrupt(id_set, kind, severity, seed, image_size).subset(positions), id_set, positions)
                 for kind in suite.corruptions.kinds for severity in suite.corruptions.severities]
    if suite.shift:
        shifted = (shift(id_set, suite.shift.set, seed) if suite.shift.set in SHIFTS
                   else _labelled(load(suite.shift.set), "shifted"))
        sets.append(EvalSet(SHIFT_SET, shifted, shifted))
    if suite.spurious:
        grouped = _labelled(load(suite.spurious.set), "spurious-correlation")
        if grouped.groups is None:
            raise UserError(f"the spurious-correlation set '{suite.spurious.set}' has no group labels; use "
                            "fmnist-colour or waterbirds:PATH")
        sets.append(EvalSet(SPURIOUS_SET, grouped, grouped))
    return sets


# ----------------------------------------------------------------------------- per-sample outputs

@dataclass(frozen=True)
class SetOutputs:
    """Stored per-sample outputs of one evaluation set."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    id_index: np.ndarray
    class_embeddings: np.ndarray
    model_logit_scale: float
    runtime_identity: str
    dataset_sha256: str
    classifier_key: str

    def cosine(self) -> np.ndarray:
        """Cosine similarities ``[N,C]`` to the class embeddings."""
        return cosine_similarities(self.features, self.class_embeddings)

    def outcomes(self, logit_scale: float) -> dict[str, np.ndarray]:
        """Per-sample classification outcomes at a logit scale."""
        return classification_outcomes(logit_scale * self.cosine(), self.labels)


def outputs_path(out_dir: Path, set_name: str) -> Path:
    """Where a set's per-sample outputs are stored."""
    return Path(out_dir) / OUTPUTS_DIR / f"{set_name}.npz"


def load_outputs(out_dir: Path, set_name: str) -> SetOutputs:
    """Read one set's stored outputs."""
    path = outputs_path(out_dir, set_name)
    if not path.is_file():
        raise UserError(f"{path} is missing; run `lpmr-edge eval` with the same suite into {out_dir} first")
    names = [f.name for f in dataclasses.fields(SetOutputs)]
    with np.load(path) as stored:
        if not set(names) <= set(stored.files):
            raise UserError(f"{path} was written by an older lpmr-edge; delete it and re-run `lpmr-edge eval`")
        return SetOutputs(**{name: stored[name] if stored[name].ndim else stored[name].item() for name in names})


def _classifier_key(dataset: ImageDataset) -> str:
    return sha256_json({"classes": list(dataset.class_names), "templates": list(dataset.templates)})


def collect_outputs(runtime: Runtime, eval_set: EvalSet, embeddings: np.ndarray, batches: Iterable[np.ndarray],
                    out_dir: Path, on_batch: Callable[[int], None] | None = None) -> bool:
    """Image features of a set through the runtime, stored unless already on disk for the same inputs;
    ``batches`` (read only when needed) are the set's preprocessed images in order.

    Returns whether it ran the set (False: reused the stored outputs).
    """
    path = outputs_path(out_dir, eval_set.name)
    key = {"runtime_identity": runtime.identity, "dataset_sha256": eval_set.dataset.sha256,
           "classifier_key": _classifier_key(eval_set.classifier)}
    if path.is_file():
        with np.load(path) as stored:
            if all(name in stored.files and str(stored[name]) == value for name, value in key.items()):
                return False
    chunks = []
    for batch in batches:
        chunks.append(runtime.image_features(batch))
        if on_batch:
            on_batch(len(batch))
    handle = io.BytesIO()
    np.savez_compressed(handle, features=np.concatenate(chunks).astype(np.float32), labels=eval_set.dataset.labels,
                        groups=eval_set.dataset.groups if eval_set.dataset.groups is not None else np.zeros(0),
                        id_index=eval_set.id_index, class_embeddings=embeddings,
                        model_logit_scale=np.float64(runtime.model_info["logit_scale"]),
                        **{name: np.str_(value) for name, value in key.items()})
    atomic_write_bytes(path, handle.getvalue())
    return True


# ----------------------------------------------------------------------------- metric families

@dataclass(frozen=True)
class Probe:
    """A summary function and the tables it summarises, rows in sample order (what a bootstrap resamples).

    ``sort_key`` names a column the summary sorts by; tables are pre-sorted by it (descending)
    before bootstrapping so every resample is already sorted.
    """

    summary: Summary
    tables: list[Table]
    sort_key: str | None = None

    def bootstrap_tables(self) -> list[Table]:
        """The tables, each sorted by ``sort_key`` (highest first) where it has that column."""
        if self.sort_key is None:
            return self.tables
        return [sorted_rows(table, table[self.sort_key]) if self.sort_key in table else table
                for table in self.tables]

    def with_ci(self, n_resamples: int, seed: int) -> dict[str, Any]:
        """Values with bootstrap CIs."""
        return with_ci(self.summary, self.bootstrap_tables(), n_resamples, seed)


def sorted_rows(table: Table, key: np.ndarray) -> dict[str, np.ndarray]:
    """The table's rows ordered by ``key``, highest first, ties in sample order."""
    order = np.argsort(-key, kind="stable")
    return {name: column[order] for name, column in table.items()}


def resolve_logit_scale(setting: str | float, model_logit_scale: float) -> float:
    """The logit scale a suite uses: the model's own ("model") or the fixed number given."""
    return float(model_logit_scale) if setting == "model" else float(setting)


def _classification_summary(calibration: CalibrationConfig) -> Summary:
    return lambda tables: {**accuracy_summary(tables[0]),
                           **calibration_summary(tables[0], calibration.bins, calibration.coverages)}


def classification_probe(outcomes: Table, calibration: CalibrationConfig) -> Probe:
    """Accuracy and calibration of one labelled set."""
    return Probe(_classification_summary(calibration), [outcomes], "confidence")


def ood_probe(id_scores: np.ndarray, ood_scores_: np.ndarray) -> Probe:
    """AUROC, FPR@95%TPR, AUPR-in/-out for one score; ID and OOD resampled separately."""
    return Probe(lambda tables: ood_metrics(tables[0]["score"], tables[1]["score"]),
                 [{"score": id_scores}, {"score": ood_scores_}], "score")


def corruption_probe(clean: Table, corrupted: Mapping[tuple[str, int], Table], bins: int) -> Probe:
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

    return Probe(summary, [table])


def shift_probe(shifted: Table, in_distribution: Table, calibration: CalibrationConfig) -> Probe:
    """Accuracy and calibration on the shifted set, and the accuracy lost relative to the ID set."""
    classification = _classification_summary(calibration)

    def summary(tables: Sequence[Table]) -> dict[str, float]:
        values = classification(tables[:1])
        id_accuracy = float(np.mean(tables[1]["correct"]))
        return {**values, "accuracy_drop": id_accuracy - values["top1"],
                "relative_accuracy": values["top1"] / id_accuracy if id_accuracy else np.nan}

    return Probe(summary, [shifted, {"correct": in_distribution["correct"]}], "confidence")


def group_probe(outcomes: Table, groups: np.ndarray) -> Probe:
    """Worst-group, average-group and overall accuracy; resampled within each group (groups ascending)."""
    def summary(tables: Sequence[Table]) -> dict[str, float]:
        correct = [table["correct"] for table in tables]
        return {**group_summary(correct), "accuracy": float(np.mean(np.concatenate(correct)))}

    return Probe(summary, [{"correct": outcomes["correct"][groups == group]} for group in np.unique(groups)])


def suite_set_names(suite: SuiteConfig) -> list[str]:
    """Outputs names of every evaluation set of a suite."""
    names = [ID_SET]
    if suite.ood:
        names += [ood_set_name(name) for name in suite.ood.sets]
    if suite.corruptions:
        names += [corruption_set_name(kind, severity)
                  for kind in suite.corruptions.kinds for severity in suite.corruptions.severities]
    if suite.shift:
        names.append(SHIFT_SET)
    if suite.spurious:
        names.append(SPURIOUS_SET)
    return names


def load_suite_outputs(out_dir: Path, suite: SuiteConfig) -> dict[str, SetOutputs]:
    """Stored outputs of every set of a suite."""
    return {name: load_outputs(out_dir, name) for name in suite_set_names(suite)}


@dataclass(frozen=True)
class SuiteProbes:
    """Every family's probe for one result; a family the suite lacks is None (or empty)."""

    logit_scale: float
    classification: Probe
    ood: dict[str, dict[str, Probe]]
    corruptions: Probe | None
    shift: Probe | None
    spurious: Probe | None


def _corruption_from_outputs(outputs: Mapping[str, SetOutputs], config: CorruptionConfig, id_outcomes: Table,
                             logit_scale: float, bins: int) -> Probe:
    corrupted = {(kind, severity): outputs[corruption_set_name(kind, severity)]
                 for kind in config.kinds for severity in config.severities}
    positions = next(iter(corrupted.values())).id_index
    if any(not np.array_equal(positions, other.id_index) for other in corrupted.values()):
        raise UserError("the stored corrupted sets were computed on different ID subsets; delete the "
                        f"{OUTPUTS_DIR}/corruption-* files and re-run the suite")
    clean = {name: column[positions] for name, column in id_outcomes.items()}
    return corruption_probe(clean, {cell: stored.outcomes(logit_scale) for cell, stored in corrupted.items()}, bins)


def suite_probes(outputs: Mapping[str, SetOutputs], suite: SuiteConfig) -> SuiteProbes:
    """The probes of every family of a suite from its stored outputs."""
    in_distribution = outputs[ID_SET]
    logit_scale = resolve_logit_scale(suite.calibration.logit_scale, in_distribution.model_logit_scale)
    id_outcomes = in_distribution.outcomes(logit_scale)
    ood: dict[str, dict[str, Probe]] = {}
    if suite.ood:
        id_scores = ood_scores(in_distribution.cosine(), logit_scale, suite.ood.mcm_temperature)
        for name in suite.ood.sets:
            scores = ood_scores(outputs[ood_set_name(name)].cosine(), logit_scale, suite.ood.mcm_temperature)
            ood[name] = {score: ood_probe(id_scores[score], scores[score]) for score in OOD_SCORES}
    grouped = outputs.get(SPURIOUS_SET)
    return SuiteProbes(
        logit_scale=logit_scale,
        classification=classification_probe(id_outcomes, suite.calibration),
        ood=ood,
        corruptions=_corruption_from_outputs(outputs, suite.corruptions, id_outcomes, logit_scale,
                                             suite.calibration.bins) if suite.corruptions else None,
        shift=shift_probe(outputs[SHIFT_SET].outcomes(logit_scale), id_outcomes, suite.calibration)
        if suite.shift else None,
        spurious=group_probe(grouped.outcomes(logit_scale), grouped.groups) if suite.spurious else None,
    )


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


def _split_keys(values: Mapping[str, Any], keys: Sequence[str], keep: bool) -> dict[str, Any]:
    """The values (and their CIs) whose names are (``keep``) or are not in ``keys``."""
    chosen = {name: value for name, value in values.items() if name != "ci" and (name in keys) == keep}
    return {**chosen, "ci": {name: values["ci"][name] for name in chosen}}


def score_outputs(out_dir: Path, suite: SuiteConfig, seed: int) -> dict[str, Any]:
    """All metric families of a suite, with bootstrap CIs, from the outputs stored in ``out_dir``."""
    outputs = load_suite_outputs(out_dir, suite)
    probes = suite_probes(outputs, suite)
    resamples, calibration = suite.bootstrap_resamples, suite.calibration
    id_n = len(outputs[ID_SET].labels)
    classification = probes.classification.with_ci(resamples, seed)
    id_outcomes = probes.classification.tables[0]
    accuracy_keys = ("top1", "top5", "balanced_accuracy")
    metrics: dict[str, Any] = {
        "accuracy": {**_split_keys(classification, accuracy_keys, keep=True), "n": id_n},
        "calibration": {
            **_split_keys(classification, accuracy_keys, keep=False), "n": id_n, "bins": calibration.bins,
            "logit_scale": {"setting": calibration.logit_scale, "value": probes.logit_scale},
            "reliability_diagram": reliability_diagram(id_outcomes["confidence"], id_outcomes["correct"],
                                                       calibration.bins)},
    }
    if calibration.fit_temperature:
        metrics["calibration"]["fitted_temperature"] = _fitted_temperature(outputs[ID_SET], calibration,
                                                                           resamples, seed)
    if suite.ood:
        metrics["ood"] = {"positive_class": ID_POSITIVE, "scores": list(OOD_SCORES), "id_n": id_n,
                          "logit_scale": probes.logit_scale, "mcm_temperature": suite.ood.mcm_temperature,
                          "sets": {name: {"n": len(outputs[ood_set_name(name)].labels),
                                          **{score: probe.with_ci(resamples, seed) for score, probe in by_score.items()}}
                                   for name, by_score in probes.ood.items()}}
    if probes.corruptions:
        metrics["corruptions"] = {"images": len(probes.corruptions.tables[0]["clean_correct"]),
                                  "kinds": list(suite.corruptions.kinds),
                                  "severities": list(suite.corruptions.severities),
                                  **_nest(probes.corruptions.with_ci(resamples, seed))}
    if probes.shift:
        metrics["shift"] = {"set": suite.shift.set, "n": len(outputs[SHIFT_SET].labels),
                            **probes.shift.with_ci(resamples, seed)}
    if probes.spurious:
        group_ids = np.unique(outputs[SPURIOUS_SET].groups)
        metrics["spurious"] = {
            "set": suite.spurious.set, "n": len(outputs[SPURIOUS_SET].labels),
            **probes.spurious.with_ci(resamples, seed),
            "groups": {str(group): {"n": len(table["correct"]), "accuracy": float(np.mean(table["correct"]))}
                       for group, table in zip(group_ids, probes.spurious.tables)}}
    return metrics


def _fitted_temperature(in_distribution: SetOutputs, calibration: CalibrationConfig, resamples: int,
                        seed: int) -> dict[str, Any]:
    """Calibration at a logit scale fitted (min NLL) on a seeded held-out part of the ID set, scored on the rest."""
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


# ----------------------------------------------------------------------------- running a suite

def apply_overrides(suite: SuiteConfig, settings: EvalSettings) -> SuiteConfig:
    """The suite with the run's ID set, image cap and logit scale when the settings give them."""
    changes: dict[str, Any] = {}
    if settings.dataset is not None:
        changes["id"] = settings.dataset
    if settings.limit is not None:
        changes["limit"] = min(settings.limit, suite.limit or settings.limit)
    if settings.logit_scale is not None:
        changes["calibration"] = replace(suite.calibration, logit_scale=settings.logit_scale)
    updated = replace(suite, **changes)
    try:
        _check_suite(updated)
    except UserError as error:
        raise UserError(f"{error}; fix the command-line option") from None
    return updated


def progress_task(progress: Progress | None, label: str, total: int) -> typing.ContextManager[Any]:
    """A task of ``progress`` (its context yields ``advance(n)``), or a context yielding None without one."""
    return progress(label, total) if progress else contextlib.nullcontext()


def evaluate(runtime: Runtime, out_dir: Path, settings: EvalSettings = EvalSettings(),
             progress: Progress | None = None, suite: SuiteConfig | None = None,
             preprocessed: PreprocessedSets | None = None) -> dict[str, Any]:
    """Run a suite (``suite``, else ``settings.suite``) through ``runtime``; write and return ``metrics.json``.

    ``preprocessed`` keeps the preprocessed images for later evaluations in this process (sweep workers).
    """
    out_dir = Path(out_dir)
    suite = apply_overrides(suite or load_suite(settings.suite), settings)
    model_info = runtime.model_info
    sets = plan_sets(suite, settings.seed, model_info["image_size"], settings.skip_bad_images)
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
    metrics = score_outputs(out_dir, suite, settings.seed)
    description = runtime.describe()
    datasets = {eval_set.name: eval_set.dataset.describe() for eval_set in sets}
    created = now_utc()
    result = {
        "model": model_info["spec"], "model_label": model_info["label"], "runtime": runtime.name,
        "precision": description["precision"], "executed_precision": description["executed_precision"],
        "n": len(sets[0].dataset), "dataset": datasets[ID_SET], "datasets": datasets,
        "settings": asdict(settings), "suite": asdict(suite), "logit_scale": model_info["logit_scale"],
        "conventions": conventions(suite, settings.seed), "metrics": metrics, "created": created,
    }
    atomic_write_json(out_dir / "manifest.json", {"runtime": description, "dataset": datasets[ID_SET],
                                                  "datasets": datasets, "suite": asdict(suite),
                                                  "settings": asdict(settings), "tool_versions": tool_versions(),
                                                  "machine": machine_info(), "created": created})
    atomic_write_json(out_dir / METRICS_FILE, result)
    return result


def conventions(suite: SuiteConfig, seed: int) -> dict[str, str]:
    """How to read the numbers in metrics.json."""
    return {
        "ci": f"{CONFIDENCE:.0%} percentile bootstrap, {suite.bootstrap_resamples} resamples, seed {seed}; "
              "OOD resamples ID and OOD separately, spurious resamples within each group",
        "ood": ID_POSITIVE,
        "calibration": f"top-1 confidence, {suite.calibration.bins} equal-width bins (ece, mce) and equal-mass "
                       "bins (ece_equal_mass); NLL in nats; Brier summed over classes",
        "logit_scale": "logits = logit_scale * cosine similarity (softmax temperature = 1 / logit_scale)",
        "corruptions": "ImageNet-C parameters; relative_accuracy = corrupted / clean accuracy on the same images",
    }


def read_result(result_dir: Path) -> dict[str, Any]:
    """A result directory's metrics.json."""
    return read_json(Path(result_dir) / METRICS_FILE, "results metrics")


def stored_suite(result: Mapping[str, Any], result_dir: Path) -> SuiteConfig:
    """The suite a stored result was computed with."""
    if "suite" not in result:
        raise UserError(f"{result_dir} was written before suites existed; re-run `lpmr-edge eval` into it")
    return suite_from_mapping(result["suite"], f"stored in {result_dir}")


def headline_metrics(metrics: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str, float, list]]:
    """The headline numbers of a result as (key path, label, value, 95% CI)."""
    def entry(key: tuple[str, ...], label: str, node: Mapping[str, Any], name: str) -> tuple:
        return key, label, node[name], node["ci"][name]

    rows = [entry(("top1",), "top-1 accuracy", metrics["accuracy"], "top1"),
            entry(("top5",), "top-5 accuracy", metrics["accuracy"], "top5"),
            *(entry((name,), label, metrics["calibration"], name)
              for name, label in (("ece", "ECE"), ("nll", "NLL"), ("brier", "Brier")))]
    for name, by_score in metrics.get("ood", {}).get("sets", {}).items():
        rows += [entry(("ood_auroc", name, score), f"OOD AUROC {name} ({score})", by_score[score], "auroc")
                 for score in OOD_SCORES]
    if "corruptions" in metrics:
        rows += [entry(("corrupted_accuracy",), "corrupted accuracy (mean)", metrics["corruptions"]["mean"],
                       "accuracy"),
                 entry(("corrupted_relative_accuracy",), "corrupted / clean accuracy (mean)",
                       metrics["corruptions"]["mean"], "relative_accuracy")]
    if "shift" in metrics:
        rows.append(entry(("shifted_accuracy",), f"shifted accuracy ({metrics['shift']['set']})", metrics["shift"],
                          "top1"))
    if "spurious" in metrics:
        rows += [entry(("worst_group_accuracy",), "worst-group accuracy", metrics["spurious"], "worst_group"),
                 entry(("average_group_accuracy",), "average-group accuracy", metrics["spurious"], "average_group")]
    return rows


def key_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline values as a nested mapping (what `eval --json` adds to its summary)."""
    summary: dict[str, Any] = {}
    for (*path, name), _, value, _ in headline_metrics(metrics):
        node = summary
        for part in path:
            node = node.setdefault(part, {})
        node[name] = value
    return summary
