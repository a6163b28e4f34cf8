"""The sweep file (TOML) → a validated grid → jobs and the artifacts they share.

A sweep file (see ``sweeps/demo.toml``)::

    name = "demo"                                  # default: the file name
    out = "lpmr-results/sweeps/demo"               # sweep.db + results/<job id>/ (default: lpmr-results/sweeps/<name>)
    artifacts = "lpmr-results/sweeps/artifacts"    # content-addressed artifact store, shareable between sweeps
    models = ["lpmr-tiny-fmnist", "random:lpmr-tiny-fmnist"]
    targets = ["x86"]                              # target names or .toml paths
    runtimes = ["openvino", "executorch"]          # and/or "torch" (the eager FP32 reference, no artifact)
    precisions = ["fp32", "int8"]                  # every runtime, or a table per runtime (below)
    suites = ["quick"]                             # basic | quick | full | suite .toml paths
    seeds = [0, 1]
    limit = 500                                    # optional cap on images per evaluation set
    threads = 1                                    # runtime threads per job (default: the target's)
    retries = 1                                    # extra attempts of a failing job
    worker_cache_mb = 1024                         # preprocessed images a worker keeps for its next jobs (0: none)

    [precisions]                                   # instead of a list: per runtime
    openvino = ["fp32", "fp16", "int8-w"]
    executorch = ["fp32", "int8-dyn"]

    [[calibrations]]                               # one table per calibration setting (default: one, defaults)
    subset_size = 300                              # keys of lpmr_edge.quantize.QuantizationOptions

    [bench]                                        # latency per job (lpmr_edge.bench), at the target's batch
    enabled = true
    warmup = 3
    repeats = 30
    max_seconds = 5.0
    rounds = 3

Relative paths are read from the current directory, like every other lpmr-edge path. A job is one
(model, target, runtime, precision, calibration, suite, seed); its id hashes everything that shapes its
numbers (target and suite contents, thread count, bench settings), so a resumed sweep can tell a changed
grid. Artifacts are keyed by ``request_fingerprint`` (model weights, request, calibration set, tools), so
jobs that need the same artifact share one build. The torch reference needs no artifact and does not
depend on the target (its jobs are listed once, target ``host``).
"""
from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpmr_edge.bench import BenchSettings
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import sha256_json
from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.targets import RUNTIMES, Target

if TYPE_CHECKING:
    from lpmr_edge.export import ExportRequest
    from lpmr_edge.suite import SuiteConfig

TORCH = "torch"
HOST_TARGET = "host"
REFERENCE_PRECISION = "fp32"
DEFAULT_ARTIFACTS = Path("lpmr-results/sweeps/artifacts")
DEFAULT_WORKER_CACHE_MB = 1024
_TYPES: dict[str, Any] = {"name": str, "out": str, "artifacts": str, "models": list, "targets": list,
                          "runtimes": list, "precisions": (list, dict), "suites": list, "seeds": list,
                          "limit": int, "threads": int, "retries": int, "worker_cache_mb": int, "calibrations": list,
                          "bench": dict}
_REQUIRED = ("models", "runtimes", "precisions", "suites")
_BENCH_KEYS = {"enabled": bool, "warmup": int, "repeats": int, "max_seconds": (int, float), "rounds": int}


@dataclass(frozen=True)
class Job:
    """One cell of the grid: build or reuse an artifact, run a suite through it, benchmark it."""

    id: str
    position: int
    model: str
    target: str
    runtime: str
    precision: str
    calibration: int | None  # index into Sweep.calibrations; None for the torch reference
    suite: str
    seed: int

    @property
    def needs_artifact(self) -> bool:
        """False for the torch reference, which runs the model directly."""
        return self.runtime != TORCH

    def label(self) -> str:
        """Short human-readable name."""
        calibration = "" if self.calibration in (None, 0) else f" calib{self.calibration}"
        return (f"{self.model} {self.target} {self.runtime}-{self.precision}{calibration} "
                f"{Path(self.suite).stem} seed{self.seed}")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""

    name: str
    source: str
    out: Path
    artifacts: Path
    models: tuple[str, ...]
    targets: tuple[Target, ...]
    precisions: dict[str, tuple[str, ...]]  # per runtime
    suites: dict[str, SuiteConfig]  # spec as written -> parsed suite
    seeds: tuple[int, ...]
    limit: int | None
    threads: int | None
    retries: int
    calibrations: tuple[QuantizationOptions, ...]
    bench: BenchSettings | None
    worker_cache_mb: int = DEFAULT_WORKER_CACHE_MB

    @property
    def db_path(self) -> Path:
        """The sweep's SQLite database."""
        return self.out / "sweep.db"

    def target(self, name: str) -> Target:
        """A target of the grid by name."""
        return next(target for target in self.targets if target.name == name)

    def job_threads(self, job: Job) -> int:
        """Runtime threads of a job: the sweep's setting, else its target's (the host reference: the most of any)."""
        if self.threads is not None:
            return self.threads
        return max((t.threads for t in self.targets), default=1) if job.target == HOST_TARGET \
            else self.target(job.target).threads

    def max_threads(self) -> int:
        """The largest thread count of any job (sizes the worker pool)."""
        return self.threads or max(target.threads for target in self.targets)

    def bench_settings(self, job: Job) -> BenchSettings | None:
        """The job's bench settings at its target's static image batch (None when benchmarking is off)."""
        if self.bench is None:
            return None
        batch = 1 if job.target == HOST_TARGET else self.target(job.target).image_batch
        return BenchSettings(**{**asdict(self.bench), "batches": (batch,), "threads": self.job_threads(job)})

    def describe(self) -> dict[str, Any]:
        """What the database records about the grid."""
        return {"name": self.name, "source": self.source, "models": list(self.models),
                "targets": [target.describe() for target in self.targets], "precisions": self.precisions,
                "suites": {spec: asdict(suite) for spec, suite in self.suites.items()}, "seeds": list(self.seeds),
                "limit": self.limit, "threads": self.threads, "retries": self.retries,
                "calibrations": [options.describe() for options in self.calibrations],
                "bench": asdict(self.bench) if self.bench else None, "worker_cache_mb": self.worker_cache_mb}


def _fail(source: str, problem: str, fix: str) -> UserError:
    return UserError(f"sweep file {source}: {problem}; {fix}")


def _strings(source: str, data: Mapping[str, Any], key: str, default: Sequence[str] | None = None) -> tuple:
    values = data.get(key, default)
    if values is None:
        raise _fail(source, f"'{key}' is missing", f"add e.g. {key} = [...] (see sweeps/demo.toml)")
    expected = int if key == "seeds" else str
    if not values or not all(isinstance(v, expected) and not isinstance(v, bool) for v in values):
        raise _fail(source, f"'{key}' must be a non-empty list of {expected.__name__}s (got {values!r})", "fix it")
    if len(set(values)) != len(values):
        raise _fail(source, f"'{key}' lists an entry twice ({values!r})", "list each once")
    return tuple(values)


def _precisions(source: str, data: Mapping[str, Any], runtimes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    raw = data["precisions"]
    if isinstance(raw, dict):
        extra = sorted(set(raw) - set(runtimes))
        missing = [runtime for runtime in runtimes if runtime not in raw]
        if extra or missing:
            raise _fail(source, f"[precisions] must have one entry per runtime in 'runtimes' (extra: {extra}, "
                        f"missing: {missing})", "make the two agree")
        table = {runtime: _strings(source, raw, runtime) for runtime in runtimes}
    else:
        listed = _strings(source, data, "precisions")
        table = {runtime: listed for runtime in runtimes}
    for runtime, precisions in table.items():
        supported = (REFERENCE_PRECISION,) if runtime == TORCH else RUNTIMES[runtime].precisions
        unsupported = [p for p in precisions if p not in supported]
        if unsupported:
            raise _fail(source, f"runtime {runtime} has no precision {', '.join(unsupported)} (it has "
                        f"{', '.join(supported)})", "give per-runtime lists in a [precisions] table")
    return table


def _calibrations(source: str, data: Mapping[str, Any]) -> tuple[QuantizationOptions, ...]:
    tables = data.get("calibrations", [{}])
    valid = {f.name for f in fields(QuantizationOptions)}
    if not tables or not all(isinstance(table, dict) for table in tables):
        raise _fail(source, "'calibrations' must be a list of tables", "write [[calibrations]] tables")
    for table in tables:
        unknown = sorted(set(table) - valid)
        if unknown:
            raise _fail(source, f"unknown key '{unknown[0]}' in [[calibrations]]", f"use {', '.join(sorted(valid))}")
    try:
        return tuple(QuantizationOptions(**table) for table in tables)
    except (UserError, TypeError) as error:
        raise _fail(source, f"[[calibrations]]: {error}", "fix the value") from None


def _bench(source: str, data: Mapping[str, Any]) -> BenchSettings | None:
    table = dict(data.get("bench", {}))
    for key, value in table.items():
        if key not in _BENCH_KEYS:
            raise _fail(source, f"unknown key '{key}' in [bench]", f"use {', '.join(_BENCH_KEYS)}")
        if not isinstance(value, _BENCH_KEYS[key]) or (key != "enabled" and isinstance(value, bool)):
            raise _fail(source, f"[bench] {key} has the wrong type ({value!r})", "fix the value")
    if not table.pop("enabled", True):
        return None
    settings = {"warmup": 3, "repeats": 30, "max_seconds": 5.0, "rounds": 3, **table}
    try:
        return BenchSettings(tower="image", batches=(1,), threads=None, **settings)
    except UserError as error:
        raise _fail(source, f"[bench]: {error}", "fix the value") from None


def _positive(source: str, data: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = data.get(key)
    if value is not None and value < minimum:
        raise _fail(source, f"'{key}' is {value}", f"use an integer >= {minimum}")
    return value


def parse_sweep(data: Mapping[str, Any], source: str) -> Sweep:
    """Validate a parsed sweep file; every problem is a one-line UserError naming the key and the fix."""
    from lpmr_edge.suite import load_suite
    from lpmr_edge.targets import load_target

    for key, value in data.items():
        if key not in _TYPES:
            raise _fail(source, f"unknown key '{key}'", f"valid keys: {', '.join(_TYPES)}")
        if not isinstance(value, _TYPES[key]) or isinstance(value, bool):
            raise _fail(source, f"'{key}' has the wrong type ({value!r})", "see sweeps/demo.toml")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise _fail(source, f"missing key(s) {', '.join(missing)}", "add them (see sweeps/demo.toml)")
    runtimes = _strings(source, data, "runtimes")
    unknown = [runtime for runtime in runtimes if runtime != TORCH and runtime not in RUNTIMES]
    if unknown:
        raise _fail(source, f"unknown runtime '{unknown[0]}'", f"use {', '.join([*RUNTIMES, TORCH])}")
    targets = tuple(load_target(name) for name in _strings(source, data, "targets", ["x86"]))
    for target in targets:
        for runtime in runtimes:
            if runtime != TORCH:
                target.runtime(runtime)  # a target that lacks the runtime is an error naming the fix
    name = data.get("name", Path(source).stem)
    _positive(source, data, "retries", 0)
    worker_cache_mb = _positive(source, data, "worker_cache_mb", 0)
    return Sweep(
        name=name, source=source, out=Path(data.get("out", f"lpmr-results/sweeps/{name}")),
        artifacts=Path(data.get("artifacts", DEFAULT_ARTIFACTS)), models=_strings(source, data, "models"),
        targets=targets, precisions=_precisions(source, data, runtimes),
        suites={spec: load_suite(spec) for spec in _strings(source, data, "suites")},
        seeds=_strings(source, data, "seeds", [0]), limit=_positive(source, data, "limit", 1),
        threads=_positive(source, data, "threads", 1), retries=data.get("retries", 1),
        calibrations=_calibrations(source, data), bench=_bench(source, data),
        worker_cache_mb=DEFAULT_WORKER_CACHE_MB if worker_cache_mb is None else worker_cache_mb)


def load_sweep(path: Path, out: Path | None = None) -> Sweep:
    """Read and validate a sweep file (``out`` overrides the file's output directory)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise UserError(f"cannot read sweep file {path} ({error.strerror}); pass a sweep .toml file "
                        "(see sweeps/demo.toml)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise _fail(str(path), f"not valid TOML ({error})", "fix the syntax") from None
    sweep = parse_sweep(data, str(path))
    return sweep if out is None else replace(sweep, out=Path(out))


def _job_key(sweep: Sweep, job: Job) -> str:
    target = None if job.target == HOST_TARGET else sweep.target(job.target).describe()
    calibration = None if job.calibration is None else sweep.calibrations[job.calibration].describe()
    bench = sweep.bench_settings(job)
    return sha256_json({"model": job.model, "target": target, "runtime": job.runtime, "precision": job.precision,
                        "calibration": calibration, "suite": asdict(sweep.suites[job.suite]), "seed": job.seed,
                        "limit": sweep.limit, "threads": sweep.job_threads(job),
                        "bench": asdict(bench) if bench else None})[:16]


def expand(sweep: Sweep) -> list[Job]:
    """Every job of the grid, in a stable order (models, targets, runtimes, precisions, calibrations,
    suites, seeds); the torch reference once per model, suite and seed."""
    cells = []
    for model in sweep.models:
        for runtime, precisions in sweep.precisions.items():
            targets = [HOST_TARGET] if runtime == TORCH else [target.name for target in sweep.targets]
            calibrations = [None] if runtime == TORCH else list(range(len(sweep.calibrations)))
            cells += [(model, target, runtime, precision, calibration, suite, seed)
                      for target in targets for precision in precisions for calibration in calibrations
                      for suite in sweep.suites for seed in sweep.seeds]
    jobs = [Job("", position, *cell) for position, cell in enumerate(cells)]
    return [replace(job, id=_job_key(sweep, job)) for job in jobs]


def export_request(sweep: Sweep, job: Job) -> ExportRequest:
    """The export request of a job's artifact."""
    from lpmr_edge.export import ExportRequest

    assert job.calibration is not None
    return ExportRequest(model=job.model, target=sweep.target(job.target), runtime=job.runtime,
                         precision=job.precision, options=sweep.calibrations[job.calibration])


@functools.lru_cache(maxsize=16)
def _weights_sha256(model: str) -> str:
    from lpmr_edge.models import load_model

    return load_model(model).weights_sha256


def artifact_key(request: ExportRequest) -> str:
    """Content address of an artifact: ``request_fingerprint`` (weights, request, calibration set, tools)."""
    from lpmr_edge.export import request_fingerprint

    return request_fingerprint(request, _weights_sha256(request.model))


def check_models(sweep: Sweep) -> None:
    """Load every model once so that a bad model spec fails before anything runs."""
    for model in sweep.models:
        _weights_sha256(model)
