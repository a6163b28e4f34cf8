"""The picker on synthetic results written in the real metrics.json / manifest.json / bench.json schema."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from factories import run_cli, write_synthetic_result

from lpmr_edge.errors import UserError
from lpmr_edge.pick import Constraints, NoFeasibleChoice, pareto_front, pick, require_recommendations
from lpmr_edge.results import load_results, read_result, reference_for


def _recommended(root: Path, **constraints: Any) -> str:
    (choice,) = pick(load_results([root]), Constraints(**constraints))
    assert choice.recommended is not None, choice.reason
    return choice.recommended.variant


@pytest.fixture
def x86(tmp_path: Path) -> Path:
    """fp32 (slow, large, accurate), int8 (fast, small, -2 pp), int4-w (fastest, tiny, -6 pp) on x86."""
    write_synthetic_result(tmp_path, "x86", "openvino", "fp32", latency_ms=10, size_mb=100)
    write_synthetic_result(tmp_path, "x86", "openvino", "int8", latency_ms=4, size_mb=26, top1=0.78)
    write_synthetic_result(tmp_path, "x86", "openvino", "int4-w", latency_ms=3, size_mb=14, top1=0.74)
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
    write_synthetic_result(tmp_path, "x86", "openvino", "fp32", latency_ms=10, **{metric: better})
    write_synthetic_result(tmp_path, "x86", "openvino", "int8", latency_ms=2, **{metric: worse})
    assert _recommended(tmp_path, objective=objective) == "openvino fp32"


def test_statistical_ties_go_to_the_faster_variant_and_pareto_lists_alternatives(tmp_path: Path):
    write_synthetic_result(tmp_path, "x86", "openvino", "fp32", latency_ms=10, ece=0.050)
    write_synthetic_result(tmp_path, "x86", "openvino", "int8", latency_ms=4, ece=0.052)  # CIs overlap: tied
    write_synthetic_result(tmp_path, "x86", "executorch", "int8", latency_ms=3, ece=0.070)  # faster but clearly worse
    (choice,) = pick(load_results([tmp_path]), Constraints(objective="ece"))
    assert choice.recommended.variant == "openvino int8"
    assert "whose 95% CI overlaps the best's (openvino fp32" in choice.reason
    assert "unpaired fallback, not a test; fastest of the 2 tied (4.00 ms measured)" in choice.reason
    assert "judged by the overlap of the stored 95% CIs instead" in choice.reason
    assert "the best (openvino fp32) cannot be paired: " in choice.reason and choice.decisions == {}
    assert [r.variant for r in choice.alternatives] == ["executorch int8", "openvino int8", "openvino fp32"]


def test_emulated_timings_never_satisfy_a_latency_constraint(tmp_path: Path):
    write_synthetic_result(tmp_path, "arm", "executorch", "fp32", latency_ms=500, emulated=True)
    write_synthetic_result(tmp_path, "arm", "executorch", "int8", latency_ms=1, emulated=True)
    write_synthetic_result(tmp_path, "arm", "executorch", "int4-w", latency_ms=None)
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
    torch = write_synthetic_result(tmp_path, "host", "torch", "fp32")
    write_synthetic_result(tmp_path, "x86", "openvino", "fp32")
    write_synthetic_result(tmp_path, "x86", "executorch", "int8")
    write_synthetic_result(tmp_path, "arm", "executorch", "int8")
    results = {(r.target, r.variant): r for r in load_results([tmp_path])}
    # Same runtime first, then another runtime's FP32 on the target, then the torch reference.
    assert reference_for(results["x86", "executorch int8"], list(results.values())).variant == "openvino fp32"
    assert reference_for(results["arm", "executorch int8"], list(results.values())).directory == torch.resolve()
    assert pareto_front([(1, 5), (2, 4), (3, 4), (2, 6), (0.5, 9)]) == [0, 1, 4]


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
                                           "accuracy, worst-group (auroc:SET and auroc:worst for one OOD set "
                                           "or the worst)")


def test_bad_inputs_are_one_line_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="no results under"):
        load_results([tmp_path])
    with pytest.raises(UserError, match="results path not found"):
        load_results([tmp_path / "missing"])
    broken = write_synthetic_result(tmp_path, "x86", "openvino", "fp32")
    (broken / "metrics.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_result(broken)
    (broken / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="not a complete lpmr-edge result"):
        read_result(broken)
    with pytest.raises(UserError, match="--max-size-mb is -1"):
        Constraints(max_size_mb=-1)
