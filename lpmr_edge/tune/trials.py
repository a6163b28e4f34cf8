"""Trials: run one configuration (export, evaluate on the validation split) and keep its record.

Layout under the tune directory::

    trials/<key>.json                      the record (atomic JSON): configuration, stage, artifact,
                                           validation figures, latency once measured
    trials/<key>/artifacts/<target>/...    the exported artifact (like any other: manifest.json inside)
    trials/<key>/validation/               its validation result (metrics.json, manifest.json, outputs/)

A trial whose record has validation figures is finished: re-running the tune skips it (its latency is
measured again only if missing). ``run_trial`` is a plain function of a picklable ``TrialTask`` so that the
sweep engines (``lpmr_edge.sweep.engines``) can run trials in other processes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import MANIFEST_NAME, atomic_write_json, read_json
from lpmr_edge.results import read_estimate
from lpmr_edge.suite.families import MetricSpec
from lpmr_edge.suite.run import EvalSettings
from lpmr_edge.targets import Target, load_target
from lpmr_edge.tune.space import TrialConfig
from lpmr_edge.tune.splits import VALIDATION, Splits, evaluate_split
from lpmr_edge.tune.verdict import TOP1, objective_spec

TRIALS_DIR = "trials"


@dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs to run one trial."""

    model: str
    target: Target
    config: TrialConfig
    stage: str
    root: Path  # the tune directory
    suite: Any
    splits: Splits
    settings: EvalSettings
    objective: str  # the tune objective (its figures and top-1 are read from the validation result)


def trial_dir(root: Path, config: TrialConfig) -> Path:
    """Where a configuration's artifact and validation result live."""
    return Path(root) / TRIALS_DIR / config.key


def figures(spec_list: tuple[MetricSpec, ...], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The listed metrics of a result (value, CI, n, status), keyed by metric key (None when missing)."""
    return {spec.key: estimate.to_json() if (estimate := read_estimate(spec, metrics)) else None
            for spec in spec_list}


def run_trial(task: TrialTask) -> dict[str, Any]:
    """Export the configuration (kept when current) and evaluate it on the validation split; the record."""
    from lpmr_edge.export import ExportRequest, export_artifact
    from lpmr_edge.runtimes.factory import open_runtime

    config, directory = task.config, trial_dir(task.root, task.config)
    request = ExportRequest(model=task.model, target=task.target, runtime=config.runtime,
                            precision=config.precision, options=config.options)
    artifact, _ = export_artifact(request, directory / "artifacts", isolate=False)
    runtime = open_runtime(artifact=artifact)
    result = evaluate_split(runtime, directory / VALIDATION, task.suite, task.splits, VALIDATION, task.settings)
    return {"key": config.key, "config": config.describe(), "label": config.label, "uniform": config.uniform,
            "stage": task.stage, "artifact": str(artifact), "validation_dir": str(directory / VALIDATION),
            "validation": figures((objective_spec(task.objective), TOP1), result["metrics"]),
            "n_validation": result["n"],
            "executed_precision": result["executed_precision"]}


def reproduce(artifact: Path, out_root: Path) -> Path:
    """Export again, into ``out_root``, the configuration an artifact's manifest records (its request: model,
    target, runtime, precision and every quantization option, FP modules included); returns the new artifact.
    The target is loaded by name and must still describe itself as recorded."""
    from lpmr_edge.export import ExportRequest, export_artifact

    recorded = read_json(Path(artifact) / MANIFEST_NAME, "artifact manifest")["request"]
    target = load_target(recorded["target"]["name"])
    if target.describe() != recorded["target"]:
        raise UserError(f"target '{target.name}' changed since {artifact} was exported; restore its file to reproduce")
    config = TrialConfig.make(recorded["runtime"], recorded["precision"], recorded["options"])
    request = ExportRequest(model=recorded["model"], target=target, runtime=config.runtime,
                            precision=config.precision, options=config.options,
                            dynamic_batch=recorded["dynamic_batch"], fuse_head=recorded["fuse_head"])
    return export_artifact(request, out_root, force=True, isolate=False)[0]


class TrialStore:
    """The finished trials of one tune directory (one atomic JSON file each)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / TRIALS_DIR

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """A trial's record, or None when it has not finished."""
        path = self.path(key)
        return read_json(path, "tune trial") if path.is_file() else None

    def put(self, record: Mapping[str, Any]) -> None:
        """Store (or replace) a trial's record atomically."""
        atomic_write_json(self.path(record["key"]), dict(record))

    def all(self) -> list[dict[str, Any]]:
        """Every stored trial, in key order."""
        return [read_json(path, "tune trial") for path in sorted(self.root.glob("*.json"))]
