"""Read result directories and pick the (runtime, precision) to deploy on each target.

A *result* is a directory written by ``lpmr-edge eval`` (``metrics.json`` + ``manifest.json``). Its
latency and size come from ``lpmr-edge bench --json-out`` files (``bench*.json``) found beside the results
or passed as inputs, matched by artifact (see ``bench_key``): the median latency of one image-tower
call at the smallest batch benchmarked, and the image tower's size (MB of 2^20 bytes, as bench). Results are grouped by (model,
target); the target comes from the evaluated artifact's manifest, and the eager torch reference counts
as target ``host``. Each result is compared with an FP32 reference (see ``reference_for``).

Picking, per (model, target):

1. a candidate is dropped when it breaks a constraint: latency (measured timings only, never emulated
   ones), image-tower size, top-1 drop against its FP32 reference (percentage points), or when it lacks
   the objective metric;
2. the best objective value wins, but candidates whose 95% CI overlaps the winner's are statistically
   tied with it, and among those the fastest measured (then the smallest image tower) is recommended;
3. the Pareto front of the remaining candidates (objective vs measured latency) lists the alternatives.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import MANIFEST_NAME, read_json

METRICS_FILE = "metrics.json"
BENCH_PATTERN = "bench*.json"  # bench JSON files found below the inputs
HOST_TARGET = "host"
REFERENCE_PRECISION = "fp32"
OOD_SCORE = "msp"  # the OOD score the tables, plots and picker use (maximum softmax probability)


@dataclass(frozen=True)
class Estimate:
    """A metric value with its 95% confidence interval (None when unknown)."""

    value: float
    ci: tuple[float, float] | None = None

    def overlaps(self, other: Estimate) -> bool:
        """True if the two CIs overlap (without CIs: only equal values overlap)."""
        if self.ci is None or other.ci is None:
            return self.value == other.value
        return self.ci[0] <= other.ci[1] and other.ci[0] <= self.ci[1]

    def to_json(self) -> dict[str, Any]:
        """JSON form: ``{"value", "ci": [low, high] | null}``."""
        return {"value": self.value, "ci": list(self.ci) if self.ci else None}


MetricReader = Callable[[Mapping[str, Any]], "Estimate | None"]


@dataclass(frozen=True)
class MetricSpec:
    """A headline metric: where it lives in ``metrics.json``, which way is better, which sets it reads."""

    key: str
    label: str
    higher_is_better: bool
    read: MetricReader
    datasets: str  # prefix of the evaluation-set names the metric depends on (besides "id")
    percent: bool = False  # a fraction shown in percent

    def better(self, value: float, other: float) -> bool:
        """True if ``value`` is strictly better than ``other``."""
        return value > other if self.higher_is_better else value < other

    def goodness(self, value: float) -> float:
        """A number that is larger for better values."""
        return value if self.higher_is_better else -value


def _estimate(node: Any, name: str) -> Estimate | None:
    if not isinstance(node, Mapping) or not isinstance(node.get(name), (int, float)):
        return None
    ci = node.get("ci", {}).get(name)
    finite = isinstance(ci, list) and len(ci) == 2 and all(isinstance(bound, (int, float)) for bound in ci)
    return Estimate(float(node[name]), (float(ci[0]), float(ci[1])) if finite else None)


def _at(*path: str) -> MetricReader:
    """Reader of ``metrics[path[0]]...[path[-1]]`` with its CI from the sibling ``ci`` table."""
    def read(metrics: Mapping[str, Any]) -> Estimate | None:
        node: Any = metrics
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, Mapping) else None
        return _estimate(node, path[-1])

    return read


def mean_estimate(estimates: Sequence[Estimate]) -> Estimate:
    """Mean of several estimates; its CI is the mean of their bounds (wider than the CI of the mean
    of independent estimates, so conservative)."""
    value = sum(estimate.value for estimate in estimates) / len(estimates)
    if any(estimate.ci is None for estimate in estimates):
        return Estimate(value)
    return Estimate(value, (sum(e.ci[0] for e in estimates) / len(estimates),  # type: ignore[index]
                            sum(e.ci[1] for e in estimates) / len(estimates)))  # type: ignore[index]


def ood_sets(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the OOD sets a result was evaluated on."""
    return sorted(metrics.get("ood", {}).get("sets", {}))


def _ood_mean(name: str) -> MetricReader:
    """Reader of an OOD metric of ``OOD_SCORE``, averaged over the OOD sets."""
    def read(metrics: Mapping[str, Any]) -> Estimate | None:
        sets = metrics.get("ood", {}).get("sets", {})
        estimates = [_estimate(sets[set_name].get(OOD_SCORE), name) for set_name in sorted(sets)]
        present = [estimate for estimate in estimates if estimate is not None]
        return mean_estimate(present) if present and len(present) == len(estimates) else None

    return read


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("top1", "top-1 accuracy", True, _at("accuracy", "top1"), "id", percent=True),
    MetricSpec("ece", "ECE", False, _at("calibration", "ece"), "id"),
    MetricSpec("nll", "NLL (nats)", False, _at("calibration", "nll"), "id"),
    MetricSpec("auroc", "OOD AUROC", True, _ood_mean("auroc"), "ood-"),
    MetricSpec("fpr95", "OOD FPR@95%TPR", False, _ood_mean("fpr_at_95_tpr"), "ood-", percent=True),
    MetricSpec("corrupted", "corrupted accuracy", True, _at("corruptions", "mean", "accuracy"), "corruption-",
               percent=True),
    MetricSpec("shifted", "shifted accuracy", True, _at("shift", "top1"), "shift", percent=True),
    MetricSpec("worst_group", "worst-group accuracy", True, _at("spurious", "worst_group"), "spurious",
               percent=True),
)
METRIC_BY_KEY = {spec.key: spec for spec in METRICS}
OBJECTIVES = {"ece": "ece", "nll": "nll", "auroc": "auroc", "fpr95": "fpr95", "accuracy": "top1",
              "worst-group": "worst_group"}


@dataclass(frozen=True)
class Timing:
    """Median latency of one image-tower call at ``batch``, from a bench JSON; emulated timings are not
    device latencies."""

    latency_ms: float
    batch: int
    emulated: bool
    source: str

    @property
    def measured_ms(self) -> float | None:
        """The latency if it was measured on the device, None if emulated."""
        return None if self.emulated else self.latency_ms


@dataclass(frozen=True)
class Result:
    """One evaluated (model, target, runtime, precision), read from a result directory."""

    directory: Path
    model: str
    model_label: str
    target: str
    runtime: str
    precision: str
    executed_precision: str
    variant: str
    metrics: Mapping[str, Estimate]
    datasets: Mapping[str, str]  # evaluation-set name -> dataset sha256
    timing: Timing | None
    size_mb: float | None
    raw: Mapping[str, Any]  # metrics.json
    manifest: Mapping[str, Any]

    @property
    def is_reference(self) -> bool:
        """True for an FP32 result, which other results are compared with."""
        return self.precision == REFERENCE_PRECISION

    @property
    def measured_latency_ms(self) -> float | None:
        """Device latency, or None when not benchmarked or only emulated."""
        return self.timing.measured_ms if self.timing else None

    def describe(self) -> dict[str, Any]:
        """JSON summary of the result's identity, cost and metrics."""
        return {"model": self.model, "target": self.target, "runtime": self.runtime, "precision": self.precision,
                "executed_precision": self.executed_precision, "variant": self.variant,
                "results_dir": str(self.directory), "size_mb": self.size_mb,
                "latency_ms": self.timing.latency_ms if self.timing else None,
                "latency_batch": self.timing.batch if self.timing else None,
                "latency_emulated": self.timing.emulated if self.timing else None,
                "metrics": {key: estimate.to_json() for key, estimate in self.metrics.items()}}


def find_inputs(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Result directories and bench JSON files, given directly or found (recursively) below folders, or
    the done jobs of a sweep database (``sweep.db[?suite=..&seed=..]``, see ``lpmr_edge.sweep.results``)."""
    from lpmr_edge.sweep.results import is_sweep_reference, sweep_inputs

    results: dict[Path, None] = {}
    benches: dict[Path, None] = {}
    for path in map(Path, paths):
        if is_sweep_reference(path):
            found_results, found_benches = sweep_inputs(path)
            results.update(dict.fromkeys(found_results))
            benches.update(dict.fromkeys(found_benches))
            continue
        if path.is_file() and path.suffix == ".json":
            benches[path.resolve()] = None
            continue
        if not path.is_dir():
            raise UserError(f"results path not found: {path}; pass result directories, folders holding them "
                            "or bench JSON files")
        visible = [p for pattern in (METRICS_FILE, BENCH_PATTERN) for p in sorted(path.rglob(pattern))
                   if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        found = [p.parent.resolve() for p in visible if p.name == METRICS_FILE]
        if not found and not any(p.name != METRICS_FILE for p in visible):
            raise UserError(f"no results under {path}: expected directories with {METRICS_FILE} "
                            "(make them with `lpmr-edge eval --out DIR`)")
        results.update(dict.fromkeys(found))
        benches.update(dict.fromkeys(p.resolve() for p in visible if p.name != METRICS_FILE))
    if not results:
        raise UserError(f"no {METRICS_FILE} among {', '.join(map(str, paths))}; pass result directories "
                        "(make them with `lpmr-edge eval --out DIR`)")
    return list(results), list(benches)


@dataclass(frozen=True)
class BenchRow:
    """One (runtime, batch) row of an ``lpmr-edge bench --json-out`` file."""

    source: str  # the artifact directory as given to bench, or "torch:<model>"
    model: str
    runtime: str
    precision: str
    tower: str
    batch: int
    median_ms: float
    tower_mb: float | None
    emulated: bool
    created: str
    file: str


def _emulated(*nodes: Any) -> bool:
    """True if any of the JSON objects says ``"emulated": true`` (as the emulated device's description does)."""
    return any(isinstance(node, Mapping) and node.get("emulated") is True for node in nodes)


def read_bench(path: Path) -> list[BenchRow]:
    """The rows of a bench JSON. A timing is emulated when the file, its machine or device, or the row
    (or the row's device / measured_on) says ``"emulated": true``."""
    bench = read_json(path, "bench JSON")
    try:
        file_emulated = _emulated(bench, bench.get("machine"), bench.get("device"))
        return [BenchRow(source=str(row["source"]), model=row["model"], runtime=row["runtime"],
                         precision=row["precision"], tower=row["tower"], batch=int(row["batch"]),
                         median_ms=float(row["median_ms"]), tower_mb=row.get("artifact_mb"),
                         emulated=file_emulated or _emulated(row, row.get("device"), row.get("measured_on")),
                         created=str(bench.get("created", "")), file=str(path))
                for row in bench["results"]]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{path} is not an `lpmr-edge bench --json-out` file (bad or missing {error}); "
                        "re-run the benchmark or leave the file out") from None


def bench_key(source: str) -> str:
    """What identifies a benchmarked runtime across machines and working directories: the artifact
    directory's ``<target>/<name>`` tail (as ``lpmr-edge export`` lays it out), or ``torch:<model>``."""
    return source if source.startswith("torch:") else "/".join(Path(source).parts[-2:])


def match_timing(model: str, runtime: str, precision: str, key: str, rows: Sequence[BenchRow]) -> BenchRow | None:
    """The image-tower bench row of a result (``key`` as ``bench_key``): newest bench file first, then the
    smallest batch."""
    matching = [row for row in rows if row.tower == "image" and (row.model, row.runtime, row.precision) ==
                (model, runtime, precision) and bench_key(row.source) == key]
    if not matching:
        return None
    newest = max(row.created for row in matching)
    return min((row for row in matching if row.created == newest), key=lambda row: row.batch)


def read_result(directory: Path, bench_rows: Sequence[BenchRow] = ()) -> Result:
    """Read one result directory (metrics.json, manifest.json) and attach its bench timing, if any."""
    directory = Path(directory)
    raw = read_json(directory / METRICS_FILE, "results metrics")
    manifest = read_json(directory / MANIFEST_NAME, "results manifest")
    try:
        artifact = manifest["runtime"].get("artifact") or {}
        request = artifact.get("request", {})
        parts = [raw["runtime"], raw["precision"], *(flag for flag, on in (
            ("dynbatch", request.get("dynamic_batch")), ("head", request.get("fuse_head"))) if on)]
        target = artifact.get("target", {}).get("name", HOST_TARGET)
        key = f"{target}/{'-'.join(parts)}" if artifact else f"torch:{raw['model']}"
        row = match_timing(raw["model"], raw["runtime"], raw["precision"], key, bench_rows)
        return Result(
            directory=directory, model=raw["model"], model_label=raw["model_label"], target=target,
            runtime=raw["runtime"], precision=raw["precision"],
            executed_precision=raw.get("executed_precision", raw["precision"]), variant=" ".join(parts),
            metrics={spec.key: value for spec in METRICS if (value := spec.read(raw["metrics"])) is not None},
            datasets={name: info.get("sha256", "") for name, info in raw.get("datasets", {"id": raw["dataset"]}).items()},
            timing=Timing(row.median_ms, row.batch, row.emulated, row.file) if row else None,
            size_mb=row.tower_mb if row else None, raw=raw, manifest=manifest)
    except (KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{directory} is not a complete lpmr-edge result (missing {error}); "
                        "re-run `lpmr-edge eval` into it") from None


def load_results(paths: Sequence[Path]) -> list[Result]:
    """Every result below ``paths`` with its timing from the bench JSON files found there or given.

    Two results for the same (model, target, variant) are an error.
    """
    result_dirs, bench_files = find_inputs(paths)
    rows = [row for path in bench_files for row in read_bench(path)]
    results = [read_result(directory, rows) for directory in result_dirs]
    seen: dict[tuple[str, str, str], Path] = {}
    for result in results:
        key = (result.model, result.target, result.variant)
        if key in seen:
            raise UserError(f"two results for {result.variant} on target {result.target}: {seen[key]} and "
                            f"{result.directory}; pass only one of them")
        seen[key] = result.directory
    return results


def group_results(results: Sequence[Result]) -> dict[tuple[str, str], list[Result]]:
    """Results by (model, target), the host's torch reference last; within a group by runtime, FP32 first."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in sorted(results, key=lambda r: (r.model, r.target == HOST_TARGET, r.target, r.runtime,
                                                 not r.is_reference, r.variant)):
        groups.setdefault((result.model, result.target), []).append(result)
    return groups


def reference_for(result: Result, results: Sequence[Result]) -> Result | None:
    """The FP32 result ``result`` is compared with (None for an FP32 result itself).

    In order: FP32 of the same model, target and runtime; FP32 of the same model and target on another
    runtime; the model's eager torch FP32 reference.
    """
    if result.is_reference:
        return None
    references = [r for r in results if r.is_reference and r.model == result.model]
    for accept in (lambda r: r.target == result.target and r.runtime == result.runtime,
                   lambda r: r.target == result.target,
                   lambda r: r.runtime == "torch"):
        matching = sorted((r for r in references if accept(r)), key=lambda r: r.variant)
        if matching:
            return matching[0]
    return None


def comparable(result: Result, reference: Result, spec: MetricSpec) -> bool:
    """True if both results read the metric from the same evaluation data (same dataset hashes)."""
    names = {name for name in (*result.datasets, *reference.datasets)
             if name == "id" or name.startswith(spec.datasets)}
    return all(result.datasets.get(name) == reference.datasets.get(name) for name in names)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when both coordinates are to be minimised."""
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 <= x and y2 <= y and (x2, y2) != (x, y) for x2, y2 in points)]


@dataclass(frozen=True)
class Constraints:
    """What the deployment must satisfy and what to optimise."""

    objective: str = "ece"
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_accuracy_drop: float | None = None  # top-1, percentage points

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective '{self.objective}'; use one of {', '.join(OBJECTIVES)}")
        for option, value in (("--max-latency-ms", self.max_latency_ms), ("--max-size-mb", self.max_size_mb),
                              ("--max-accuracy-drop", self.max_accuracy_drop)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserError(f"{option} is {value}; give a non-negative number")

    @property
    def metric(self) -> MetricSpec:
        """The objective's metric."""
        return METRIC_BY_KEY[OBJECTIVES[self.objective]]

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        return {"objective": self.objective, "max_latency_ms": self.max_latency_ms,
                "max_size_mb": self.max_size_mb, "max_accuracy_drop_pp": self.max_accuracy_drop}


def violations(result: Result, constraints: Constraints, results: Sequence[Result]) -> list[str]:
    """Why ``result`` cannot be recommended under ``constraints`` (empty when it can)."""
    problems = []
    if constraints.metric.key not in result.metrics:
        problems.append(f"no {constraints.metric.label} measured (its suite lacks it)")
    if constraints.max_latency_ms is not None:
        if result.timing is None:
            problems.append("no latency measured (run `lpmr-edge bench`)")
        elif result.timing.emulated:
            problems.append("only emulated timings, not a device latency")
        elif result.timing.latency_ms > constraints.max_latency_ms:
            problems.append(f"latency {result.timing.latency_ms:.2f} ms > {constraints.max_latency_ms:g} ms")
    if constraints.max_size_mb is not None:
        if result.size_mb is None:
            problems.append("image-tower size unknown")
        elif result.size_mb > constraints.max_size_mb:
            problems.append(f"image tower {result.size_mb:.1f} MB > {constraints.max_size_mb:g} MB")
    if constraints.max_accuracy_drop is not None and not result.is_reference:
        reference = reference_for(result, results)
        if reference is None or "top1" not in result.metrics or "top1" not in reference.metrics:
            problems.append("no FP32 top-1 to measure the accuracy drop against")
        elif not comparable(result, reference, METRIC_BY_KEY["top1"]):
            problems.append(f"{reference.variant} was evaluated on other images; re-run both with the same suite")
        else:
            drop = 100 * (reference.metrics["top1"].value - result.metrics["top1"].value)
            if drop > constraints.max_accuracy_drop:
                problems.append(f"top-1 drop {drop:.2f} pp > {constraints.max_accuracy_drop:g} pp "
                                f"(vs {reference.variant})")
    return problems


@dataclass(frozen=True)
class Candidate:
    """A result and the constraints it breaks."""

    result: Result
    violations: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """The recommendation for one (model, target)."""

    model: str
    target: str
    objective: MetricSpec
    recommended: Result | None
    reason: str
    alternatives: tuple[Result, ...]  # Pareto front of objective vs measured latency
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON form (also the ``pick --json`` output and report.json's ``recommendations``)."""
        def brief(result: Result) -> dict[str, Any]:
            estimate = result.metrics.get(self.objective.key)
            return {"runtime": result.runtime, "precision": result.precision, "variant": result.variant,
                    "results_dir": str(result.directory), "objective": estimate.to_json() if estimate else None,
                    "latency_ms": result.measured_latency_ms, "size_mb": result.size_mb}

        return {"model": self.model, "target": self.target, "objective": self.objective.key,
                "recommended": brief(self.recommended) if self.recommended else None, "reason": self.reason,
                "pareto": [brief(result) for result in self.alternatives],
                "rejected": [{**brief(c.result), "violations": list(c.violations)}
                             for c in self.candidates if c.violations]}


def format_value(spec: MetricSpec, value: float) -> str:
    """A metric value as shown to people (fractions marked ``percent`` in %)."""
    return f"{100 * value:.1f}%" if spec.percent else f"{value:.4f}"


def format_estimate(spec: MetricSpec, estimate: Estimate) -> str:
    """``value [low, high]``."""
    if estimate.ci is None:
        return format_value(spec, estimate.value)
    return f"{format_value(spec, estimate.value)} [{format_value(spec, estimate.ci[0])}, " \
           f"{format_value(spec, estimate.ci[1])}]"


def _latency_key(result: Result) -> tuple[float, float]:
    return (result.measured_latency_ms if result.measured_latency_ms is not None else math.inf,
            result.size_mb if result.size_mb is not None else math.inf)


def _tie_break(chosen: Result, tied: Sequence[Result]) -> str:
    if chosen.measured_latency_ms is not None:
        return f"fastest of the {len(tied)} statistically tied ({chosen.measured_latency_ms:.2f} ms measured)"
    if chosen.size_mb is not None:
        return f"smallest of the {len(tied)} statistically tied ({chosen.size_mb:.1f} MB; none has a measured latency)"
    return f"{len(tied)} statistically tied, none with a measured latency or size"


def _reason(spec: MetricSpec, chosen: Result, best: Result, tied: Sequence[Result], feasible: int) -> str:
    value = format_estimate(spec, chosen.metrics[spec.key])
    reason = (f"best {spec.label} of {feasible} candidate(s) meeting the constraints: {value}" if chosen is best
              else f"{spec.label} {value}, whose 95% CI overlaps the best's ({best.variant}, "
                   f"{format_estimate(spec, best.metrics[spec.key])})")
    return f"{reason}; {_tie_break(chosen, tied)}" if len(tied) > 1 else reason


def choose(model: str, target: str, group: Sequence[Result], constraints: Constraints,
           results: Sequence[Result]) -> Choice:
    """The recommendation for one (model, target) group of results."""
    spec = constraints.metric
    candidates = tuple(Candidate(result, tuple(violations(result, constraints, results))) for result in group)
    feasible = [c.result for c in candidates if not c.violations]
    if not feasible:
        closest = min(candidates, key=lambda c: (len(c.violations), *_latency_key(c.result)))
        return Choice(model, target, spec, None, f"nothing satisfies the constraints (closest: "
                      f"{closest.result.variant}: {'; '.join(closest.violations)})", (), candidates)
    best = max(feasible, key=lambda r: spec.goodness(r.metrics[spec.key].value))
    tied = [r for r in feasible if r.metrics[spec.key].overlaps(best.metrics[spec.key])]
    chosen = min(tied, key=lambda r: (*_latency_key(r), -spec.goodness(r.metrics[spec.key].value)))
    timed = [r for r in feasible if r.measured_latency_ms is not None]
    front = pareto_front([(r.measured_latency_ms, -spec.goodness(r.metrics[spec.key].value)) for r in timed])
    alternatives = tuple(sorted((timed[i] for i in front), key=_latency_key))
    return Choice(model, target, spec, chosen, _reason(spec, chosen, best, tied, len(feasible)), alternatives,
                  candidates)


def pick(results: Sequence[Result], constraints: Constraints) -> list[Choice]:
    """A recommendation (or the reason there is none) for every (model, target) with exported artifacts.

    The host's eager torch results are references, not deployments: they get no recommendation.
    """
    if not any(constraints.metric.key in result.metrics for result in results):
        raise UserError(f"no result has {constraints.metric.label} (objective '{constraints.objective}'); "
                        "evaluate with a suite that measures it (e.g. --suite quick) or pick another objective")
    return [choose(model, target, group, constraints, results)
            for (model, target), group in group_results(results).items() if target != HOST_TARGET]


class NoFeasibleChoice(UserError):
    """Nothing satisfies the constraints on some target (the CLI exits with status 3)."""


def require_recommendations(choices: Sequence[Choice]) -> None:
    """Raise NoFeasibleChoice (one line) if any target has no recommendation, UserError if there are none."""
    if not choices:
        raise UserError("the results hold no exported artifact, only the host's torch reference; export and "
                        "evaluate artifacts first (`lpmr-edge export`, then `lpmr-edge eval --artifact DIR`)")
    failed = [choice for choice in choices if choice.recommended is None]
    if failed:
        raise NoFeasibleChoice("; ".join(f"target {choice.target} ({choice.model}): {choice.reason}"
                                         for choice in failed) + "; relax the constraints")
