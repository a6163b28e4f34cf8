"""One command from model to decision: export → parity → suite → bench → report → pick, per target.

This module plans a run's steps into a dependency graph and runs it; what each step does is
``lpmr_edge.pipeline.steps``. Every step writes its output atomically and is skipped on a re-run when that
output is already there and still matches, so a killed run resumes where it stopped.

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
on-device runtime) matches one already evaluated on this machine with the same suite (e.g. a target's
ExecuTorch artifact byte-identical to another target's, both run here) takes that result's per-sample outputs
instead of running its images again (``lpmr_edge.suite.reuse``); its manifest records ``reused_outputs`` (from
which result directory, which sets) and its metrics are scored from them (taken from that result when it scored
the very same outputs with the same suite and seed). A comparison of two such results takes the comparison of
the two they were scored alike with (``store_comparison``), so it runs after that one.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.pick import Choice
from lpmr_edge.pipeline.steps import (
    Log,
    RunPlan,
    bench_work,
    compare_work,
    export_work,
    parity_work,
    reference_work,
    score_work,
    settle_work,
    suite_work,
)
from lpmr_edge.results import REFERENCE_PRECISION
from lpmr_edge.suite import Progress, progress_task
from lpmr_edge.suite.settle import Settled
from lpmr_edge.sweep.engines import Engine, InlineEngine, LocalEngine, Step, StepOutcome, run_steps
from lpmr_edge.targets import Target, load_target

__all__ = ["RunOutcome", "RunPlan", "open_step_engine", "run"]
EXPORT_THREADS = 1  # an export is mostly single-threaded Python (tracing, lowering); its process is capped at this


@dataclass(frozen=True)
class RunOutcome:
    """The picker's choice per target and, with ``--until-settled``, where each target's settling ended."""

    choices: list[Choice]
    settled: dict[str, Settled] = field(default_factory=dict)


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
    suite = graph.add(f"suite {name}", prefix, functools.partial(suite_work, plan, target, artifact), target.threads,
                      after, on_device)
    return graph.add(f"score {name}", prefix, functools.partial(score_work, suite), 1, [suite])


def _host_threads(targets: Sequence[Target]) -> int:
    """Threads of the host's torch reference: the smallest target's, within the cores."""
    return max(1, min([os.cpu_count() or 1, *(target.threads for target in targets)]))


def _plan_graph(plan: RunPlan, targets: Sequence[Target], graph: _Graph, log: Log) -> None:
    """Add every step of ``plan`` to ``graph``: the reference (first, or after the targets' settling), then per
    target its exports, parity, suites (or settling) and bench."""
    from lpmr_edge.devices.base import in_process
    from lpmr_edge.export import artifact_path, fingerprints, plan_exports
    from lpmr_edge.models import load_model

    reference = functools.partial(reference_work, plan)
    if plan.until is None:
        graph.add("reference", "reference: ", reference, _host_threads(targets))
    clip = load_model(plan.model)
    on_device = not in_process(plan.device)  # what runs on the device runs alone
    settles = []
    first_exports: dict[str, str] = {}  # export identity -> the step exporting it first (later ones reuse its files)
    # (export identity, precision) -> the step finishing its first result (later ones may reuse its per-sample
    # outputs: ``same_outputs_result``, so their suites wait for it)
    first_results: dict[tuple[str, str], str] = {}
    evaluated: dict[str, list[tuple[Path, str, str, tuple[str, str]]]] = {}  # target -> (artifact, precision, its
    # evaluating step, (export identity, precision))
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
            identities.append((hashes[1], request.precision))
            exports.append(graph.add(f"export {target.name}/{request.name}", prefix,
                                     functools.partial(export_work, request, out_root, hashes),
                                     EXPORT_THREADS, [first_exports[hashes[1]]] if hashes[1] in first_exports else []))
            first_exports.setdefault(hashes[1], exports[-1])
        graph.add(f"parity {target.name}", prefix, functools.partial(
            parity_work, artifacts, plan.out / "results" / target.name / "parity.json", plan.parity_images,
            target.threads), target.threads, exports)
        if plan.until is not None and len(artifacts) > 1:
            settles.append(graph.add(f"settle {target.name}", prefix,
                                     functools.partial(settle_work, plan, target, artifacts), target.threads,
                                     exports, on_device, weight=len(artifacts)))
            evaluated[target.name] = [(artifact, request.precision, settles[-1], identity)
                                      for request, artifact, identity in zip(requests, artifacts, identities)]
        else:
            if plan.until is not None:
                log(f"  {target.name}: settling: one artifact, nothing to decide between; evaluating every image")
            evaluated[target.name] = [(artifact, request.precision, _add_suite(plan, graph, target, artifact, [
                export, *([first_results[identity]] if identity in first_results else [])], on_device), identity)
                for request, export, artifact, identity in zip(requests, exports, artifacts, identities)]
            for _, _, step, identity in evaluated[target.name]:
                first_results.setdefault(identity, step)
        graph.add(f"bench {target.name}", prefix,
                  functools.partial(bench_work, target, artifacts, plan.device,
                                    plan.out / "results" / target.name / "bench.json"),
                  target.threads, exports, exclusive=True)
    if plan.until is not None:
        graph.add("reference", "reference: ", reference, _host_threads(targets), settles)
    # (export identity, precision) -> its first comparison (later ones may take it over:
    # ``lpmr_edge.compare.store_comparison``, so they wait for it)
    first_compares: dict[tuple[str, str], str] = {}
    for target in targets:
        steps = evaluated[target.name]
        candidates = [artifact for artifact, precision, _, _ in steps if precision == REFERENCE_PRECISION]
        references = {step for _, precision, step, _ in steps if precision == REFERENCE_PRECISION}
        for artifact, precision, step, identity in steps:
            if precision != REFERENCE_PRECISION:
                first = [first_compares[identity]] if identity in first_compares else []
                first_compares.setdefault(identity, graph.add(
                    f"compare {target.name}/{artifact.name}", f"{target.name}: ",
                    functools.partial(compare_work, plan, target.name, artifact.name, candidates), 1,
                    sorted({step, "reference", *references, *first})))


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
