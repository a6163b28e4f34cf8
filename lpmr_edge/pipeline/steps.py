"""What each step of ``lpmr-edge run`` does (``lpmr_edge.pipeline`` plans them into a graph and runs it).

Every ``*_work(..., log, progress, inputs)`` is one step's work: ``log`` collects its lines, ``inputs`` are the
values of the steps it runs after, by name. Each writes its output atomically and skips what is already there
and still matches (artifacts by manifest hash, suite results by runtime identity, parity and bench by the
artifact identities they cover), so a killed run resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpmr_edge.data import PreprocessedSets
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_json, read_json, sha256_json
from lpmr_edge.pick import Constraints
from lpmr_edge.results import HOST_TARGET, REFERENCE_PRECISION
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.sequential import SettleSettings
from lpmr_edge.suite import Collected, EvalSettings, Progress, collect, evaluate, finish
from lpmr_edge.suite.reuse import evaluate_reusing, holds_result, same_outputs_result
from lpmr_edge.suite.settle import Settled, reference_images
from lpmr_edge.suite.settle_plan import objective_loss
from lpmr_edge.targets import Target

Log = Callable[[str], None]
HOST_ARCH = platform.machine()
PREPROCESSED_BYTES = 256 << 20  # preprocessed images a step's process keeps for its next suite
HOST_RESULT = f"{HOST_TARGET}/torch-{REFERENCE_PRECISION}"  # the host's torch FP32 reference, under results/


@dataclass(frozen=True)
class RunPlan:
    """What ``lpmr-edge run`` does."""

    model: str
    targets: tuple[str, ...]
    out: Path = Path("lpmr-results/run")
    suite: str = "quick"
    device: str = "local"
    parity_images: int = 256
    constraints: Constraints = field(default_factory=Constraints)
    until: SettleSettings | None = None  # evaluate until settled (None: every image)
    jobs: int | None = None  # steps at once (None: the cores; 1: one after another in this process)

    def __post_init__(self) -> None:
        if self.until is not None:
            objective_loss(self.constraints.objective)  # an objective without a per-image loss fails first


def _is_done(path: Path, key: str) -> bool:
    return path.is_file() and read_json(path, str(path)).get("inputs_sha256") == key


def _open(artifact: Path, device: str, threads: int) -> Runtime:
    from lpmr_edge.runtimes.factory import open_runtime

    return open_runtime(artifact=artifact, threads=threads, device=device)


@functools.cache
def _preprocessed() -> PreprocessedSets:
    """This process's preprocessed evaluation sets, kept for its next suite (every artifact of a run sees the
    same images through the same model preprocessing)."""
    return PreprocessedSets(PREPROCESSED_BYTES)


def _evaluate_once(runtime: Runtime, out_dir: Path, suite: str, log: Log, progress: Progress | None,
                   evaluate_suite: Callable[[], object] | None = None, sequential: dict | None = None) -> None:
    """Evaluate unless ``out_dir`` holds a result of the same runtime, suite and ``metrics["sequential"]``
    (None: a full evaluation); ``evaluate_suite`` replaces the full evaluation (settled runs, reused outputs)."""
    if holds_result(out_dir, runtime.identity, suite, sequential):
        log(f"  suite: up to date ({out_dir})")
        return
    if evaluate_suite is None:
        evaluate(runtime, out_dir, EvalSettings(suite=suite), progress=progress, preprocessed=_preprocessed())
    else:
        evaluate_suite()
    log(f"  suite: done ({out_dir})")


def _parity(artifacts: Sequence[Path], out: Path, images: int, threads: int, log: Log) -> None:
    from lpmr_edge.manifest import verify_manifest
    from lpmr_edge.parity import check_parity

    key = sha256_json({"artifacts": [verify_manifest(a)["files"] for a in artifacts], "n": images})
    if _is_done(out, key):
        log("  parity: up to date")
        return
    checks = []
    for artifact in artifacts:
        check = check_parity(artifact, n=images, threads=threads)
        log(f"  parity {artifact.name}: image cos min {check['image']['cosine_min']:.5f}, "
            f"top-1 agreement {check['top1_agreement']:.4f}")
        checks.append(check)
    atomic_write_json(out, {"inputs_sha256": key, "checks": checks})


def _bench(target: Target, artifacts: Sequence[Path], device_spec: str, out: Path, log: Log) -> None:
    """Latency and memory where they mean something: on the device, or on this host when it is the target's
    architecture; emulated timings are not latencies, so an emulated device is not benchmarked."""
    from lpmr_edge.bench import BenchSettings, RuntimeSource, benchmark, benchmark_on_device
    from lpmr_edge.devices.base import in_process
    from lpmr_edge.devices.kinds import parse_device
    from lpmr_edge.manifest import verify_manifest

    on_device = not in_process(device_spec)
    if on_device and parse_device(device_spec).emulated:
        log(f"  bench: skipped — {device_spec} is emulated: its timings are not latencies")
        return
    if not on_device and target.arch != HOST_ARCH:
        log(f"  bench: skipped — this host is {HOST_ARCH}, target {target.name} is {target.arch}; pass --device "
            "to time it on the device; no latency is reported for this target")
        return
    settings = BenchSettings(batches=(target.image_batch,), threads=target.threads, repeats=30, max_seconds=10.0)
    key = sha256_json({"artifacts": [verify_manifest(a)["files"] for a in artifacts], "settings": repr(settings),
                       "device": device_spec})
    if _is_done(out, key):
        log("  bench: up to date")
        return
    report = benchmark_on_device(list(artifacts), device_spec, settings) if on_device else \
        benchmark([RuntimeSource(artifact=str(a)) for a in artifacts], settings)
    atomic_write_json(out, {**report, "inputs_sha256": key})
    log(f"  bench: {len(report['results'])} rows -> {out}")


def _settle_target(plan: RunPlan, target: Target, artifacts: Sequence[Path], results_dir: Path, log: Log,
                   progress: Progress | None) -> Settled:
    """Evaluate a target's artifacts together until the decision is settled, then each one's suite over
    the ID images it saw."""
    from lpmr_edge.suite.settle import SETTLING_FILE, Candidate, evaluate_seen, settle

    settings = EvalSettings(suite=plan.suite)
    with contextlib.ExitStack() as stack:
        candidates = {}
        for artifact in artifacts:
            runtime = _open(artifact, plan.device, target.threads)
            stack.callback(runtime.close)
            candidates[artifact.name] = Candidate(runtime, results_dir / artifact.name)
        constraints = plan.constraints
        settled = settle(candidates, results_dir / SETTLING_FILE, settings, constraints.objective,
                         constraints.margin(constraints.metric), plan.until, log=log, progress=progress)
        log(f"  settling: {settled.summary()}")
        for name, candidate in candidates.items():
            _evaluate_once(candidate.runtime, candidate.out_dir, plan.suite, log, progress,
                           functools.partial(evaluate_seen, settled, name, candidate, settings, progress),
                           settled.sequential(name))
    return settled


def _evaluate_reference(plan: RunPlan, out_dir: Path, settled: Mapping[str, Settled], log: Log,
                        progress: Progress | None) -> None:
    """The host's torch FP32 reference: on every image, or after settled targets on the images of each
    visited set any candidate saw (the longest prefix of its seeded order)."""
    from lpmr_edge.models import load_model
    from lpmr_edge.runtimes.torch_runtime import TorchRuntime

    runtime = TorchRuntime(load_model(plan.model))
    if not settled:
        _evaluate_once(runtime, out_dir, plan.suite, log, progress)
        return
    covered = reference_images(outcome.records for outcome in settled.values())
    settings = EvalSettings(suite=plan.suite)
    _evaluate_once(runtime, out_dir, plan.suite, log, progress,
                   functools.partial(evaluate, runtime, out_dir, settings, progress, **covered), covered["sequential"])


def export_work(request: Any, out_root: Path, hashes: tuple[str, str], log: Log, progress: Progress | None,
                 inputs: Mapping[str, Any]) -> Path:
    from lpmr_edge.export import export_artifact, export_outcome

    path, current = export_artifact(request, out_root, request_sha256=hashes[0], identity_sha256=hashes[1])
    log(f"{request.name}: {export_outcome(path, current)} -> {path}")
    return path


def suite_work(plan: RunPlan, target: Target, artifact: Path, log: Log, progress: Progress | None,
                inputs: Mapping[str, Any]) -> Collected | None:
    """Evaluate an artifact's suite unless its result is up to date: from another result's outputs when a runtime
    of the same identity made them (scored here), else run its images and return the outputs for the score step
    (``score_work``) to score."""
    results_root = plan.out / "results"
    out_dir = results_root / target.name / artifact.name
    runtime = _open(artifact, plan.device, target.threads)
    try:
        if holds_result(out_dir, runtime.identity, plan.suite, None):
            log(f"  suite: up to date ({out_dir})")
            return None
        source = same_outputs_result(results_root, runtime.identity, plan.suite, out_dir)
        if source is not None:
            evaluate_reusing(runtime, out_dir, source, plan.suite, log, progress, _preprocessed())
            log(f"  suite: done ({out_dir})")
            return None
        return collect(runtime, out_dir, EvalSettings(suite=plan.suite), progress=progress,
                       preprocessed=_preprocessed())
    finally:
        runtime.close()


def score_work(suite_step: str, log: Log, progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    """Score the outputs the suite step ``suite_step`` collected (nothing when it left an up-to-date or reused
    result): the bootstrap is single-threaded, so it runs as a one-thread step beside other work."""
    collected: Collected | None = inputs[suite_step][1]
    if collected is not None:
        finish(collected)
        log(f"  suite: done ({collected.out_dir})")


def settle_work(plan: RunPlan, target: Target, artifacts: Sequence[Path], log: Log, progress: Progress | None,
                 inputs: Mapping[str, Any]) -> Settled:
    return _settle_target(plan, target, artifacts, plan.out / "results" / target.name, log, progress)


def reference_work(plan: RunPlan, log: Log, progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    settled = {name.split(" ", 1)[1]: value[1] for name, value in inputs.items()
               if name.startswith("settle ")}
    _evaluate_reference(plan, plan.out / "results" / HOST_RESULT, settled, log, progress)


def compare_work(plan: RunPlan, target: str, variant: str, candidates: Sequence[Path], log: Log,
                  progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    """Keep the paired comparison of a target's result with the FP32 result the report compares it with
    (``reference_for`` among the target's FP32 results and the host reference) for the report to read."""
    from lpmr_edge.compare import store_comparison
    from lpmr_edge.report import metric_margins
    from lpmr_edge.results import read_result, reference_for

    results_root = plan.out / "results"
    result = read_result(results_root / target / variant)
    references = [read_result(results_root / target / artifact.name) for artifact in candidates]
    reference = reference_for(result, [*references, read_result(results_root / HOST_RESULT)])
    if reference is None:
        return
    against = f"{variant} vs {reference.target}/{reference.variant}"
    try:
        store_comparison(result.directory, reference.directory, None, metric_margins(plan.constraints))
    except UserError as error:  # e.g. settled results that saw different images: the report falls back, as here
        log(f"  compare: {against} not paired ({error})")
        return
    log(f"  compare: {against} kept")


def parity_work(artifacts: Sequence[Path], out: Path, images: int, threads: int, log: Log,
                 progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    _parity(artifacts, out, images, threads, log)


def bench_work(target: Target, artifacts: Sequence[Path], device: str, out: Path, log: Log,
                progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    _bench(target, artifacts, device, out, log)
