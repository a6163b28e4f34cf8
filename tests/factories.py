"""Shared test factories: synthetic result directories written through the suite's own writer
(``lpmr_edge.suite.outputs.write_result``), bench JSON files and the CLI run in process."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from lpmr_edge.suite import BUILTIN_SUITES
from lpmr_edge.suite.outputs import write_result

HALF_WIDTH = 0.005  # CI half-width of every synthetic metric: far smaller than the differences the tests use
DEFAULTS = {"top1": 0.80, "ece": 0.05, "nll": 0.60, "auroc": 0.90, "fpr95": 0.40, "corrupted": 0.60,
            "shifted": 0.50, "worst_group": 0.30}


def _with_ci(**values: float) -> dict[str, Any]:
    return {**values, "ci": {name: [value - HALF_WIDTH, value + HALF_WIDTH] for name, value in values.items()}}


def metrics_json(model: str, runtime: str, precision: str, metrics: dict[str, float]) -> dict[str, Any]:
    """A metrics.json as ``lpmr-edge eval --suite quick`` writes it, trimmed to what the report reads."""
    severities = [1, 2, 3, 4, 5]
    corruption = {str(s): {"accuracy": metrics["corrupted"] + 0.05 * (3 - s)} for s in severities}
    diagram = [{"lower": k / 5, "upper": (k + 1) / 5, "count": 10 * k,
                "confidence": (k + 0.5) / 5 if k else None,
                "accuracy": min(1.0, (k + 0.5) / 5 - metrics["ece"]) if k else None} for k in range(5)]
    dataset = {"name": "fmnist-test", "sha256": "id-sha", "n": 500}
    return {
        "model": model, "model_label": "stand-in trained by lpmr-edge, not a pretrained CLIP", "runtime": runtime,
        "precision": precision, "executed_precision": precision, "n": 500, "created": "2026-01-02T03:04:05+00:00",
        "dataset": dataset, "suite": asdict(BUILTIN_SUITES["quick"]), "settings": {"seed": 0},
        "datasets": {"id": dataset, "ood-digits": {"sha256": "ood-sha"}, "shift": {"sha256": "shift-sha"},
                     "spurious": {"sha256": "spurious-sha"},
                     **{f"corruption-gaussian_noise-{s}": {"sha256": f"c{s}"} for s in severities}},
        "metrics": {
            "accuracy": {**_with_ci(top1=metrics["top1"]), "n": 500},
            "calibration": {**_with_ci(ece=metrics["ece"], nll=metrics["nll"]), "n": 500,
                            "reliability_diagram": diagram},
            "ood": {"sets": {"digits": {"n": 300, "msp": _with_ci(auroc=metrics["auroc"],
                                                                  fpr_at_95_tpr=metrics["fpr95"])}}},
            "corruptions": {"clean_accuracy": metrics["top1"], "kinds": ["gaussian_noise"], "severities": severities,
                            "gaussian_noise": corruption, "mean": _with_ci(accuracy=metrics["corrupted"]),
                            "groups": {"noise": _with_ci(accuracy=metrics["corrupted"])}},
            "shift": _with_ci(top1=metrics["shifted"]),
            "spurious": _with_ci(worst_group=metrics["worst_group"]),
        },
    }


def bench_json(source: str, model: str, runtime: str, precision: str, latency_ms: float, size_mb: float,
               emulated: bool) -> dict[str, Any]:
    """An ``lpmr-edge bench --json-out`` file timing one runtime at batch 1 (and, slower, at batch 32)."""
    rows = [{"source": source, "runtime": runtime, "precision": precision, "executed_precision": precision,
             "threads": 2, "model": model, "model_label": "stand-in", "tower": "image", "batch": batch,
             "artifact_mb": size_mb, "median_ms": latency_ms * batch, "p90_ms": latency_ms * batch * 1.1,
             "peak_rss_mb": 300.0} for batch in (1, 32)]
    device = {"device": {"kind": "emulated", "emulated": True}} if emulated else {}
    return {"machine": {"arch": "x86_64", "cpu": "Test CPU", "cores": 2}, "created": "2026-01-02T04:00:00+00:00",
            "settings": {"tower": "image", "batches": [1, 32]}, "results": rows, **device}


def write_synthetic_result(root: Path, target: str, runtime: str, precision: str, *, latency_ms: float | None = 10.0,
                 size_mb: float = 100.0, emulated: bool = False, model: str = "lpmr-tiny-fmnist",
                 warnings: tuple[str, ...] = (), **metrics: float) -> Path:
    """One result directory (metrics.json, manifest.json) and, unless latency_ms is None, a bench.json;
    an ``emulated`` result was evaluated on the emulated arm64 device."""
    directory = root / target / f"{runtime}-{precision}"
    artifact = None if runtime == "torch" else {"target": {"name": target}, "precision": precision,
                                                "request": {"dynamic_batch": False, "fuse_head": False}}
    device = {"device": {"kind": "emu-arm64", "label": "emu-arm64", "machine": "aarch64", "emulated": True}} \
        if emulated else {}
    manifest = {"runtime": {"runtime": runtime, "version": "1.0", "precision": precision, "artifact": artifact,
                            "warnings": list(warnings), **device},
                "machine": {"arch": "x86_64", "cpu": "Test CPU", "cores": 2, "node": "test"},
                "tool_versions": {"python": "3.11", "openvino": "2026.4.1"}, "created": "2026-01-02T03:04:05+00:00"}
    write_result(directory, metrics_json(model, runtime, precision, {**DEFAULTS, **metrics}), manifest)
    if latency_ms is not None:
        source = f"/elsewhere/artifacts/{target}/{runtime}-{precision}" if artifact else f"torch:{model}"
        (directory / "bench.json").write_text(json.dumps(bench_json(source, model, runtime, precision, latency_ms,
                                                                    size_mb, emulated)))
    return directory


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``lpmr-edge ARGS`` in this process (as the console script does); returns (status, stdout, stderr)."""
    from lpmr_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["lpmr-edge", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


def write_outputs_result(root: Path, target: str, runtime: str, precision: str, predictions: Any, labels: Any, *,
                         latency_ms: float = 10.0, resamples: int = 200) -> Path:
    """A result directory scored by the suite itself from stored per-sample outputs (``outputs/id.npz``):
    ``predictions`` are the classes the features point to (10 classes, seeded confidences shared by all
    results with the same labels), so results on the same ``labels`` pair sample by sample."""
    import numpy as np

    from lpmr_edge.suite.run import score_outputs

    directory = root / target / f"{runtime}-{precision}"
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    strength = np.random.default_rng(len(labels)).uniform(0.2, 1.0, len(labels))
    features = np.full((len(labels), 10), 0.05, dtype=np.float32)
    features[np.arange(len(labels)), predictions] += strength.astype(np.float32)
    (directory / "outputs").mkdir(parents=True)
    np.savez(directory / "outputs" / "id.npz", features=features, labels=labels, groups=np.zeros(0),
             id_index=np.zeros(0, dtype=np.int64), class_embeddings=np.eye(10, dtype=np.float32),
             model_logit_scale=np.float64(10.0), runtime_identity=np.str_(f"{runtime}-{precision}"),
             dataset_sha256=np.str_("id-sha"), classifier_key=np.str_("classes"))
    suite = replace(BUILTIN_SUITES["basic"], bootstrap_resamples=resamples)
    raw = metrics_json("lpmr-tiny-fmnist", runtime, precision, DEFAULTS)
    dataset = {"name": "fmnist-test", "sha256": "id-sha", "n": len(labels)}
    raw.update(n=len(labels), dataset=dataset, datasets={"id": dataset}, suite=asdict(suite),
               metrics=score_outputs(directory, suite, 0))
    manifest = {"runtime": {"runtime": runtime, "version": "1.0", "precision": precision,
                            "artifact": {"target": {"name": target}, "precision": precision, "request": {}}},
                "machine": {"arch": "x86_64"}, "tool_versions": {}, "created": "2026-01-02T03:04:05+00:00"}
    write_result(directory, raw, manifest)
    source = f"/elsewhere/artifacts/{target}/{runtime}-{precision}"
    (directory / "bench.json").write_text(json.dumps(bench_json(source, "lpmr-tiny-fmnist", runtime, precision,
                                                                latency_ms, 50.0, False)))
    return directory


def small_suite_toml(limit: int, corrupted_images: int) -> str:
    """A small suite for pipeline tests: ``limit`` ID images, the digits OOD set, one noise corruption."""
    return (f"limit = {limit}\nbootstrap_resamples = 50\n\n[ood]\nsets = [\"digits\"]\n\n[corruptions]\n"
            f"kinds = [\"gaussian_noise\"]\nseverities = [3]\nimages = {corrupted_images}\n")
