"""`bench` pairs each precision with the FP32 of the same runtime and delegate (ExecuTorch's XNNPACK and
OpenVINO delegates are two baselines), tower and batch, from the same run."""
from __future__ import annotations

from lpmr_edge.bench import speedups
from lpmr_edge.runtimes.executorch.loader import description


def _row(precision: str, median_ms: float, delegate: str | None = None, batch: int = 1) -> dict:
    return {"runtime": "executorch", **({"delegate": delegate} if delegate else {}), "tower": "image",
            "batch": batch, "precision": precision, "executed_precision": precision, "median_ms": median_ms}


def test_each_int8_is_paired_with_the_fp32_of_its_own_delegate():
    rows = [_row("fp32", 100.0), _row("fp32", 50.0, "openvino"), _row("int8", 40.0), _row("int8", 25.0, "openvino"),
            _row("int8", 10.0, batch=32)]
    found = {(row.get("delegate"), row["batch"]): row["speedup_over_fp32"] for row in speedups(rows)}
    assert found == {(None, 1): 2.5, ("openvino", 1): 2.0}  # batch 32 has no fp32 row: no speed-up


def test_an_executorch_artifact_from_before_the_delegate_option_is_xnnpacks():
    assert description({"runtime_config": {"backend": "XnnpackBackend"}}, {})["delegate"] == "xnnpack"
    assert description({"runtime_config": {"delegate": "openvino"}}, {})["delegate"] == "openvino"
