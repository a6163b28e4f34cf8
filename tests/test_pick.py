"""The picker on synthetic results written in the real metrics.json / manifest.json / bench.json schema."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from lpmr_edge.errors import UserError
from lpmr_edge.pick import (
    Constraints,
    NoFeasibleChoice,
    load_results,
    pareto_front,
    pick,
    read_result,
    reference_for,
    require_recommendations,
)

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
        "dataset": dataset, "suite": {"name": "quick"},
        "datasets": {"id": dataset, "ood-digits": {"sha256": "ood-sha"}, "shift": {"sha256": "shift-sha"},
                     "spurious": {"sha256": "spurious-sha"},
                     **{f"corruption-gaussian_noise-{s}": {"sha256": f"c{s}"} for s in severities}},
        "metrics": {
            "accuracy": _with_ci(top1=metrics["top1"]),
            "calibration": {**_with_ci(ece=metrics["ece"], nll=metrics["nll"]), "reliability_diagram": diagram},
            "ood": {"sets": {"digits": {"msp": _with_ci(auroc=metrics["auroc"], fpr_at_95_tpr=metrics["fpr95"])}}},
            "corruptions": {"clean_accuracy": metrics["top1"], "kinds": ["gaussian_noise"], "severities": severities,
                            "gaussian_noise": corruption, "mean": _with_ci(accuracy=metrics["corrupted"])},
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


def write_result(root: Path, target: str, runtime: str, precision: str, *, latency_ms: float | None = 10.0,
                 size_mb: float = 100.0, emulated: bool = False, model: str = "lpmr-tiny-fmnist",
                 warnings: tuple[str, ...] = (), **metrics: float) -> Path:
    """One result directory (metrics.json, manifest.json) and, unless latency_ms is None, a bench.json;
    an ``emulated`` result was evaluated on the emulated arm64 device."""
    directory = root / target / f"{runtime}-{precision}"
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(metrics_json(model, runtime, precision,
                                                                    {**DEFAULTS, **metrics})))
    artifact = None if runtime == "torch" else {"target": {"name": target}, "precision": precision,
                                                "request": {"dynamic_batch": False, "fuse_head": False}}
    device = {"device": {"kind": "emu-arm64", "label": "emu-arm64", "machine": "aarch64", "emulated": True}} \
        if emulated else {}
    manifest = {"runtime": {"runtime": runtime, "version": "1.0", "precision": precision, "artifact": artifact,
                            "warnings": list(warnings), **device},
                "machine": {"arch": "x86_64", "cpu": "Test CPU", "cores": 2, "node": "test"},
                "tool_versions": {"python": "3.11", "openvino": "2026.4.1"}, "created": "2026-01-02T03:04:05+00:00"}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    if latency_ms is not None:
        source = f"/elsewhere/artifacts/{target}/{runtime}-{precision}" if artifact else f"torch:{model}"
        (directory / "bench.json").write_text(json.dumps(bench_json(source, model, runtime, precision, latency_ms,
                                                                    size_mb, emulated)))
    return directory


def _recommended(root: Path, **constraints: Any) -> str:
    (choice,) = pick(load_results([root]), Constraints(**constraints))
    assert choice.recommended is not None, choice.reason
    return choice.recommended.variant


@pytest.fixture
def x86(tmp_path: Path) -> Path:
    """fp32 (slow, large, accurate), int8 (fast, small, -2 pp), int4-w (fastest, tiny, -6 pp) on x86."""
    write_result(tmp_path, "x86", "openvino", "fp32", latency_ms=10, size_mb=100)
    write_result(tmp_path, "x86", "openvino", "int8", latency_ms=4, size_mb=26, top1=0.78)
    write_result(tmp_path, "x86", "openvino", "int4-w", latency_ms=3, size_mb=14, top1=0.74)
    return tmp_path


def test_latency_size_and_accuracy_drop_constraints_are_honoured(x86: Path):
    # Same metrics everywhere except top-1: all tied on ECE, so the fastest wins...
    assert _recommended(x86) == "openvino int4-w"
    # ...unless it breaks a constraint.
    assert _recommended(x86, max_accuracy_drop=3.0) == "openvino int8"
    assert _recommended(x86, max_accuracy_drop=1.0) == "openvino fp32"
    assert _recommended(x86, max_size_mb=50, max_accuracy_drop=3.0) == "openvino int8"
    (choice,) = pick(load_results([x86]), Constraints(max_latency_ms=3.5))
    assert choice.recommended.variant == "openvino int4-w"
    rejected = {c.result.variant: c.violations for c in choice.candidates if c.violations}
    assert rejected == {"openvino fp32": ("latency 10.00 ms > 3.5 ms",), "openvino int8": ("latency 4.00 ms > 3.5 ms",)}


@pytest.mark.parametrize("objective, metric, better, worse", [
    ("ece", "ece", 0.02, 0.08), ("nll", "nll", 0.4, 0.9), ("fpr95", "fpr95", 0.2, 0.6),
    ("auroc", "auroc", 0.95, 0.8), ("accuracy", "top1", 0.85, 0.7), ("worst-group", "worst_group", 0.5, 0.1),
])
def test_each_objective_prefers_its_better_direction(tmp_path: Path, objective: str, metric: str, better: float,
                                                    worse: float):
    # The worse variant is the fastest: only a correct direction makes the slower one win.
    write_result(tmp_path, "x86", "openvino", "fp32", latency_ms=10, **{metric: better})
    write_result(tmp_path, "x86", "openvino", "int8", latency_ms=2, **{metric: worse})
    assert _recommended(tmp_path, objective=objective) == "openvino fp32"


def test_statistical_ties_go_to_the_faster_variant_and_pareto_lists_alternatives(tmp_path: Path):
    write_result(tmp_path, "x86", "openvino", "fp32", latency_ms=10, ece=0.050)
    write_result(tmp_path, "x86", "openvino", "int8", latency_ms=4, ece=0.052)  # CIs overlap: tied
    write_result(tmp_path, "x86", "executorch", "int8", latency_ms=3, ece=0.070)  # faster but clearly worse
    (choice,) = pick(load_results([tmp_path]), Constraints(objective="ece"))
    assert choice.recommended.variant == "openvino int8"
    assert "whose 95% CI overlaps the best's (openvino fp32" in choice.reason
    assert choice.reason.endswith("fastest of the 2 statistically tied (4.00 ms measured)")
    assert [r.variant for r in choice.alternatives] == ["executorch int8", "openvino int8", "openvino fp32"]


def test_emulated_timings_never_satisfy_a_latency_constraint(tmp_path: Path):
    write_result(tmp_path, "arm", "executorch", "fp32", latency_ms=500, emulated=True)
    write_result(tmp_path, "arm", "executorch", "int8", latency_ms=1, emulated=True)
    write_result(tmp_path, "arm", "executorch", "int4-w", latency_ms=None)
    results = load_results([tmp_path])
    assert pick(results, Constraints())[0].recommended is not None  # no latency constraint: fine
    (choice,) = pick(results, Constraints(max_latency_ms=1000))
    assert choice.recommended is None and choice.alternatives == ()
    reasons = {c.result.variant: c.violations for c in choice.candidates}
    assert reasons["executorch int8"] == ("only emulated timings, not a device latency",)
    assert reasons["executorch int4-w"] == ("no latency measured (run `lpmr-edge bench`)",)
    with pytest.raises(NoFeasibleChoice, match="^target arm .*nothing satisfies the constraints"):
        require_recommendations([choice])


def test_references_and_pareto_front(tmp_path: Path):
    torch = write_result(tmp_path, "host", "torch", "fp32")
    write_result(tmp_path, "x86", "openvino", "fp32")
    write_result(tmp_path, "x86", "executorch", "int8")
    write_result(tmp_path, "arm", "executorch", "int8")
    results = {(r.target, r.variant): r for r in load_results([tmp_path])}
    # Same runtime first, then another runtime's FP32 on the target, then the torch reference.
    assert reference_for(results["x86", "executorch int8"], list(results.values())).variant == "openvino fp32"
    assert reference_for(results["arm", "executorch int8"], list(results.values())).directory == torch.resolve()
    assert pareto_front([(1, 5), (2, 4), (3, 4), (2, 6), (0.5, 9)]) == [0, 1, 4]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``lpmr-edge ARGS`` in this process (as the console script does); returns (status, stdout, stderr)."""
    from lpmr_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["lpmr-edge", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


def test_cli_pick_json_and_no_solution_exit(x86: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    status, out, err = run_cli(monkeypatch, capsys, "pick", str(x86), "--objective", "accuracy",
                               "--max-latency-ms", "5", "--json")
    assert status == 0, err
    (choice,) = json.loads(out)
    assert choice["target"] == "x86" and choice["recommended"]["variant"] == "openvino int8"
    status, out, err = run_cli(monkeypatch, capsys, "pick", str(x86), "--max-latency-ms", "1")
    assert status == 3
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: target x86") and "latency 3.00 ms > 1 ms" in message
    status, out, err = run_cli(monkeypatch, capsys, "pick", str(x86), "--objective", "speed")
    assert status == 2 and err.strip() == ("error: unknown objective 'speed'; use one of ece, nll, auroc, fpr95, "
                                           "accuracy, worst-group")


def test_bad_inputs_are_one_line_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="no results under"):
        load_results([tmp_path])
    with pytest.raises(UserError, match="results path not found"):
        load_results([tmp_path / "missing"])
    broken = write_result(tmp_path, "x86", "openvino", "fp32")
    (broken / "metrics.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_result(broken)
    (broken / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="not a complete lpmr-edge result"):
        read_result(broken)
    with pytest.raises(UserError, match="--max-size-mb is -1"):
        Constraints(max_size_mb=-1)
