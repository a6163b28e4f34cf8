"""The picker on synthetic results written in the real metrics.json / manifest.json / bench.json schema."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import run_cli, write_outputs_result, write_synthetic_result

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
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "unknown objective 'speed'; use one of ece, nll, auroc" in err


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


def test_paired_rule_decides_a_case_the_overlap_rule_gets_wrong(tmp_path: Path):
    # 1000 images: fp32 right on 800. openvino int8 (fastest) loses 20 of them and gains none: -2 pp, its
    # unpaired CI overlaps fp32's (the old rule tied them and took the fastest), but the paired difference
    # is clearly negative. executorch int8 loses 2 and gains 1 (-0.1 pp): equivalent within 0.5 pp.
    labels = np.arange(1000) % 10
    wrong = np.zeros(1000, dtype=bool)
    wrong[800:] = True
    reference = np.where(wrong, (labels + 1) % 10, labels)
    worse = reference.copy()
    worse[:20] = (labels[:20] + 1) % 10
    swapped = reference.copy()
    swapped[:2], swapped[800] = (labels[:2] + 1) % 10, labels[800]
    write_outputs_result(tmp_path, "x86", "openvino", "fp32", reference, labels, latency_ms=10)
    write_outputs_result(tmp_path, "x86", "openvino", "int8", worse, labels, latency_ms=3)
    write_outputs_result(tmp_path, "x86", "executorch", "int8", swapped, labels, latency_ms=6)
    results = {r.variant: r for r in load_results([tmp_path])}
    assert results["openvino int8"].metrics["top1"].overlaps(results["openvino fp32"].metrics["top1"])
    (choice,) = pick(list(results.values()), Constraints(objective="accuracy"))
    assert choice.recommended.variant == "executorch int8"
    assert {v: d.decision for v, d in choice.decisions.items()} == {
        "openvino fp32": "best", "openvino int8": "worse", "executorch int8": "equivalent within margin"}
    worse_ci = choice.decisions["openvino int8"].ci
    assert worse_ci[1] < 0 and worse_ci[0] <= -0.02 <= worse_ci[1]
    assert "equivalent to openvino fp32 within ±0.005" in choice.reason and "TOST equivalence at 5%" in choice.reason
    assert "margin ±0.5 pp" in choice.reason and "worse: openvino int8" in choice.reason
    assert "fastest of the 2 tied (6.00 ms measured)" in choice.reason and choice.unpaired == {}
    # A margin too narrow for 1000 images leaves executorch int8 undecided: fp32 stands, and the reason says so.
    (strict,) = pick(list(results.values()), Constraints(objective="accuracy", margins={"top1": 0.0005}))
    assert strict.recommended.variant == "openvino fp32"
    assert "not separated from the best (executorch int8: undecided)" in strict.reason


def test_margins_parse_from_the_command_line_form():
    assert Constraints.from_options(margin=["top1=0.5pp", "ece=0.002"]).margins == {"top1": 0.005, "ece": 0.002}
    assert Constraints().margin(Constraints(objective="auroc:worst").metric) == 0.005
    for bad, message in (("top1=2", "write percentage points as 2pp"), ("speed=1", "unknown metric 'speed'"),
                         ("ece", "is not METRIC=VALUE"), ("ece=0.1pp", "ECE is not a percentage")):
        with pytest.raises(UserError, match=message):
            Constraints.from_options(margin=[bad])


def test_cli_pick_prints_the_test_and_margin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture):
    labels = np.arange(500) % 10
    reference = np.where(np.arange(500) < 400, labels, (labels + 1) % 10)
    write_outputs_result(tmp_path, "x86", "openvino", "fp32", reference, labels, latency_ms=10)
    write_outputs_result(tmp_path, "x86", "openvino", "int8", reference, labels, latency_ms=3)
    status, out, err = run_cli(monkeypatch, capsys, "pick", str(tmp_path), "--objective", "accuracy",
                               "--margin", "top1=1pp")
    assert status == 0, err
    printed = " ".join((out + err).split())
    assert "why (x86): top-1 accuracy 80.0%" in printed and "equivalent to openvino fp32 within ±0.01" in printed
    assert "TOST with margin ±1 pp" in printed and "fastest of the 2 tied (3.00 ms measured)" in printed
    status, out, err = run_cli(monkeypatch, capsys, "pick", str(tmp_path), "--margin", "top1=2")
    assert status == 2 and "write percentage points as 2pp" in err
