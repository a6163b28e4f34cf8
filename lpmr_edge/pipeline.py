"""One command from model to decision: export → parity → suite → bench → report → pick, per target.

Every step writes its output atomically and is skipped on a re-run when that output is already
there and still matches (artifacts by manifest hash, suite results by runtime identity, parity and
bench by the artifact identities they cover), so a killed run resumes where it stopped.

Layout under ``out``::

    artifacts/<target>/<runtime>-<precision>/   exported artifacts (manifest.json)
    results/host/torch-fp32/                    the FP32 torch reference on the host
    results/<target>/<runtime>-<precision>/     suite results per artifact (metrics.json, outputs/)
    results/<target>/parity.json, bench.json    parity checks and latency/memory
    report/                                     report.html, report.md, report.json, plots/

With ``RunPlan.until`` (``--until-settled``) the artifacts of a target are evaluated together, shard by
shard, on the ID set until the decision on the objective is settled or the budget is spent
(``lpmr_edge.suite.settle``; record in ``results/<target>/settling.json``); each artifact's suite then
covers the ID images it saw, and the host reference (evaluated after the targets) the images any saw.

Steps that do not need each other's output run concurrently (``RunPlan.jobs``): each export, each artifact's
suite (two steps: its images through the runtime at the target's threads, then the single-threaded scoring at
one thread, which can run beside other one-thread work or a suite of a target with fewer threads than cores),
each target's parity check, the host reference and each quantized result's paired comparison with its FP32
reference (kept for the report, ``lpmr_edge.compare.store_comparison``; one thread) are steps of a
dependency graph run on the sweep's local engine (``lpmr_edge.sweep.engines.run_steps``) with at most
``os.cpu_count()`` threads in flight; a step counts as its target's threads (an export as ``EXPORT_THREADS``,
the host reference as the smallest target's), caps its process at that many, and a latency benchmark runs
alone. Every step computes exactly what it computes in a serial run (``jobs=1``, in this process), so results
do not depend on ``jobs``.

Work a step would repeat is not redone: an export whose files another target's artifact already holds (the same
``export_identity``: e.g. x86's and arm's ExecuTorch artifacts differ only in threads and architecture, which do
not reach the files) runs after that artifact's export and takes its files (``lpmr_edge.export.reuse_files``);
each process keeps the evaluation sets it preprocessed for its next suite (``PREPROCESSED_BYTES``); and an
artifact whose runtime identity (runtime, precision, files' sha256, executed precision; the device for an
on-device runtime) matches one already evaluated on this machine with the same suite (e.g. a target's ExecuTorch artifact byte-identical to another target's, both run here) takes
that result's per-sample outputs instead of running its images again (``lpmr_edge.suite.reuse``); its manifest
records ``reused_outputs`` (from which result directory, which sets) and its metrics are scored from them
(taken from that result when it scored the very same outputs with the same suite and seed).
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpmr_edge.data import PreprocessedSets
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_json, read_json, sha256_json
from lpmr_edge.pick import Choice, Constraints
from lpmr_edge.results import HOST_TARGET, REFERENCE_PRECISION
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.sequential import SettleSettings
from lpmr_edge.suite import Collected, EvalSettings, Progress, collect, evaluate, finish, progress_task
from lpmr_edge.suite.reuse import evaluate_reusing, holds_result, same_outputs_result
from lpmr_edge.suite.settle import Settled, reference_images
from lpmr_edge.suite.settle_plan import objective_loss
from lpmr_edge.sweep.engines import Engine, InlineEngine, LocalEngine, Step, StepOutcome, run_steps
from lpmr_edge.targets import Target, load_target

Log = Callable[[str], None]
HOST_ARCH = platform.machine()
EXPORT_THREADS = 1  # an export is mostly single-threaded Python (tracing, lowering); its process is capped at this
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


@dataclass(frozen=True)
class RunOutcome:
    """The picker's choice per target and, with ``--until-settled``, where each target's settling ended."""

    choices: list[Choice]
    settled: dict[str, Settled] = field(default_factory=dict)


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


@contextlib.contextmanager
def _compute_threads(threads: int) -> Iterator[None]:
    """Cap this process's compute threads (OpenMP, torch, and the export subprocesses it starts) at ``threads``
    for the block; the previous setting is restored after it."""
    import torch

    from lpmr_edge.sweep.jobs import configure_threads

    before = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    configure_threads(threads)
    try:
        yield
    finally:
        if before[0] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before[0]
        torch.set_num_threads(before[1])


Work = Callable[[Log, "Progress | None", Mapping[str, Any]], Any]


def _in_step(work: Work, threads: int, progress: Progress | None, inputs: Mapping[str, Any]) -> tuple[list[str], Any]:
    """Run one step's ``work`` here (the driver, or a pool worker) at ``threads`` compute threads; returns the
    lines it logged (printed by the driver when the step finishes) and its value."""
    lines: list[str] = []
    with _compute_threads(threads):
        return lines, work(lines.append, progress, inputs)


def _export_work(request: Any, out_root: Path, hashes: tuple[str, str], log: Log, progress: Progress | None,
                 inputs: Mapping[str, Any]) -> Path:
    from lpmr_edge.export import export_artifact, export_outcome

    path, current = export_artifact(request, out_root, request_sha256=hashes[0], identity_sha256=hashes[1])
    log(f"{request.name}: {export_outcome(path, current)} -> {path}")
    return path


def _suite_work(plan: RunPlan, target: Target, artifact: Path, log: Log, progress: Progress | None,
                inputs: Mapping[str, Any]) -> Collected | None:
    """Evaluate an artifact's suite unless its result is up to date: from another result's outputs when a runtime
    of the same identity made them (scored here), else run its images and return the outputs for the score step
    (``_score_work``) to score."""
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


def _score_work(suite_step: str, log: Log, progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    """Score the outputs the suite step ``suite_step`` collected (nothing when it left an up-to-date or reused
    result): the bootstrap is single-threaded, so it runs as a one-thread step beside other work."""
    collected: Collected | None = inputs[suite_step][1]
    if collected is not None:
        finish(collected)
        log(f"  suite: done ({collected.out_dir})")


def _settle_work(plan: RunPlan, target: Target, artifacts: Sequence[Path], log: Log, progress: Progress | None,
                 inputs: Mapping[str, Any]) -> Settled:
    return _settle_target(plan, target, artifacts, plan.out / "results" / target.name, log, progress)


def _reference_work(plan: RunPlan, log: Log, progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    settled = {name.split(" ", 1)[1]: value[1] for name, value in inputs.items()
               if name.startswith("settle ")}
    _evaluate_reference(plan, plan.out / "results" / HOST_RESULT, settled, log, progress)


@dataclass
class _Graph:
    """The steps of a run in serial order, with each step's log prefix and its weight in the progress bar."""

    steps: list[Step] = field(default_factory=list)
    prefixes: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    progress: Progress | None = None  # handed to steps run in this process

    def add(self, name: str, prefix: str, work: Work, threads: int, after: Sequence[str] = (),
            exclusive: bool = False, weight: int = 1) -> str:
        call = functools.partial(_in_step, work, threads, self.progress)
        self.steps.append(Step(name, call, threads, tuple(after), exclusive))
        self.prefixes[name], self.weights[name] = prefix, weight
        return name


def _add_suite(plan: RunPlan, graph: _Graph, target: Target, artifact: Path, after: Sequence[str],
               on_device: bool) -> str:
    """Add an artifact's suite as two steps: its images through the runtime at the target's threads, then the
    scoring at one thread; returns the scoring step's name (the result is complete when it ends)."""
    name, prefix = f"{target.name}/{artifact.name}", f"{target.name}: "
    suite = graph.add(f"suite {name}", prefix, functools.partial(_suite_work, plan, target, artifact), target.threads,
                      after, on_device)
    return graph.add(f"score {name}", prefix, functools.partial(_score_work, suite), 1, [suite])


def _host_threads(targets: Sequence[Target]) -> int:
    """Threads of the host's torch reference: the smallest target's, within the cores."""
    return max(1, min([os.cpu_count() or 1, *(target.threads for target in targets)]))


def _plan_graph(plan: RunPlan, targets: Sequence[Target], graph: _Graph, log: Log) -> None:
    """Add every step of ``plan`` to ``graph``: the reference (first, or after the targets' settling), then per
    target its exports, parity, suites (or settling) and bench."""
    from lpmr_edge.devices.base import in_process
    from lpmr_edge.export import artifact_path, fingerprints, plan_exports
    from lpmr_edge.models import load_model

    reference = functools.partial(_reference_work, plan)
    if plan.until is None:
        graph.add("reference", "reference: ", reference, _host_threads(targets))
    clip = load_model(plan.model)
    on_device = not in_process(plan.device)  # what runs on the device runs alone
    settles = []
    first_exports: dict[str, str] = {}  # export identity -> the step exporting it first (later ones reuse its files)
    first_results: dict[str, str] = {}  # export identity -> the step finishing its first result (later ones may reuse
    # its per-sample outputs: ``same_outputs_result``, so their suites wait for it)
    evaluated: dict[str, list[tuple[Path, str, str]]] = {}  # target -> (artifact, precision, its evaluating step)
    for target in targets:
        requests, notes = plan_exports(plan.model, target)
        log(f"target {target.name} ({target.arch}, {target.threads} threads, device {plan.device}): "
            f"{len(requests)} artifacts")
        for note in notes:
            log(f"  note: {note}")
        prefix, out_root = f"{target.name}: ", plan.out / "artifacts"
        artifacts = [artifact_path(out_root, request).resolve() for request in requests]
        exports, identities = [], []
        for request in requests:
            hashes = fingerprints(request, clip.weights_sha256)
            identities.append(hashes[1])
            exports.append(graph.add(f"export {target.name}/{request.name}", prefix,
                                     functools.partial(_export_work, request, out_root, hashes),
                                     EXPORT_THREADS, [first_exports[hashes[1]]] if hashes[1] in first_exports else []))
            first_exports.setdefault(hashes[1], exports[-1])
        graph.add(f"parity {target.name}", prefix, functools.partial(
            _parity_work, artifacts, plan.out / "results" / target.name / "parity.json", plan.parity_images,
            target.threads), target.threads, exports)
        if plan.until is not None and len(artifacts) > 1:
            settles.append(graph.add(f"settle {target.name}", prefix,
                                     functools.partial(_settle_work, plan, target, artifacts), target.threads,
                                     exports, on_device, weight=len(artifacts)))
            evaluated[target.name] = [(artifact, request.precision, settles[-1])
                                      for request, artifact in zip(requests, artifacts)]
        else:
            if plan.until is not None:
                log(f"  {target.name}: settling: one artifact, nothing to decide between; evaluating every image")
            evaluated[target.name] = [(artifact, request.precision, _add_suite(plan, graph, target, artifact, [
                export, *([first_results[identity]] if identity in first_results else [])], on_device))
                for request, export, artifact, identity in zip(requests, exports, artifacts, identities)]
            for identity, (_, _, step) in zip(identities, evaluated[target.name]):
                first_results.setdefault(identity, step)
        graph.add(f"bench {target.name}", prefix,
                  functools.partial(_bench_work, target, artifacts, plan.device,
                                    plan.out / "results" / target.name / "bench.json"),
                  target.threads, exports, exclusive=True)
    if plan.until is not None:
        graph.add("reference", "reference: ", reference, _host_threads(targets), settles)
    for target in targets:
        steps = evaluated[target.name]
        candidates = [artifact for artifact, precision, _ in steps if precision == REFERENCE_PRECISION]
        references = {step for _, precision, step in steps if precision == REFERENCE_PRECISION}
        for artifact, precision, step in steps:
            if precision != REFERENCE_PRECISION:
                graph.add(f"compare {target.name}/{artifact.name}", f"{target.name}: ",
                          functools.partial(_compare_work, plan, target.name, artifact.name, candidates), 1,
                          sorted({step, "reference", *references}))


def _compare_work(plan: RunPlan, target: str, variant: str, candidates: Sequence[Path], log: Log,
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


def _parity_work(artifacts: Sequence[Path], out: Path, images: int, threads: int, log: Log,
                 progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    _parity(artifacts, out, images, threads, log)


def _bench_work(target: Target, artifacts: Sequence[Path], device: str, out: Path, log: Log,
                progress: Progress | None, inputs: Mapping[str, Any]) -> None:
    _bench(target, artifacts, device, out, log)


def open_step_engine(jobs: int | None, steps: int) -> tuple[Engine, int]:
    """The engine a run's steps go to and the thread budget: up to ``jobs`` steps at once (None: one per core,
    at most one per step) in a spawn process pool whose output goes where this process's goes (as an export
    subprocess's does), or in this process for one; the budget is the cores."""
    cores = os.cpu_count() or 1
    workers = min(jobs or cores, steps)
    return (InlineEngine(), cores) if workers <= 1 else (LocalEngine(EXPORT_THREADS, None, workers), cores)


def run(plan: RunPlan, log: Log = print, progress: Progress | None = None) -> RunOutcome:
    """Run the whole pipeline for every target of the plan; returns the picker's choice per target (and
    where settling ended per target with ``plan.until``). Independent steps run concurrently (``plan.jobs``);
    each finished step logs its lines, a failed one a one-line error, and a failure stops only the steps
    that need its output (a UserError after the others naming what failed; a re-run resumes).
    ``progress`` (as the suite's) shows the steps done, the running ones and, in this process, each suite's images."""
    from lpmr_edge.pick import pick
    from lpmr_edge.report import write_report
    from lpmr_edge.results import load_results

    targets = [load_target(name) for name in plan.targets]
    results_root = plan.out / "results"
    most_steps = 1 + sum(4 * len(target.runtime(name).precisions) + 2 for target in targets for name in target.runtimes)
    with contextlib.ExitStack() as running:
        graph = _Graph()
        engine, budget = open_step_engine(plan.jobs, most_steps)
        running.callback(engine.close)
        graph.progress = progress if isinstance(engine, InlineEngine) else None
        _plan_graph(plan, targets, graph, log)
        log(f"{len(graph.steps)} steps, up to {engine.slots} at once within {budget} threads")
        total = sum(graph.weights.values()) + 1  # and the report
        bars: dict[str, contextlib.ExitStack] = {}
        with progress_task(progress, f"lpmr-edge run ({total} steps)", total) as step:
            done = step or (lambda n: None)

            def started(started_step: Step) -> None:
                bars[started_step.name] = contextlib.ExitStack()
                bars[started_step.name].enter_context(progress_task(progress, started_step.name, 1))

            def finished(finished_step: Step, outcome: StepOutcome) -> None:
                bars.pop(finished_step.name, contextlib.ExitStack()).close()
                prefix = graph.prefixes[finished_step.name]
                for line in outcome.value[0] if outcome.error is None else ():
                    log(f"{prefix}{line.strip()}")
                if outcome.error is not None:
                    log(f"{prefix}{finished_step.name}: {'not run, ' if outcome.skipped else 'failed: '}{outcome.error}")
                done(graph.weights[finished_step.name])

            outcomes = run_steps(engine, graph.steps, budget, started, finished)
            failed = [outcome for outcome in outcomes.values() if outcome.error and not outcome.skipped]
            if failed:
                raise UserError(f"{len(failed)} step(s) failed ({'; '.join(f'{o.name}: {o.error}' for o in failed)}); "
                                "fix that and run the same command again: finished steps are kept")
            choices = pick(load_results([results_root]), plan.constraints)
            write_report([results_root], plan.out / "report", plan.constraints, choices=choices)
            done(1)
    settled = {name.split(" ", 1)[1]: outcome.value[1] for name, outcome in outcomes.items()
               if name.startswith("settle ")}
    return RunOutcome(choices, settled)
