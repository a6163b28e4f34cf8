"""What a worker runs: build one artifact, or run one job (suite, then bench) — through the existing API.

Both entry points take a picklable task, never raise for a failure of the work itself and return an
outcome dict (``ok``; on failure ``error``, one line, and ``traceback``), so every engine reports errors
the same way. Workers write files (artifacts, result directories) but never the database: the driver
stores the outcome.

Time inside the runtimes is measured honestly and returned as ``runtime_seconds``: the wall time of
every ``image_features``/``text_features`` call the suite and then the bench make (the bench times the
runtime the suite used, in the same worker; its warm-up calls count as runtime time, model loading does not).

A worker keeps the runtime of its last job open: the next job on the same artifact (another seed or suite)
reuses it instead of loading and compiling the model again, and the driver steers such jobs to that
worker (``runtime_key``). A job that fails closes it, so a retry starts from a fresh runtime. A worker
also keeps the evaluation sets it preprocessed (up to the sweep's ``worker_cache_mb``), for its next
jobs on the same images.
"""
from __future__ import annotations

import functools
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpmr_edge.data.core import PreprocessedSets

if TYPE_CHECKING:
    from lpmr_edge.bench import BenchSettings
    from lpmr_edge.export import ExportRequest
    from lpmr_edge.runtimes.base import Runtime
    from lpmr_edge.suite import EvalSettings, SuiteConfig

BENCH_FILE = "bench.json"


@dataclass(frozen=True)
class BuildTask:
    """Export (or reuse) one content-addressed artifact below ``out_root``."""

    key: str
    request: ExportRequest
    out_root: str
    threads: int


@dataclass(frozen=True)
class JobTask:
    """Run one job: a suite through an artifact (or the torch reference), then its bench."""

    job_id: str
    model: str
    runtime: str
    artifact: str | None
    results_dir: str
    suite: SuiteConfig
    settings: EvalSettings
    threads: int
    bench: BenchSettings | None
    cache_bytes: int = 0  # preprocessed images the worker may keep for its next jobs
    covers: tuple[str, ...] = ()  # settling.json files: evaluate only the images their candidates saw (a reference)


def configure_threads(threads: int) -> None:
    """Cap this worker's compute threads (OpenMP, torch) so parallel jobs do not oversubscribe the cores.

    OpenVINO and ExecuTorch get the count from ``open_runtime(threads=...)``.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(threads)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _outcome(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"ok": True, **work()}
    except Exception as error:  # noqa: BLE001 - recorded, retried per policy; never stops the sweep
        return {"ok": False, "error": _one_line(error), "traceback": traceback.format_exc()}


def prepare_worker(_: None = None) -> dict[str, Any]:
    """Import what a job needs (the suite, open_clip, torch and the runtimes) before the first job arrives."""
    def work() -> dict[str, Any]:
        from lpmr_edge.runtimes import torch_runtime
        from lpmr_edge.runtimes.executorch import runtime as executorch
        from lpmr_edge.runtimes.openvino import runtime as openvino
        from lpmr_edge.suite import run as suite

        return {"modules": [module.__name__ for module in (suite, executorch, openvino, torch_runtime)]}

    return _outcome(work)


def build_artifact(task: BuildTask) -> dict[str, Any]:
    """Export the task's artifact unless an up-to-date one is in the store; returns path and manifest hash."""
    def work() -> dict[str, Any]:
        from lpmr_edge.export import export_artifact
        from lpmr_edge.manifest import MANIFEST_NAME, sha256_file

        start = time.perf_counter()
        configure_threads(task.threads)
        path, reused = export_artifact(task.request, Path(task.out_root), isolate=False, request_sha256=task.key)
        return {"path": str(path), "reused": reused, "manifest_sha256": sha256_file(path / MANIFEST_NAME),
                "seconds": time.perf_counter() - start}

    return _outcome(work)


def runtime_key(task: JobTask) -> str:
    """What a job opens (its artifact, else the torch model, at its thread count): jobs with equal keys can
    share one open runtime."""
    return f"{task.artifact or 'torch:' + task.model}@{task.threads}"


_kept: dict[str, Runtime] = {}  # this worker's open runtime (at most one), by runtime_key
_preprocessed = PreprocessedSets()  # this worker's preprocessed evaluation sets, for its next jobs


def close_kept_runtime() -> None:
    """Close the runtime this worker kept open for its next job (after a failure, or when done)."""
    for runtime in _kept.values():
        runtime.close()
    _kept.clear()


def _open_or_reuse(task: JobTask) -> tuple[Runtime, bool]:
    """The job's runtime: the one this worker kept open if its key matches (reused: True), else a newly
    opened one."""
    from lpmr_edge.runtimes.factory import open_runtime

    key = runtime_key(task)
    reused = key in _kept
    if not reused:
        close_kept_runtime()
        runtime = open_runtime("torch", model=task.model, threads=task.threads) if task.artifact is None \
            else open_runtime(artifact=Path(task.artifact), threads=task.threads)
        _kept[key] = runtime
    return _kept[key], reused


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, float, float | None, float | None]]:
    """Every numeric value of a ``metrics.json`` tree as (``path/name``, value, ci_low, ci_high); a value's CI
    is read from the sibling ``ci`` table, lists (e.g. the reliability diagram) are left out."""
    rows = []
    intervals = metrics.get("ci", {}) if isinstance(metrics.get("ci"), dict) else {}
    for name, value in metrics.items():
        if name == "ci":
            continue
        if isinstance(value, dict):
            rows += flatten_metrics(value, f"{prefix}{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            ci = intervals.get(name)
            low, high = ci if isinstance(ci, list) and len(ci) == 2 else (None, None)
            rows.append((f"{prefix}{name}", float(value), low, high))
    return rows


def _bench(task: JobTask, runtime: Runtime, results_dir: Path) -> tuple[list[tuple[str, float, None, None]],
                                                                          dict[str, Any]]:
    """Benchmark the job's runtime, already open in this worker; returns metric rows and the bench report."""
    from lpmr_edge.bench import RuntimeSource, benchmark_in_process
    from lpmr_edge.manifest import atomic_write_json

    assert task.bench is not None
    source = RuntimeSource(artifact=task.artifact) if task.artifact else RuntimeSource(model=task.model)
    report = benchmark_in_process(runtime, source, task.bench)
    atomic_write_json(results_dir / BENCH_FILE, report)
    row = report["results"][0]
    metrics = [(f"bench/{name}", float(row[name]), None, None)
               for name in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s")
               if row.get(name) is not None]
    return metrics, {"machine": report["machine"], "settings": report["settings"], "row": row}


def _job_outcome(task: JobTask, runtime: Runtime, evaluate_suite: Callable[[], dict[str, Any]],
                 start: float, reused: bool, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run a job's suite (``evaluate_suite``) and bench on its open ``runtime``; returns its flattened metrics,
    manifest (``extra`` added) and timings, counted from ``start`` (``time.perf_counter()``); runtime seconds
    are those inside the runtime's calls (``Runtime.call_seconds``)."""
    from lpmr_edge.manifest import read_json

    results_dir = Path(task.results_dir)
    marks = [start, time.perf_counter()]
    clock_start = runtime.call_seconds
    result = evaluate_suite()
    suite_seconds = runtime.call_seconds - clock_start
    metrics = flatten_metrics(result["metrics"])
    marks.append(time.perf_counter())
    bench_rows, bench = _bench(task, runtime, results_dir) if task.bench else ([], None)
    marks.append(time.perf_counter())
    runtime_seconds = runtime.call_seconds - clock_start
    timings = {"open_s": marks[1] - marks[0], "runtime_reused": reused, "suite_s": marks[2] - marks[1],
               "suite_runtime_s": suite_seconds, "bench_s": marks[3] - marks[2],
               "bench_runtime_s": runtime_seconds - suite_seconds}  # the bench's calls, warm-up included
    manifest = {"results": read_json(results_dir / "manifest.json", "results manifest"), "bench": bench,
                "threads": task.threads, "seed": task.settings.seed, "settings": asdict(task.settings),
                "worker": {"host": socket.gethostname(), "pid": os.getpid()}, "timings": timings, **(extra or {})}
    return {"metrics": metrics + bench_rows, "manifest": manifest, "results_dir": str(results_dir),
            "runtime_seconds": runtime_seconds, "seconds": marks[3] - marks[0],
            "worker": f"{socket.gethostname()}:{os.getpid()}"}


def _covered(records: tuple[str, ...]) -> dict[str, Any]:
    """``evaluate``'s arguments restricting a reference to the images the candidates of the settling records
    saw (``lpmr_edge.suite.settle.reference_images``); none without records (every image)."""
    from lpmr_edge.suite.settle import read_records, reference_images

    found = [read_records(Path(path)) for path in records if Path(path).is_file()]
    return reference_images(found) if found else {}


def run_job(task: JobTask) -> dict[str, Any]:
    """Run a job's suite (and bench); returns its flattened metrics, manifest and timings."""
    def work() -> dict[str, Any]:
        from lpmr_edge.suite import evaluate

        start = time.perf_counter()
        configure_threads(task.threads)
        runtime, reused = _open_or_reuse(task)
        try:
            _preprocessed.resize(task.cache_bytes)
            covered = _covered(task.covers)
            return _job_outcome(task, runtime, lambda: evaluate(
                runtime, Path(task.results_dir), task.settings, suite=task.suite, preprocessed=_preprocessed,
                **covered), start, reused)
        except BaseException:
            close_kept_runtime()
            raise

    return _outcome(work)


@dataclass(frozen=True)
class SettleTask:
    """Run the jobs of one settling group (``lpmr_edge.sweep.spec.settle_groups``) together until settled:
    ``jobs`` are every member (each artifact a candidate, named by its artifact directory); ``record`` is the
    group's ``settling.json``; ``ends_at`` the budget's end in epoch seconds (None: no budget)."""

    group: str
    jobs: tuple[JobTask, ...]
    record: str
    objective: str
    margin: float
    shard_size: int
    ends_at: float | None


def candidate_name(task: JobTask) -> str:
    """A job's name in its settling group: its artifact's directory name (``<runtime>-<precision>``)."""
    assert task.artifact is not None
    return Path(task.artifact).name


def run_settle_group(task: SettleTask) -> dict[str, Any]:
    """Settle a group's candidates shard by shard (``lpmr_edge.suite.settle``), then run each job's suite over
    the images it saw, and its bench; returns per job the outcome ``run_job`` returns (``jobs``: job id ->
    outcome, its manifest with the ``sequential`` node) and the group's decision (``settling``)."""
    def work() -> dict[str, Any]:
        import contextlib

        from lpmr_edge.runtimes.factory import open_runtime
        from lpmr_edge.sequential import SettleSettings
        from lpmr_edge.suite.settle import Candidate, evaluate_seen, settle

        start = time.perf_counter()
        close_kept_runtime()
        first = task.jobs[0]
        configure_threads(first.threads)
        with contextlib.ExitStack() as stack:
            opened = {}
            for job in task.jobs:
                runtime = open_runtime(artifact=Path(job.artifact), threads=job.threads)  # type: ignore[arg-type]
                stack.callback(runtime.close)
                opened[candidate_name(job)] = (job, runtime)
            candidates = {name: Candidate(runtime, Path(job.results_dir)) for name, (job, runtime) in opened.items()}
            deadline = None if task.ends_at is None else time.monotonic() + (task.ends_at - time.time())
            settled = settle(candidates, Path(task.record), first.settings, task.objective, task.margin,
                             SettleSettings(shard_size=task.shard_size, deadline=deadline), log=lambda _: None,
                             suite=first.suite)
            settle_seconds = time.perf_counter() - start
            outcomes = {}
            for name, (job, runtime) in opened.items():
                outcome = _job_outcome(job, runtime, functools.partial(
                    evaluate_seen, settled, name, candidates[name], job.settings, suite=job.suite),
                    time.perf_counter(), False,
                    {"sequential": settled.sequential(name), "settling": {"group": task.group, "record": task.record,
                                                                         "settle_s": settle_seconds}})
                outcomes[job.job_id] = {**outcome, "seconds": outcome["seconds"] + settle_seconds / len(opened)}
        return {"jobs": outcomes, "settling": settled.describe()}

    return _outcome(work)
