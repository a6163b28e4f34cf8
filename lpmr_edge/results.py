"""Result directories as analysis input: the results model read by pick, report, compare and sweep.

A *result* is a directory written by ``lpmr-edge eval`` (``metrics.json`` + ``manifest.json``, see
``lpmr_edge.suite.outputs``). Its latency and size come from ``lpmr-edge bench --json-out`` files
(``bench*.json``) found beside the results or passed as inputs, matched by artifact (see ``bench_key``):
the median latency of one image-tower call at the smallest batch benchmarked, and the image tower's size
(MB of 2^20 bytes, as bench). Results are grouped by (model, target); the target comes from the evaluated
artifact's manifest, and the eager torch reference counts as target ``host``. Each result is compared
with an FP32 reference (see ``reference_for``). Its metrics are the registered families' ``MetricSpec``s
(``lpmr_edge.suite.families.METRICS``), read by ``read_estimate``.

A metric that is the mean over several instances (the OOD sets) reads the interval of the joint bootstrap of
the mean (``JOINT_BOOTSTRAP``: the ID images drawn once for all sets, as ``compare`` resamples them) that the
suite stored beside it (``MetricSpec.mean_at``). A result without it (written before the suite stored it)
gets, from the stored tree alone, the conservative ``bonferroni_mean`` interval (``BONFERRONI_MEAN``), which
``lpmr_edge.samples.with_joint_intervals`` replaces with the joint one where the per-sample outputs are
stored. Each ``Estimate`` names its interval's ``method``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.special import ndtri

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import MANIFEST_NAME, read_json
from lpmr_edge.stats import CONFIDENCE
from lpmr_edge.suite.families import METRICS, MetricSpec
from lpmr_edge.suite.families.base import JOINT_BOOTSTRAP, MEAN, WORST
from lpmr_edge.suite.families.ood import MEAN_OF_SETS
from lpmr_edge.suite.outputs import METRICS_FILE
from lpmr_edge.suite.sizes import sample_sizes

BENCH_PATTERN = "bench*.json"  # bench JSON files found below the inputs
HOST_TARGET = "host"
REFERENCE_PRECISION = "fp32"
BONFERRONI_MEAN = ("bonferroni: mean of the sets' bounds, each widened from 95% to 1 - 0.05/k (normal approximation); "
                   "no per-sample outputs for a joint bootstrap")

@dataclass(frozen=True)
class Estimate:
    """A metric value with its 95% confidence interval (None when unknown)."""

    value: float
    ci: tuple[float, float] | None = None
    n: int | None = None  # the samples it was computed on, when the result records them
    status: str | None = None  # why the value must not be used (e.g. "not enough data"); None when usable
    method: str | None = None  # how the CI was computed (metrics.json's ci_method), when recorded

    def overlaps(self, other: Estimate) -> bool:
        """True if the two CIs overlap (without CIs: only equal values overlap)."""
        if self.ci is None or other.ci is None:
            return self.value == other.value
        return self.ci[0] <= other.ci[1] and other.ci[0] <= self.ci[1]

    def to_json(self) -> dict[str, Any]:
        """JSON form: ``{"value", "ci": [low, high] | null}`` and ``n``, ``status``, ``ci_method`` when known."""
        return {"value": self.value, "ci": list(self.ci) if self.ci else None,
                **({"n": self.n} if self.n is not None else {}),
                **({"status": self.status} if self.status is not None else {}),
                **({"ci_method": self.method} if self.method is not None else {})}

def _estimate(node: Any, name: str) -> Estimate | None:
    if not isinstance(node, Mapping) or not isinstance(node.get(name), (int, float)):
        return None
    ci = node.get("ci", {}).get(name)
    finite = isinstance(ci, list) and len(ci) == 2 and all(isinstance(bound, (int, float)) for bound in ci)
    n = node.get("n")
    status = node.get("status", {}).get(name)
    method = node.get("ci_method", {}).get(name)
    return Estimate(float(node[name]), (float(ci[0]), float(ci[1])) if finite else None,
                    n if isinstance(n, int) and not isinstance(n, bool) else None,
                    status if isinstance(status, str) and status != "ok" else None,
                    method if isinstance(method, str) else None)

def bonferroni_mean(estimates: Sequence[Estimate], confidence: float = CONFIDENCE) -> Estimate:
    """Mean of k estimates with a conservative interval from their own ``confidence`` intervals alone (for
    results without the per-sample outputs a joint bootstrap needs; ``BONFERRONI_MEAN``).

    Each interval's two halves (estimate to bound) are widened by ndtri(1 - alpha/2k) / ndtri(1 - alpha/2),
    alpha = 1 - confidence, to approximate its 1 - alpha/k interval (a bound is never moved inwards); the
    mean's interval is the mean of the widened bounds. When every widened interval covers its instance,
    which by Bonferroni happens with probability >= ``confidence`` whatever the instances' dependence (the
    shared ID images), the mean of the bounds covers the mean. No interval if an instance has none.
    """
    value = sum(estimate.value for estimate in estimates) / len(estimates)
    if any(estimate.ci is None for estimate in estimates):
        return Estimate(value)
    alpha = 1.0 - confidence
    widen = float(ndtri(1.0 - alpha / (2 * len(estimates))) / ndtri(1.0 - alpha / 2))
    lows = [min(e.ci[0], e.value - widen * (e.value - e.ci[0])) for e in estimates]  # type: ignore[index]
    highs = [max(e.ci[1], e.value + widen * (e.ci[1] - e.value)) for e in estimates]  # type: ignore[index]
    return Estimate(value, (sum(lows) / len(lows), sum(highs) / len(highs)), method=BONFERRONI_MEAN)

def joint_mean(spec: MetricSpec, metrics: Mapping[str, Any]) -> bool:
    """True if ``spec`` is a mean over several instances of a result (``metrics.json`` tree): its interval
    and its paired delta come from one joint bootstrap of all instances."""
    return spec.instances is not None and spec.combine == MEAN and len(spec.instances(metrics)) > 1

def paired_keys(spec: MetricSpec, metrics: Mapping[str, Any]) -> list[str]:
    """The ``compare`` delta keys of a metric, which are also its per-sample values (``lpmr_edge.samples``):
    one per instance, or for a mean over several instances (``joint_mean``) the one key of their mean
    bootstrapped jointly (``<family>.mean.<score>.<value>``, the ID images drawn once for all sets)."""
    if joint_mean(spec, metrics):
        return [spec.paired.format(set=MEAN_OF_SETS)]
    return spec.expand(spec.paired, metrics)

def _node(metrics: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = metrics
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def read_estimate(spec: MetricSpec, metrics: Mapping[str, Any]) -> Estimate | None:
    """A metric's estimate from a ``metrics.json`` tree: the value at ``spec.at`` with its CI, or the mean over
    the spec's instances (as the suite stored it at ``spec.mean_at`` from one joint bootstrap, else
    ``bonferroni_mean``), or the worst instance's estimate for a ``combine = WORST`` spec (None when the
    result lacks it, or lacks it for any instance)."""
    if spec.mean_at and joint_mean(spec, metrics):
        stored = _estimate(_node(metrics, spec.mean_at[:-1]), spec.mean_at[-1])
        if stored is not None and stored.method == JOINT_BOOTSTRAP:
            return stored
    estimates = []
    for path in spec.expand(spec.at, metrics):
        estimates.append(_estimate(_node(metrics, path[:-1]), path[-1]))
    present = [estimate for estimate in estimates if estimate is not None]
    if not present or len(present) != len(estimates):
        return None
    if spec.instances is None or len(present) == 1:
        return present[0]
    if spec.combine == WORST:
        return min(present, key=lambda estimate: spec.goodness(estimate.value))
    return bonferroni_mean(present)


def size_text(spec: MetricSpec, sizes: Mapping[str, Any]) -> str | None:
    """How many samples a metric was computed on, as people read it (None when unknown)."""
    family = spec.at[0] if spec.at else ""
    if family in ("accuracy", "calibration") and "id" in sizes:
        of = sizes["id"]["of"]
        return f"n={sizes['id']['n']}" + (f" of {of}" if of and of != sizes["id"]["n"] else "")
    if family == "ood" and "ood" in sizes and "id" in sizes:
        return f"ID {sizes['id']['n']} vs " + ", ".join(f"{name} {n}" for name, n in sizes["ood"].items())
    if family == "corruptions" and "corruptions" in sizes:
        cells = sizes["corruptions"]
        return f"{cells['images']} images × {cells['kinds']} kinds × {cells['severities']} severities"
    if family == "shift" and "shift" in sizes:
        return f"n={sizes['shift']['n']}"
    if family == "spurious" and "spurious" in sizes:
        grouped = sizes["spurious"]
        smallest = grouped.get("smallest")
        return (f"n={grouped['n']} in {grouped['groups']} groups" +
                (f", smallest {smallest['n']}" if smallest else "") +
                (f", worst {grouped['worst']['name']} (n={grouped['worst']['n']})" if "worst" in grouped else ""))
    return None


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
        """JSON summary of the result's identity, cost, sample sizes (``sample_sizes``) and metrics, each
        with its ``sample_size`` (``size_text``)."""
        sizes = sample_sizes(self.raw["metrics"])
        specs = {spec.key: spec for spec in METRICS}
        return {"model": self.model, "target": self.target, "runtime": self.runtime, "precision": self.precision,
                "executed_precision": self.executed_precision, "variant": self.variant,
                "results_dir": str(self.directory), "size_mb": self.size_mb,
                "latency_ms": self.timing.latency_ms if self.timing else None,
                "latency_batch": self.timing.batch if self.timing else None,
                "latency_emulated": self.timing.emulated if self.timing else None,
                "sizes": sizes,
                "metrics": {key: {**estimate.to_json(),
                                  "sample_size": size_text(specs[key], sizes) if key in specs else None}
                            for key, estimate in self.metrics.items()}}

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
            metrics={spec.key: value for spec in METRICS if (value := read_estimate(spec, raw["metrics"])) is not None},
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

def format_value(spec: MetricSpec, value: float) -> str:
    """A metric value as shown to people (fractions marked ``percent`` in %)."""
    return f"{100 * value:.1f}%" if spec.percent else f"{value:.4f}"

def format_estimate(spec: MetricSpec, estimate: Estimate) -> str:
    """``value [low, high]``."""
    if estimate.ci is None:
        return format_value(spec, estimate.value)
    return f"{format_value(spec, estimate.value)} [{format_value(spec, estimate.ci[0])}, " \
           f"{format_value(spec, estimate.ci[1])}]"
