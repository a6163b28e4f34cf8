"""Latency and throughput of any runtime behind the ``Runtime`` interface, interleaved for fair ratios.

Each runtime (an artifact of any backend, or the torch reference) is loaded in its own 'spawn' worker
process, so its peak RSS is its own. The workers load at once (their start-up overlaps); only when all are
loaded do they warm up, then take turns in rounds (the order rotating), so that load from other processes on a
shared machine hits every runtime alike and the speed ratios measured in one run stay meaningful. Figures are
printed, never asserted.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpmr_edge.artifact import TOWERS
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import machine_info, now_utc

if TYPE_CHECKING:
    from lpmr_edge.runtimes.base import Runtime
    from lpmr_edge.runtimes.device import DeviceRuntime


ZERO_SHOT = "zero-shot"
BENCH_TOWERS = (*TOWERS, ZERO_SHOT)


def artifact_tower(tower: str) -> str:
    """The artifact tower a bench tower runs (the zero-shot path runs the image tower)."""
    return "image" if tower == ZERO_SHOT else tower


@dataclass(frozen=True)
class BenchSettings:
    """How to measure: tower, batches, thread count and how many timed calls."""

    tower: str = "image"  # image | text | zero-shot (image tower + cosine scores against cached class embeddings)
    batches: tuple[int, ...] = (1, 32)
    threads: int | None = None
    warmup: int = 3
    repeats: int = 50
    max_seconds: float = 20.0
    rounds: int = 10
    classes: int = 1000  # zero-shot: how many cached class embeddings each image is scored against

    def __post_init__(self) -> None:
        if self.tower not in BENCH_TOWERS:
            raise UserError(f"unknown tower '{self.tower}'; use {', '.join(BENCH_TOWERS)}")
        if self.classes < 1:
            raise UserError(f"--classes {self.classes}: the zero-shot head needs at least 1 class")
        if not self.batches or min(self.batches) < 1:
            raise UserError(f"batches {list(self.batches)} must be positive; pass e.g. --batch 1 --batch 32")
        if min(self.warmup, self.repeats, self.rounds) < 1 or self.max_seconds <= 0:
            raise UserError("warm-up, repeats, rounds and the time budget must be positive")


@dataclass(frozen=True)
class RuntimeSource:
    """What a worker opens: an artifact directory, or the torch reference of a model spec."""

    artifact: str | None = None
    model: str | None = None

    @property
    def label(self) -> str:
        return self.artifact or f"torch:{self.model}"


def peak_rss_megabytes() -> float:
    """This process's peak resident set size in MiB.

    Read from /proc (VmHWM, reset by exec): ``getrusage``'s ru_maxrss survives fork+exec, so a spawned worker
    would report its parent's peak. Falls back to ru_maxrss where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_call(runtime: Runtime, tower: str, classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """What one timed call runs: a tower, or the end-to-end zero-shot path (image tower, then cosine scores
    against ``classes`` cached class embeddings: seeded random unit vectors, as the cost does not depend on
    their values)."""
    if tower != ZERO_SHOT:
        return getattr(runtime, f"{tower}_features")
    from lpmr_edge.zeroshot import cosine_similarities, normalise

    rng = np.random.default_rng(0)
    embeddings = normalise(rng.standard_normal((classes, runtime.model_info["embed_dim"])).astype(np.float32))
    return lambda images: cosine_similarities(runtime.image_features(images), embeddings).argmax(-1)


def _example_batch(model_info: dict[str, Any], tower: str, batch: int) -> np.ndarray:
    from lpmr_edge.models import build_tokenizer

    if tower == "text":
        return build_tokenizer(model_info)(["a photo of a dress."] * batch)
    size = model_info["image_size"]
    return np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)


def _durations(run: Callable[[np.ndarray], Any], inputs: np.ndarray, calls: int) -> list[float]:
    """Seconds of each of ``calls`` calls of ``run(inputs)``."""
    durations = []
    for _ in range(calls):
        start = time.perf_counter()
        run(inputs)
        durations.append(time.perf_counter() - start)
    return durations


def _timed_calls(seconds_per_call: float, settings: BenchSettings) -> int:
    """How many calls to time after warm-up: ``repeats``, fewer if over ``max_seconds``, at least ``rounds``."""
    return max(settings.rounds, min(settings.repeats, int(settings.max_seconds / max(seconds_per_call, 1e-6))))


def runnable_batches(description: dict[str, Any], tower: str, wanted: tuple[int, ...]) -> list[int]:
    """The requested batches a runtime (its ``describe()``) can run as one call: its static batch, or all
    if dynamic (or not an artifact)."""
    artifact = description.get("artifact")
    if not artifact:
        return list(wanted)
    shape = artifact["towers"][artifact_tower(tower)]["inputs"][0]["shape"]
    return list(wanted) if shape[0] == -1 else [shape[0]]


def _worker(connection: Connection, source: RuntimeSource, threads: int | None, tower: str, classes: int) -> None:
    """Serve timing requests for one runtime until told to stop."""
    from lpmr_edge.runtimes.factory import open_runtime

    try:
        runtime = open_runtime("torch" if source.model else None, model=source.model,
                               artifact=Path(source.artifact) if source.artifact else None, threads=threads)
        run = timed_call(runtime, tower, classes)
        connection.send(("ready", runtime.describe()))
    except UserError as error:
        connection.send(("error", str(error)))
        return
    inputs: dict[int, np.ndarray] = {}
    while (message := connection.recv())[0] == "run":
        _, batch, calls = message
        if batch not in inputs:
            inputs[batch] = _example_batch(runtime.model_info, tower, batch)
        connection.send(_durations(run, inputs[batch], calls))
    connection.send(peak_rss_megabytes())
    runtime.close()


class _Worker:
    """A runtime in its own process, driven over a pipe. The process starts loading at construction; call
    ``wait_ready`` before driving it, and ``kill`` (a no-op once stopped) whatever happened."""

    def __init__(self, source: RuntimeSource, threads: int | None, tower: str, classes: int) -> None:
        context = get_context("spawn")
        self.source = source
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, source, threads, tower, classes), daemon=True)
        self.process.start()
        child.close()  # only the worker holds its end: if it dies, recv() raises EOFError instead of waiting
        self.description: dict[str, Any] = {}

    def wait_ready(self) -> None:
        """Wait until the runtime is loaded (its ``describe()`` in ``description``); a one-line UserError if
        the worker reports an error or dies."""
        status, payload = self._receive()
        if status == "error":
            raise UserError(payload)
        self.description = payload

    def _receive(self) -> Any:
        try:
            return self.connection.recv()
        except EOFError:
            raise UserError(f"the benchmark worker for {self.source.label} died (out of memory?)") from None

    def run(self, batch: int, calls: int) -> list[float]:
        self.connection.send(("run", batch, calls))
        return self._receive()

    def stop(self) -> float:
        """Stop the worker; returns its peak RSS in MiB."""
        self.connection.send(("stop",))
        peak = self._receive()
        self.process.join()
        return peak

    def kill(self) -> None:
        """End the worker now, whatever it is doing, and reap its process."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        self.connection.close()


def _tower_megabytes(source: RuntimeSource, description: dict[str, Any], tower: str) -> float | None:
    """Size of the tower's files (e.g. image.xml + image.bin, or image.pte)."""
    if not source.artifact:
        return None
    directory = Path(source.artifact)
    sizes = [(directory / name).stat().st_size for name in description["artifact"]["files"]
             if Path(name).stem == artifact_tower(tower)]
    return round(sum(sizes) / 2**20, 2)


def _figures(durations: list[float], batch: int) -> dict[str, float]:
    milliseconds = np.asarray(durations) * 1000
    return {"median_ms": float(np.median(milliseconds)), "p90_ms": float(np.percentile(milliseconds, 90)),
            "p99_ms": float(np.percentile(milliseconds, 99)), "mean_ms": float(milliseconds.mean()),
            "throughput_per_s": batch * len(durations) / float(np.sum(durations)), "calls": len(durations)}


def _measure_batch(workers: list[_Worker], batch: int, settings: BenchSettings) -> dict[int, list[float]]:
    """Warm every worker up, then time them in interleaved rounds (rotating the order)."""
    per_call = {}
    for index, worker in enumerate(workers):
        per_call[index] = float(np.median(worker.run(batch, settings.warmup)))
    calls = {index: _timed_calls(seconds, settings) for index, seconds in per_call.items()}
    durations: dict[int, list[float]] = {index: [] for index in per_call}
    indices = list(per_call)
    for round_index in range(settings.rounds):
        shift = round_index % len(indices)
        for index in indices[shift:] + indices[:shift]:
            durations[index] += workers[index].run(batch, math.ceil(calls[index] / settings.rounds))
    return durations


def benchmark(sources: list[RuntimeSource], settings: BenchSettings = BenchSettings(),
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark runtimes (see module docstring); returns machine, settings, one row per (runtime, batch), ratios."""
    if not sources:
        raise UserError("nothing to benchmark: pass --artifact DIR (repeatable) or --model SPEC with --target")
    report = log or (lambda message: None)
    workers: list[_Worker] = []
    try:
        report(f"loading {len(sources)} runtime(s), each in its own process")
        for source in sources:  # every worker starts loading at once, so the loads overlap on the cores
            workers.append(_Worker(source, settings.threads, settings.tower, settings.classes))
        for worker in workers:
            worker.wait_ready()
            report(f"loaded {worker.source.label}")
        rows: list[dict[str, Any]] = []
        for batch in settings.batches:
            runnable = [worker for worker in workers
                        if batch in runnable_batches(worker.description, settings.tower, settings.batches)]
            if not runnable:
                continue
            report(f"timing {len(runnable)} runtime(s) at batch {batch}")
            durations = _measure_batch(runnable, batch, settings)
            rows += [_timing_row(worker.source, worker.description, batch, settings.tower, durations[index])
                     for index, worker in enumerate(runnable)]
        peaks = {worker.source.label: worker.stop() for worker in workers}
    finally:
        for worker in workers:  # after a failure: the workers still loading or serving
            worker.kill()
    for row in rows:
        row["peak_rss_mb"] = round(peaks.get(row["source"], float("nan")), 1)
    return {"machine": machine_info(), "settings": asdict(settings), "created": now_utc(), "results": rows,
            "speedups": speedups(rows)}


def _timing_row(source: RuntimeSource, description: dict[str, Any], batch: int, tower: str,
                durations: list[float]) -> dict[str, Any]:
    delegate = description.get("delegate")  # ExecuTorch's: XNNPACK or OpenVINO
    return {"source": source.label, "runtime": description["runtime"], **({"delegate": delegate} if delegate else {}),
            "precision": description["precision"],
            "executed_precision": description["executed_precision"], "threads": description["threads"],
            "model": description["model"]["spec"], "model_label": description["model"]["label"], "tower": tower,
            "batch": batch, "artifact_mb": _tower_megabytes(source, description, tower), **_figures(durations, batch)}


def benchmark_in_process(runtime: Runtime, source: RuntimeSource,
                         settings: BenchSettings = BenchSettings()) -> dict[str, Any]:
    """Time an already-open runtime in this process, e.g. right after its suite in a sweep job (no worker
    start or model load). Rows as ``benchmark``; ``peak_rss_mb`` is this process's peak, whatever else it
    did, so compare memory with ``benchmark``'s figures, not these."""
    description = runtime.describe()
    run = timed_call(runtime, settings.tower, settings.classes)
    rows = []
    for batch in runnable_batches(description, settings.tower, settings.batches):
        inputs = _example_batch(runtime.model_info, settings.tower, batch)
        durations = _durations(run, inputs, _timed_calls(float(np.median(_durations(run, inputs, settings.warmup))),
                                                         settings))
        rows.append({**_timing_row(source, description, batch, settings.tower, durations),
                     "peak_rss_mb": round(peak_rss_megabytes(), 1), "peak_rss_scope": "process"})
    return {"machine": machine_info(), "settings": asdict(settings), "created": now_utc(), "results": rows,
            "speedups": speedups(rows)}


def _time_on_device(runtime: DeviceRuntime, tower: str, batch: int, settings: BenchSettings) -> tuple[list[float], float]:
    """Warm up, then time ``tower`` at ``batch`` on the device: the device times each static batch itself
    (transfers excluded); the number of timed batches follows ``repeats``/``max_seconds`` as locally.
    Returns the timed seconds and the device's peak RSS in MiB."""
    from lpmr_edge.runtimes.device import SHARD_ROWS

    static = runtime.manifest["towers"][tower]["inputs"][0]["shape"][0] != -1
    per_request = batch * max(1, SHARD_ROWS // batch) if static else batch
    peak_kb = [runtime.loaded["peak_rss_kb"]]

    def timed(calls: int) -> list[float]:
        inputs = _example_batch(runtime.model_info, tower, batch * calls)
        shards = [runtime.run_on_device(tower, inputs[start:start + per_request])
                  for start in range(0, len(inputs), per_request)]
        peak_kb.extend(shard.peak_rss_kb for shard in shards)
        return [float(seconds) for shard in shards for seconds in shard.batch_s]

    seconds = timed(_timed_calls(float(np.median(timed(settings.warmup))), settings))
    return seconds, max(peak_kb) / 1024


def benchmark_on_device(artifacts: list[Path], device_spec: str, settings: BenchSettings = BenchSettings(),
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark artifacts on a device (``--device`` spec) through its device server, one at a time;
    rows as ``benchmark`` plus the device, with its peak RSS and ``emulated`` flag."""
    from lpmr_edge.devices.kinds import parse_device
    from lpmr_edge.runtimes.factory import open_runtime

    if settings.tower == ZERO_SHOT:
        raise UserError("the zero-shot path is timed on this host only; on a device time --tower image (the "
                        "class scores are one small matrix product)")
    device = parse_device(device_spec)
    report = log or (lambda message: None)
    rows: list[dict[str, Any]] = []
    for artifact in artifacts:
        report(f"timing {artifact} on {device.label}")
        runtime = open_runtime(artifact=artifact, threads=settings.threads, device=device_spec)
        try:
            description = runtime.describe()
            shape = runtime.manifest["towers"][settings.tower]["inputs"][0]["shape"]
            for batch in settings.batches if shape[0] == -1 else [shape[0]]:
                seconds, peak_mb = _time_on_device(runtime, settings.tower, batch, settings)
                rows.append({**_timing_row(RuntimeSource(artifact=str(artifact)), description, batch,
                                           settings.tower, seconds),
                             "device": description["device"], "peak_rss_mb": round(peak_mb, 1)})
        finally:
            runtime.close()
    return {"machine": machine_info(), "device": device.describe(), "settings": asdict(settings),
            "created": now_utc(), "results": rows, "speedups": speedups(rows)}


def benchmark_towers(sources: list[RuntimeSource], settings: BenchSettings, towers: Sequence[str],
                     device_spec: str = "local", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``benchmark`` (or ``benchmark_on_device`` for a ``--device`` other than local) of each tower in turn,
    as one report: rows and speed-ups of every tower, ``settings.tower`` listing them."""
    from lpmr_edge.devices.base import in_process

    if not in_process(device_spec) and any(source.model for source in sources):
        raise UserError("--torch times the eager reference on this host; leave it out with --device")
    reports = []
    for tower in towers:
        tower_settings = replace(settings, tower=tower)
        reports.append(benchmark(sources, tower_settings, log) if in_process(device_spec) else
                       benchmark_on_device([Path(source.artifact) for source in sources if source.artifact],
                                           device_spec, tower_settings, log))
    return {**reports[0], "settings": {**reports[0]["settings"], "tower": list(towers)},
            "results": [row for report in reports for row in report["results"]],
            "speedups": [entry for report in reports for entry in report["speedups"]]}


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median-latency speed-up of every row over the fp32 row of the same runtime (and delegate), tower and batch
    (same run)."""
    def key(row: dict[str, Any]) -> tuple[str, str | None, str, int]:
        return row["runtime"], row.get("delegate"), row["tower"], row["batch"]

    baselines = {key(row): row for row in rows if row["precision"] == "fp32"}
    return [{"runtime": row["runtime"], **({"delegate": row["delegate"]} if row.get("delegate") else {}),
             "tower": row["tower"], "batch": row["batch"], "precision": row["precision"],
             "executed_precision": row["executed_precision"],
             "speedup_over_fp32": baselines[key(row)]["median_ms"] / row["median_ms"]}
            for row in rows if key(row) in baselines and row["precision"] != "fp32"]
