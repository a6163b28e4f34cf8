"""The support matrix: cells stored as JSON and not redone, one-line reasons for failures, the table's
structure; a slow run exports a reduced conv architecture and a sigmoid-scored one and checks parity."""
from __future__ import annotations

from pathlib import Path

import pytest

from lpmr_edge import support
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_json
from lpmr_edge.support import (
    TABLE_COLUMNS,
    SupportSettings,
    cell_path,
    markdown_table,
    measure_cell,
    model_spec,
    one_line,
    parse_cell,
    run_support,
    table_rows,
)

FAST = SupportSettings(parity_images=16, bench_repeats=3, bench_seconds=1.0)


def test_architecture_names_mean_random_weights_and_full_specs_pass_through():
    assert model_spec("RN50") == "random:RN50"
    assert model_spec("lpmr-tiny-fmnist") == "lpmr-tiny-fmnist"
    assert model_spec("hf-hub:org/name") == "hf-hub:org/name"


def test_reasons_are_one_short_line():
    reason = one_line(RuntimeError("first line " + "x" * 300 + "\nsecond line"))
    assert reason.startswith("RuntimeError: first line") and "\n" not in reason
    assert len(reason) == support.REASON_CHARACTERS
    assert one_line(UserError("a clear message")) == "a clear message"


@pytest.mark.parametrize("text", ["openvino", "openvino:int3", "tflite:fp32"])
def test_cells_are_checked_against_the_runtimes(text: str):
    with pytest.raises(UserError, match="RUNTIME:PRECISION"):
        parse_cell(text)
    assert parse_cell("executorch:int8") == ("executorch", "int8")


def test_a_cell_that_cannot_load_is_a_failed_cell_with_its_reason(tmp_path: Path):
    cell = measure_cell("NoSuchNet", "openvino", "fp32", FAST, tmp_path)
    assert cell["exports"] is False and "unknown open_clip architecture 'NoSuchNet'" in cell["error"]
    assert "\n" not in cell["error"]


def test_stored_cells_are_not_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    stored = {"architecture": "RN50", "model": "random:RN50", "runtime": "openvino", "precision": "fp32",
              "exports": False, "error": "stored earlier", "export_seconds": 1.0}
    atomic_write_json(cell_path(tmp_path, "RN50", "openvino", "fp32"), stored)
    monkeypatch.setattr(support, "measure_cell", lambda *args, **kwargs: pytest.fail("a stored cell was redone"))
    matrix = support.support_matrix(["RN50"], [("openvino", "fp32"), ("openvino", "int8")], FAST, tmp_path)
    assert matrix["cells"] == [stored]
    assert matrix["not_run"] == [{"architecture": "RN50", "runtime": "openvino", "precision": "int8"}]
    assert run_support(["RN50"], [("openvino", "fp32")], FAST, tmp_path)["cells"] == [stored]
    rows = table_rows(matrix)
    assert rows == [["RN50", "openvino", "fp32", "no", "1", "—", "—", "—", "—", "—", "—", "—", "stored earlier"]]
    table = markdown_table(matrix)
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in table and "Not run: RN50 (openvino int8)." in table


def test_remeasure_retimes_older_cells_and_keeps_their_export_and_parity(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    exported = {"architecture": "RN50", "model": "random:RN50", "runtime": "openvino", "precision": "fp32",
                "exports": True, "export_seconds": 51.6, "artifact": str(tmp_path / "art"), "delegation": None,
                "created": "2026-12-01T19:00:00+00:00", "parity": {"image_cosine_min": 1.0},
                "latency": {"image_b1_ms": 350.0, "threads": 2}}
    failed = {**exported, "precision": "int8", "exports": False, "error": "stored earlier"}
    recent = {**exported, "precision": "int4-w", "latency_measured": "2026-12-01T23:00:00+00:00"}
    for cell in (exported, failed, recent):
        atomic_write_json(cell_path(tmp_path, "RN50", "openvino", cell["precision"]), cell)
    monkeypatch.setattr(support, "_parity", lambda artifact, settings: pytest.fail("parity was redone"))
    monkeypatch.setattr(support, "_latency", lambda artifact, fp32, settings: {"image_b1_ms": 50.0, "fp32": str(fp32)})
    cells = [("openvino", "fp32"), ("openvino", "int8"), ("openvino", "int4-w")]
    matrix = run_support(["RN50"], cells, FAST, tmp_path, remeasure_before="2026-12-01T22:00:00+00:00")
    retimed, still_failed, untouched = matrix["cells"]
    assert retimed["latency"] == {"image_b1_ms": 50.0, "fp32": str(tmp_path / "art")}  # timed against its FP32
    assert retimed["latency_measured"] > "2026-12-01T22:00" and len(retimed["latency_load"]) == 2
    assert {key: value for key, value in retimed.items() if not key.startswith("latency")} == {
        key: value for key, value in exported.items() if key != "latency"}
    assert still_failed == failed and untouched == recent
    assert table_rows(matrix)[0][TABLE_COLUMNS.index("load")] == f"{max(retimed['latency_load']):.1f}"


@pytest.mark.slow
def test_reduced_conv_and_sigmoid_architectures_export_with_parity(tmp_path: Path):
    """A ResNet CLIP (attention pool) and a SigLIP-style model with a logit bias, both reduced in size, through
    OpenVINO FP32 and ExecuTorch FP32: exported, at parity with torch, ExecuTorch delegation reported."""
    architectures = ["lpmr-tiny-rn", "lpmr-tiny-sigmoid"]
    cells = [("openvino", "fp32"), ("executorch", "fp32")]
    matrix = run_support(architectures, cells, FAST, tmp_path)
    assert matrix["not_run"] == [] and len(matrix["cells"]) == 4
    assert len({cell["artifact"] for cell in matrix["cells"]}) == 4  # no architecture overwrites another's
    for cell in matrix["cells"]:
        assert cell["exports"], cell.get("error")
        assert "parity_error" not in cell and "latency_error" not in cell
        assert cell["parity"]["image_cosine_min"] > 0.999 and cell["parity"]["top1_agreement"] >= 0.9
        assert cell["latency"]["image_b1_ms"] > 0
        assert (cell["delegation"] is not None) == (cell["runtime"] == "executorch")
    executorch = [cell["delegation"] for cell in matrix["cells"] if cell["runtime"] == "executorch"]
    assert all(0 < delegation["fraction"] <= 1 and delegation["total"] > 0 for delegation in executorch)
    assert [row[:3] for row in table_rows(matrix)] == [[arch, runtime, precision] for arch in architectures
                                                       for runtime, precision in cells]
