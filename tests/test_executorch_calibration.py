"""INT8 histogram calibration runs in batches of CALIBRATION_BATCH rows where the batch dim can be dynamic, and
at the export batch where the module fixes it; either way the result re-exports at the static export batch."""
from __future__ import annotations

import numpy as np
import torch

from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.runtimes.executorch.xnnpack_quantize import CALIBRATION_BATCH, quantize_static

SAMPLES = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)


class Projection(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class SingleImagePath(Projection):
    """Branches on the batch size (as code special-casing small batches does): export cannot keep the dim dynamic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if x.shape[0] > 4 else self.linear(x[:1]).expand(x.shape[0], -1)


def _quantize(module: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    example = torch.from_numpy(SAMPLES[:1])
    with torch.no_grad():
        quantized, record = quantize_static(module.eval(), example, SAMPLES, QuantizationOptions(), "histogram")
        exported = torch.export.export(quantized, (example,)).module()
        np.testing.assert_allclose(exported(example).numpy(), module(example).numpy(), atol=0.05)
    return quantized, record


def test_a_dynamic_batch_calibrates_in_wide_batches() -> None:
    _, record = _quantize(Projection())
    assert record["calibration_batch_rows"] == CALIBRATION_BATCH
    assert record["calibration_batches"] == 2 and record["samples"] == len(SAMPLES)


def test_a_batch_the_module_fixes_calibrates_at_the_export_batch() -> None:
    _, record = _quantize(SingleImagePath())
    assert record["calibration_batch_rows"] == 1 and record["calibration_batches"] == len(SAMPLES)
