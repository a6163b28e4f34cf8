"""The search loop of `lpmr-edge tune` (stages in ``lpmr_edge.tune.space``, rule in ``lpmr_edge.tune.verdict``).

1. the uniform baselines and the knob stage run as trials (in parallel on a sweep engine with more than one
   worker): export, validation-split suite;
2. every trial without a latency is timed in one interleaved benchmark run with uniform INT8 (image tower,
   the target's batch and threads): ``latency.median_ms`` and ``latency.ratio_to_int8``;
3. the accuracy-control (OpenVINO; ece, nll, top1), per-block sensitivity and combined stages start from
   the best feasible knob configuration;
4. the chosen configuration and the uniform baselines are evaluated on the test split, and the chosen one is
   decided against uniform INT8 there (``verdict.test_decision``).

The budget is checked before each stage (a stage that started finishes). Everything lands in ``tune.json``
(atomic) beside ``pareto.png``; trials are kept (``lpmr_edge.tune.trials``) so re-running resumes.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_json, machine_info, now_utc, sha256_json, tool_versions
from lpmr_edge.pick import DEFAULT_MARGINS
from lpmr_edge.suite.config import load_suite
from lpmr_edge.suite.families import FAMILIES, MetricSpec
from lpmr_edge.suite.run import EvalSettings
from lpmr_edge.targets import Target
from lpmr_edge.tune.control import SCORES, controlled_config
from lpmr_edge.tune.space import SearchSpace, TrialConfig, block_configs, sensitivity_blocks, uniform_configs
from lpmr_edge.tune.splits import TEST, Splits, describe_splits, evaluate_split
from lpmr_edge.tune.trials import TrialStore, TrialTask, figures, run_trial, trial_dir
from lpmr_edge.tune.verdict import (
    OBJECTIVE_ALIASES,
    TOP1,
    TuneConstraints,
    best_trial,
    objective_spec,
    pareto_plot,
    test_decision,
    value,
    verdict_text,
)

TUNE_FILE, PLOT_FILE = "tune.json", "pareto.png"
OBJECTIVE_TABLES = {"auroc": "ood", "worst-group": "spurious"}  # suite tables an objective needs besides the ID set
Log = Callable[[str], None]


def tune_suite(suite_name: str, objective: str, limit: int | None) -> Any:
    """The suite trimmed to the families the objective needs (the ID set's family always runs)."""
    suite = load_suite(suite_name)
    name = OBJECTIVE_ALIASES.get(objective.partition(":")[0], objective.partition(":")[0])
    needed = OBJECTIVE_TABLES.get(name)
    if needed and suite.settings(next(f for f in FAMILIES if f.table == needed)) is None:
        raise UserError(f"suite '{suite_name}' does not measure {objective_spec(objective).label}; "
                        "use --suite quick or a suite file with that family")
    drop = {family.table: None for family in FAMILIES if family.table and not family.required and family.table != needed}
    return replace(suite, **drop, limit=limit if limit is not None else suite.limit)


@dataclass(frozen=True)
class TuneRequest:
    """One tune: what to search, under which constraints, where to keep it and how to run trials."""

    model: str
    target: Target
    runtime: str
    objective: str = "ece"
    constraints: TuneConstraints = field(default_factory=TuneConstraints)
    budget_seconds: float | None = None
    out: Path = Path("lpmr-results/tune")
    suite: str = "basic"
    limit: int | None = 2000
    splits: Splits = field(default_factory=Splits)
    space: SearchSpace = field(default_factory=SearchSpace)
    engine: str = "local"
    workers: int = 1
    address: str | None = None
    bench_repeats: int = 30
    bench_seconds: float = 5.0

    @property
    def spec(self) -> MetricSpec:
        return objective_spec(self.objective)


class _Trials:
    """Runs trials (inline or on a sweep engine), skipping finished ones, and keeps their records."""

    def __init__(self, request: TuneRequest, suite: Any, settings: EvalSettings, log: Log) -> None:
        self.request, self.suite, self.settings, self.log = request, suite, settings, log
        self.store = TrialStore(request.out)
        self.context = sha256_json({"model": request.model, "target": request.target.describe(),
                                    "suite": asdict(suite), "splits": asdict(request.splits),
                                    "settings": asdict(settings)})
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped = 0
        self.metrics = tuple({spec.key: spec for spec in (request.spec, TOP1)}.values())
        request.out.mkdir(parents=True, exist_ok=True)
        self.engine = None
        if request.workers > 1 or request.engine != "local":
            from lpmr_edge.sweep.engines import open_engine

            threads = max(1, (os.cpu_count() or 1) // request.workers)
            self.engine = open_engine(request.engine, threads, request.out / "workers.log", request.address,
                                      request.workers)

    def run(self, configs: Sequence[TrialConfig], stage: str) -> list[dict[str, Any]]:
        """Records of ``configs`` (stored ones reused), running the missing trials."""
        pending = []
        for config in dict.fromkeys(configs):
            stored = self.store.get(config.key)
            if stored and stored.get("context") == self.context:
                self.skipped += config.key not in self.records
                self.records[config.key] = stored
            else:
                pending.append(TrialTask(self.request.model, self.request.target, config, stage, self.request.out,
                                         self.suite, self.request.splits, self.settings, self.request.objective))
        if pending:
            self.log(f"{stage}: {len(pending)} trial(s) to run, {len(configs) - len(pending)} stored")
        for outcome in self._execute(pending):  # stored as each finishes: a killed tune loses only running trials
            record = {**outcome, "context": self.context}
            self.store.put(record)
            self.records[record["key"]] = record
            self.log(f"  {record['label']}: {self._summary(record)}")
        return [self.refreshed(self.records[config.key]) for config in configs]

    def _execute(self, tasks: Sequence[TrialTask]) -> Iterator[dict[str, Any]]:
        """Each task's outcome as it finishes."""
        if self.engine is None:
            for task in tasks:
                yield self._guarded(lambda task=task: run_trial(task), task)
            return
        futures = {self.engine.submit(run_trial, task): task for task in tasks}
        for future in as_completed(futures):
            yield self._guarded(future.result, futures[future])

    @staticmethod
    def _guarded(call: Callable[[], dict[str, Any]], task: TrialTask) -> dict[str, Any]:
        """A trial's record, or a failed record naming the error (a configuration that cannot export)."""
        try:
            return call()
        except (UserError, RuntimeError, ValueError) as error:
            config = task.config
            return {"key": config.key, "config": config.describe(), "label": config.label, "uniform": config.uniform,
                    "stage": task.stage, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"[:300],
                    "validation": None}

    def refreshed(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its validation figures re-read for this tune's objective (a resumed tune may ask
        for another objective than the one that ran the trial)."""
        if record.get("error") or self.request.spec.key in (record.get("validation") or {}):
            return record
        from lpmr_edge.manifest import read_json

        metrics = read_json(Path(record["validation_dir"]) / "metrics.json", "validation result")["metrics"]
        return {**record, "validation": figures(self.metrics, metrics)}

    def _summary(self, record: dict[str, Any]) -> str:
        if record.get("error"):
            return f"failed ({record['error']})"
        shown = record["validation"]
        return ", ".join(f"validation {spec.label} {shown[spec.key]['value']:.4g}"
                         + (f" ({shown[spec.key]['status']})" if shown[spec.key].get("status") else "")
                         for spec in self.metrics if shown.get(spec.key))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def measure_latency(trials: _Trials, int8: dict[str, Any], request: TuneRequest, log: Log) -> None:
    """Time every trial lacking a latency with uniform INT8 in one interleaved run; store the figures."""
    from lpmr_edge.bench import BenchSettings, RuntimeSource, benchmark

    missing = [record for record in trials.records.values() if not record.get("latency") and not record.get("error")]
    if not missing:
        return
    sources = list(dict.fromkeys([int8["artifact"], *(record["artifact"] for record in missing)]))
    log(f"timing {len(sources)} artifact(s) interleaved (image tower, batch {request.target.image_batch}, "
        f"{request.target.threads} threads)")
    settings = BenchSettings(batches=(request.target.image_batch,), threads=request.target.threads,
                             repeats=request.bench_repeats, max_seconds=request.bench_seconds, rounds=5)
    rows = {row["source"]: row for row in benchmark([RuntimeSource(artifact=source) for source in sources],
                                                    settings)["results"]}
    reference = rows[int8["artifact"]]["median_ms"]
    for record in missing:
        row = rows[record["artifact"]]
        record["latency"] = {"median_ms": row["median_ms"], "p90_ms": row["p90_ms"], "batch": row["batch"],
                             "threads": row["threads"], "ratio_to_int8": row["median_ms"] / reference,
                             "int8_median_ms_same_run": reference, "measured": now_utc()}
        trials.store.put(record)


def _over(start: float, request: TuneRequest) -> bool:
    return request.budget_seconds is not None and time.monotonic() - start >= request.budget_seconds


def _candidates(records: Sequence[dict[str, Any]], request: TuneRequest, fp32_top1: float | None) -> list[dict[str, Any]]:
    """Quantized trials (not the fp32 / int4-w baselines) that meet the constraints on validation."""
    return [record for record in records
            if not record.get("error") and not (record["uniform"] and record["config"]["precision"] != "int8")
            and not request.constraints.violations(record, fp32_top1, request.spec)]


def tune(request: TuneRequest, log: Log = print) -> dict[str, Any]:
    """Run (or resume) a tune; write ``tune.json`` and ``pareto.png`` under ``request.out``; return the record."""
    from lpmr_edge.models import load_model

    start = time.monotonic()
    spec, out = request.spec, Path(request.out)
    suite = tune_suite(request.suite, request.objective, request.limit)
    settings = EvalSettings(suite=suite.name, seed=request.splits.seed)
    request.target.runtime(request.runtime)  # the target must list the runtime
    trials = _Trials(request, suite, settings, log)
    stages: list[str] = []
    try:
        uniform = {record["config"]["precision"]: record
                   for record in trials.run(uniform_configs(request.runtime), "uniform")}
        if uniform["int8"].get("error") or uniform["fp32"].get("error"):
            raise UserError(f"the uniform baselines failed: {uniform['int8'].get('error') or uniform['fp32']['error']}")
        knob_records = trials.run(request.space.knob_configs(request.runtime), "knobs")
        stages.append("knobs")
        measure_latency(trials, uniform["int8"], request, log)
        fp32_top1 = value(uniform["fp32"], TOP1)
        best_knob = best_trial(_candidates([trials.records[r["key"]] for r in knob_records], request, fp32_top1), spec)
        base = TrialConfig.from_json(best_knob["config"]) if best_knob else None
        if base and request.space.accuracy_control and request.runtime == "openvino" and spec.key in SCORES \
                and not _over(start, request):
            log("accuracy-control: nncf.quantize_with_accuracy_control on the validation split's "
                f"{spec.label}")
            trials.run([controlled_config(out, request.model, base, suite, request.splits, settings, spec.key,
                                          DEFAULT_MARGINS[spec.key])], "accuracy-control")
            stages.append("accuracy-control")
        blocks = sensitivity_blocks(load_model(request.model)) if request.space.sensitivity else []
        if base and blocks and not _over(start, request):
            sensitivity = trials.run(block_configs(base, blocks), "sensitivity")
            stages.append("sensitivity")
            helpful = sorted((record for record in sensitivity if value(record, spec) is not None
                              and spec.better(value(record, spec), value(best_knob, spec))),  # type: ignore[arg-type]
                             key=lambda record: -spec.goodness(value(record, spec)))  # type: ignore[arg-type]
            kept = [block for record in helpful[:request.space.combine]
                    for block in record["config"]["knobs"]["keep_fp"]]
            if len(helpful) >= 2 and request.space.combine >= 2 and not _over(start, request):
                trials.run([base.with_knobs(keep_fp=tuple(sorted(set(kept))))], "combined")
                stages.append("combined")
        measure_latency(trials, uniform["int8"], request, log)  # the later stages' trials
        records = [trials.refreshed(record) for record in trials.records.values()]
    finally:
        trials.close()
    fp32_top1 = value(uniform["fp32"], TOP1)
    chosen = best_trial(_candidates(records, request, fp32_top1), spec)
    test = _test_phase(request, suite, settings, chosen, uniform, log)
    decision = test.pop("decision")
    beat = chosen is not None and chosen["key"] != uniform["int8"]["key"]
    verdict = verdict_text(spec, chosen, decision if beat else None, len(records),
                           request.constraints.violations(trials.records[uniform["int8"]["key"]], fp32_top1, spec))
    plot = pareto_plot(records, spec, chosen["key"] if chosen else None, out / PLOT_FILE,
                       f"{request.model} on {request.target.name} ({request.runtime}): {spec.label}")
    record = {
        "model": request.model, "target": request.target.describe(), "runtime": request.runtime,
        "objective": request.objective, "objective_metric": spec.key, "constraints": asdict(request.constraints),
        "budget_seconds": request.budget_seconds, "search_seconds": round(time.monotonic() - start, 1),
        "stages": stages, "space": request.space.describe(), "suite": asdict(suite),
        "splits": describe_splits(suite, request.splits, settings),
        "trials": {"tried": len(records), "resumed": trials.skipped, "records": records},
        "chosen": None if chosen is None else {
            "key": chosen["key"], "label": chosen["label"], "config": chosen["config"], "artifact": chosen["artifact"],
            "kept_fp": chosen["config"]["knobs"].get("keep_fp", []), "validation": chosen["validation"],
            "latency": chosen.get("latency")},
        "test": test, "decision": decision.to_json() if decision else None, "verdict": verdict,
        "pareto_plot": str(plot) if plot else None, "workers": request.workers, "engine": request.engine,
        "load_average": list(os.getloadavg()), "machine": machine_info(), "tool_versions": tool_versions(),
        "created": now_utc(),
    }
    atomic_write_json(out / TUNE_FILE, record)
    return record


def _test_phase(request: TuneRequest, suite: Any, settings: EvalSettings, chosen: dict[str, Any] | None,
                uniform: dict[str, dict[str, Any]], log: Log) -> dict[str, Any]:
    """The chosen configuration and the uniform baselines on the test split (real runtime), and the paired
    decision of the chosen one against uniform INT8 (None when the chosen one is uniform INT8)."""
    from lpmr_edge.runtimes.factory import open_runtime

    spec = request.spec
    evaluated = {f"uniform {precision}": record for precision, record in uniform.items() if not record.get("error")}
    if chosen is not None:
        evaluated["chosen"] = chosen
    log(f"test split: evaluating {', '.join(evaluated)}")
    results = {}
    for name, record in evaluated.items():
        directory = trial_dir(request.out, TrialConfig.from_json(record["config"])) / TEST
        result = evaluate_split(open_runtime(artifact=Path(record["artifact"])), directory, suite, request.splits,
                                TEST, settings)
        results[name] = {"label": record["label"], "dir": str(directory), "n": result["n"],
                         "figures": figures((spec, TOP1), result["metrics"])}
    decision = None
    if chosen is not None and chosen["key"] != uniform["int8"]["key"]:
        decision = test_decision(spec, Path(results["chosen"]["dir"]), Path(results["uniform int8"]["dir"]),
                                 DEFAULT_MARGINS.get(spec.key.partition(":")[0], 0.0))
    return {"results": results, "decision": decision}
