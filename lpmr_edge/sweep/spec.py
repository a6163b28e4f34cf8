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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpmr_edge.backends import BACKENDS
from lpmr_edge.bench import BenchSettings
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import sha256_json
from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.schema import parse_table, require
from lpmr_edge.targets import Target

if TYPE_CHECKING:
    from lpmr_edge.export import ExportRequest
    from lpmr_edge.sequential import SettleSettings

TORCH = "torch"
HOST_TARGET = "host"
REFERENCE_PRECISION = "fp32"
DEFAULT_ARTIFACTS = Path("lpmr-results/sweeps/artifacts")
DEFAULT_WORKER_CACHE_MB = 1024


@dataclass(frozen=True)
class BenchTable:
    """The sweep file's ``[bench]`` table: latency per job at the target's batch (``enabled = false``: none)."""

    enabled: bool = True
    warmup: int = 3
    repeats: int = 30
    max_seconds: float = 5.0
    rounds: int = 3


def _list(key: str, values: tuple) -> None:
    require(bool(values), f"'{key}' must be a non-empty list")
    require(len(set(values)) == len(values), f"'{key}' lists an entry twice ({list(values)!r}); list each once")


@dataclass(frozen=True)
class SweepFile:
    """A sweep file as written (read by ``lpmr_edge.schema``); ``parse_sweep`` resolves it into a ``Sweep``."""

    models: tuple[str, ...]
    runtimes: tuple[str, ...]
    precisions: tuple[str, ...] | dict[str, tuple[str, ...]]
    suites: tuple[str, ...]
    name: str | None = None
    out: str | None = None
    artifacts: str = str(DEFAULT_ARTIFACTS)
    targets: tuple[str, ...] = ("x86",)
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    threads: int | None = None
    retries: int = 1
    worker_cache_mb: int = DEFAULT_WORKER_CACHE_MB
    calibrations: tuple[QuantizationOptions, ...] = field(default_factory=lambda: (QuantizationOptions(),))
    bench: BenchTable = field(default_factory=BenchTable)

    def __post_init__(self) -> None:
        for key in ("models", "runtimes", "suites", "targets", "seeds", "calibrations"):
            _list(key, getattr(self, key))
        for runtime, listed in (self.precisions.items() if isinstance(self.precisions, dict)
                                else [("precisions", self.precisions)]):
            _list(runtime, listed)
        for key, minimum in (("limit", 1), ("threads", 1), ("retries", 0), ("worker_cache_mb", 0)):
            value = getattr(self, key)
            require(value is None or value >= minimum, f"'{key}' is {value}; use an integer >= {minimum}")


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
class SettleRequest:
    """``sweep --until-settled``: the jobs of one model x target x calibration x suite x seed (its runtimes and
    precisions) settle together on ``objective`` with ``margin``, ``shard_size`` images of each visited set per
    shard, until the decision is settled or the wall-clock ``ends_at`` (epoch seconds; None: no budget)."""

    objective: str
    margin: float
    shard_size: int = 200
    ends_at: float | None = None


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file (``settle``: with ``--until-settled``)."""

    name: str
    source: str
    out: Path
    artifacts: Path
    models: tuple[str, ...]
    targets: tuple[Target, ...]
    precisions: dict[str, tuple[str, ...]]  # per runtime
    suites: dict[str, Any]  # spec as written -> parsed suite (a lpmr_edge.suite SuiteConfig)
    seeds: tuple[int, ...]
    limit: int | None
    threads: int | None
    retries: int
    calibrations: tuple[QuantizationOptions, ...]
    bench: BenchSettings | None
    worker_cache_mb: int = DEFAULT_WORKER_CACHE_MB
    settle: SettleRequest | None = None

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
                "bench": asdict(self.bench) if self.bench else None, "worker_cache_mb": self.worker_cache_mb,
                "until_settled": _settle_identity(self.settle)}


def _fail(source: str, problem: str, fix: str) -> UserError:
    return UserError(f"sweep file {source}: {problem}; {fix}")


def _precisions(source: str, written: SweepFile) -> dict[str, tuple[str, ...]]:
    if isinstance(written.precisions, dict):
        extra = sorted(set(written.precisions) - set(written.runtimes))
        missing = [runtime for runtime in written.runtimes if runtime not in written.precisions]
        if extra or missing:
            raise _fail(source, f"[precisions] must have one entry per runtime in 'runtimes' (extra: {extra}, "
                        f"missing: {missing})", "make the two agree")
        table = {runtime: written.precisions[runtime] for runtime in written.runtimes}
    else:
        table = {runtime: written.precisions for runtime in written.runtimes}
    for runtime, precisions in table.items():
        supported = (REFERENCE_PRECISION,) if runtime == TORCH else BACKENDS[runtime].precisions
        unsupported = [p for p in precisions if p not in supported]
        if unsupported:
            raise _fail(source, f"runtime {runtime} has no precision {', '.join(unsupported)} (it has "
                        f"{', '.join(supported)})", "give per-runtime lists in a [precisions] table")
    return table


def _bench(table: BenchTable) -> BenchSettings | None:
    if not table.enabled:
        return None
    return BenchSettings(tower="image", batches=(1,), threads=None, warmup=table.warmup, repeats=table.repeats,
                         max_seconds=table.max_seconds, rounds=table.rounds)


def parse_sweep(data: Mapping[str, Any], source: str) -> Sweep:
    """Validate a parsed sweep file; every problem is a one-line UserError naming the key and the fix."""
    from lpmr_edge.suite import load_suite
    from lpmr_edge.targets import load_target

    try:
        written = parse_table(SweepFile, data)
        bench = _bench(written.bench)
    except UserError as error:
        raise _fail(source, str(error), "fix it (see sweeps/demo.toml)") from None
    unknown = [runtime for runtime in written.runtimes if runtime != TORCH and runtime not in BACKENDS]
    if unknown:
        raise _fail(source, f"unknown runtime '{unknown[0]}'", f"use {', '.join([*BACKENDS, TORCH])}")
    targets = tuple(load_target(name) for name in written.targets)
    for target in targets:
        for runtime in written.runtimes:
            if runtime != TORCH:
                target.runtime(runtime)  # a target that lacks the runtime is an error naming the fix
    name = written.name or Path(source).stem
    return Sweep(
        name=name, source=source, out=Path(written.out or f"lpmr-results/sweeps/{name}"),
        artifacts=Path(written.artifacts), models=written.models, targets=targets,
        precisions=_precisions(source, written), suites={spec: load_suite(spec) for spec in written.suites},
        seeds=written.seeds, limit=written.limit, threads=written.threads, retries=written.retries,
        calibrations=written.calibrations, bench=bench, worker_cache_mb=written.worker_cache_mb)


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


def _settle_identity(settle: SettleRequest | None) -> dict[str, Any] | None:
    """What of ``--until-settled`` shapes a job's numbers (not the shard size or budget: a resumed sweep may
    change those and continues the same decision)."""
    return None if settle is None else {"objective": settle.objective, "margin": settle.margin}


def with_settling(sweep: Sweep, objective: str, margin: float, until: SettleSettings) -> Sweep:
    """``sweep`` with ``--until-settled`` (``until``: shard size and a ``time.monotonic()`` deadline) on
    ``objective`` with an equivalence ``margin``. UserError for an objective that cannot be settled."""
    import time

    from lpmr_edge.suite.settle_plan import objective_loss

    objective_loss(objective)
    ends_at = None if until.deadline is None else time.time() + (until.deadline - time.monotonic())
    return replace(sweep, settle=SettleRequest(objective, margin, until.shard_size, ends_at))


def settle_groups(jobs: list[Job]) -> dict[str, list[Job]]:
    """With ``--until-settled``: the jobs that settle together — one model x target x calibration x suite x
    seed, over its runtimes and precisions — by a group id, groups of two or more artifacts only (a lone
    artifact has nothing to decide between and runs in full; see ``reference_groups`` for the torch reference)."""
    cells: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.needs_artifact:
            cells.setdefault((job.model, job.target, job.calibration, job.suite, job.seed), []).append(job)
    return {sha256_json(sorted(job.id for job in members))[:16]: members
            for members in cells.values() if len(members) > 1}


def reference_groups(jobs: list[Job], groups: Mapping[str, list[Job]]) -> dict[str, list[str]]:
    """With ``--until-settled``: each torch reference job's settling groups (those of its model, suite and
    seed), whose images it is evaluated on, as ``lpmr-edge run`` evaluates its host reference."""
    return {job.id: [key for key, members in groups.items()
                     if (members[0].model, members[0].suite, members[0].seed) == (job.model, job.suite, job.seed)]
            for job in jobs if not job.needs_artifact}


def _job_key(sweep: Sweep, job: Job) -> str:
    target = None if job.target == HOST_TARGET else sweep.target(job.target).describe()
    calibration = None if job.calibration is None else sweep.calibrations[job.calibration].describe()
    bench = sweep.bench_settings(job)
    return sha256_json({"model": job.model, "target": target, "runtime": job.runtime, "precision": job.precision,
                        "calibration": calibration, "suite": asdict(sweep.suites[job.suite]), "seed": job.seed,
                        "limit": sweep.limit, "threads": sweep.job_threads(job),
                        "bench": asdict(bench) if bench else None,
                        **({"until_settled": _settle_identity(sweep.settle)} if sweep.settle else {})})[:16]


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
