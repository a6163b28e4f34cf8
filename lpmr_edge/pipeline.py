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
"""
from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpmr_edge.manifest import atomic_write_json, read_json, sha256_json
from lpmr_edge.pick import Choice, Constraints
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.sequential import SettleSettings
from lpmr_edge.suite import METRICS_FILE, EvalSettings, Progress, evaluate, load_suite, progress_task
from lpmr_edge.suite.settle import Settled, objective_loss, reference_images
from lpmr_edge.targets import Target, load_target

Log = Callable[[str], None]
HOST_ARCH = platform.machine()


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


def _evaluate_once(runtime: Runtime, out_dir: Path, suite: str, log: Log, progress: Progress | None,
                   evaluate_suite: Callable[[], object] | None = None, sequential: dict | None = None) -> None:
    """Evaluate unless ``out_dir`` holds a result of the same runtime, suite and ``metrics["sequential"]``
    (None: a full evaluation); ``evaluate_suite`` replaces the full evaluation (settled runs)."""
    metrics = out_dir / METRICS_FILE
    if metrics.is_file() and (out_dir / "manifest.json").is_file() and \
            read_json(out_dir / "manifest.json", "results manifest")["runtime"]["identity"] == runtime.identity \
            and sha256_json(read_json(metrics, "metrics").get("suite")) == sha256_json(asdict(load_suite(suite))) \
            and read_json(metrics, "metrics")["metrics"].get("sequential") == sequential:
        log(f"  suite: up to date ({out_dir})")
        return
    if evaluate_suite is None:
        evaluate(runtime, out_dir, EvalSettings(suite=suite), progress=progress)
    else:
        evaluate_suite()
    log(f"  suite: done ({out_dir})")


def _parity(artifacts: Sequence[Path], out: Path, images: int, log: Log) -> None:
    from lpmr_edge.manifest import verify_manifest
    from lpmr_edge.parity import check_parity

    key = sha256_json({"artifacts": [verify_manifest(a)["files"] for a in artifacts], "n": images})
    if _is_done(out, key):
        log("  parity: up to date")
        return
    checks = []
    for artifact in artifacts:
        check = check_parity(artifact, n=images)
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


def run(plan: RunPlan, log: Log = print, progress: Progress | None = None) -> RunOutcome:
    """Run the whole pipeline for every target of the plan; returns the picker's choice per target (and
    where settling ended per target with ``plan.until``). ``progress`` (as the suite's) shows the steps done
    and each suite's images."""
    from lpmr_edge.export import export_target, plan_exports
    from lpmr_edge.pick import pick
    from lpmr_edge.report import write_report
    from lpmr_edge.results import load_results

    targets = [load_target(name) for name in plan.targets]
    results_root = plan.out / "results"
    artifacts_per_target = [len(plan_exports(plan.model, target)[0]) for target in targets]
    steps = 2 + sum(2 * count + 2 for count in artifacts_per_target)  # reference, per target, report
    settled: dict[str, Settled] = {}
    with progress_task(progress, f"lpmr-edge run ({steps} steps)", steps) as step:
        done = step or (lambda n: None)
        if plan.until is None:
            log(f"reference: torch FP32 on the host ({plan.model})")
            _evaluate_reference(plan, results_root / "host" / "torch-fp32", settled, log, progress)
            done(1)
        for target in targets:
            log(f"target {target.name} ({target.arch}, {target.threads} threads, device {plan.device})")
            artifacts = export_target(plan.model, target, out_root=plan.out / "artifacts",
                                      log=lambda m: log(f"  {m}"), advance=done)
            _parity(artifacts, results_root / target.name / "parity.json", plan.parity_images, log)
            done(1)
            if plan.until is not None and len(artifacts) > 1:
                settled[target.name] = _settle_target(plan, target, artifacts, results_root / target.name, log,
                                                      progress)
                done(len(artifacts))
            elif plan.until is not None:
                log("  settling: one artifact, nothing to decide between; evaluating every image")
            for artifact in artifacts if target.name not in settled else ():
                runtime = _open(artifact, plan.device, target.threads)
                try:
                    _evaluate_once(runtime, results_root / target.name / artifact.name, plan.suite, log, progress)
                finally:
                    runtime.close()
                done(1)
            _bench(target, artifacts, plan.device, results_root / target.name / "bench.json", log)
            done(1)
        if plan.until is not None:
            log(f"reference: torch FP32 on the host ({plan.model})")
            _evaluate_reference(plan, results_root / "host" / "torch-fp32", settled, log, progress)
            done(1)
        write_report([results_root], plan.out / "report", plan.constraints)
        done(1)
    return RunOutcome(pick(load_results([results_root]), plan.constraints), settled)
