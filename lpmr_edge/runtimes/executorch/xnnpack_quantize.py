"""XNNPACK quantization of one exported tower for ExecuTorch (see ``export``'s docstring for the precisions):
static W8A8 PT2E calibrated with torchao's histogram observers or NNCF, and dynamic INT8 / INT4-weight
quantization, all with the XNNPACK quantizer."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from lpmr_edge.runtimes.executorch.rewrites import drop_concat_split_round_trips

if TYPE_CHECKING:
    import torch

    from lpmr_edge.quantize import QuantizationOptions

# int8 calibration: torchao's streaming histogram observers (default), or NNCF with SmoothQuant and bias
# correction. On the stand-in both give top-1 within 0.01 point; NNCF's min/max ranges lose 3-5x more feature
# cosine, and its histogram ranges (as good as torchao's) keep every sample's activations (>13 GB for ViT-B-32).
INT8_METHODS = ("histogram", "nncf")
CALIBRATION_BATCH = 32  # rows per histogram-calibration call where the batch dim can be dynamic
DEFAULT_INT8_METHOD = "histogram"


def calibration_batches(samples: np.ndarray, batch: int) -> list[torch.Tensor]:
    """Consecutive batches of exactly ``batch`` rows; the last one is completed from the first rows."""
    import torch

    count = math.ceil(len(samples) / batch) * batch
    wrapped = samples[np.arange(count) % len(samples)]
    return [torch.from_numpy(np.ascontiguousarray(wrapped[start:start + batch])) for start in range(0, count, batch)]


def exported_graph(module: torch.nn.Module, example: torch.Tensor,
                   dynamic_shapes: tuple[dict[int, Any], ...] | None = None) -> torch.fx.GraphModule:
    """``module`` exported for the quantizer, with concatenations split straight back removed (see rewrites)."""
    import torch

    return drop_concat_split_round_trips(
        torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes).module())


def _xnnpack_quantizer(dynamic: bool, weight_bits: int = 8, keep_fp: tuple[str, ...] = (),
                       observer: str = "histogram") -> Any:
    """The XNNPACK quantizer: symmetric per-channel weights (INT4 = [-8, 7], XNNPACK's qc4w, on linears only);
    the modules named in ``keep_fp`` stay in fp32; static activations use a histogram or min/max observer."""
    import dataclasses

    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    if weight_bits == 8:
        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
        if observer == "minmax" and not dynamic:
            spec = dataclasses.replace(config.input_activation,
                                       observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
            config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
        quantizer = XNNPACKQuantizer().set_global(config)
    else:
        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic, weight_qmin=-8,
                                                   weight_qmax=7)
        quantizer = XNNPACKQuantizer().set_operator_type(torch.ops.aten.linear.default, config)
    if keep_fp:  # set_module_name(name, None) is "not supported yet": a filter skips those modules' nodes
        inside = [get_module_name_filter(name) for name in keep_fp]
        quantizer.set_filter_function(lambda node: not any(test(node) for test in inside))
    return quantizer


def _calibrate_pt2e(graph: torch.fx.GraphModule, batches: list[torch.Tensor],
                    options: QuantizationOptions) -> tuple[Any, dict[str, Any]]:
    """torchao prepare_pt2e / convert_pt2e; activation ranges from streaming histogram (or min/max) observers."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(graph, _xnnpack_quantizer(dynamic=False, keep_fp=options.keep_fp,
                                                      observer=options.observer))
    for batch in batches:
        prepared(batch)
    return convert_pt2e(prepared), {
        "method": "PT2E static W8A8: torchao prepare_pt2e/convert_pt2e with the XNNPACK quantizer",
        "activation_ranges": "HistogramObserver (streaming, constant memory)" if options.observer == "histogram"
        else "MinMaxObserver", "smooth_quant_alpha": None, "bias_correction": None}


def _calibrate_nncf(graph: torch.fx.GraphModule, batches: list[torch.Tensor],
                    options: QuantizationOptions) -> tuple[Any, dict[str, Any]]:
    """NNCF quantize_pt2e with the XNNPACK quantizer: SmoothQuant and bias correction per ``options``."""
    import nncf
    from nncf.experimental.torch.fx import quantize_pt2e
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    smooth_quant = options.smooth_quant_alpha >= 0
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars must not pollute --json output
        quantized = quantize_pt2e(graph, _xnnpack_quantizer(dynamic=False, keep_fp=options.keep_fp),
                                  nncf.Dataset(batches),
                                  subset_size=len(batches), smooth_quant=smooth_quant,
                                  smooth_quant_params=AdvancedSmoothQuantParameters(
                                      matmul=options.smooth_quant_alpha) if smooth_quant else None,
                                  fast_bias_correction=options.fast_bias_correction)
    return quantized, {
        "method": "PT2E static W8A8: nncf.experimental.torch.fx.quantize_pt2e with the XNNPACK quantizer",
        "activation_ranges": "NNCF default min/max statistics",
        "smooth_quant_alpha": options.smooth_quant_alpha if smooth_quant else None,
        "bias_correction": "fast" if options.fast_bias_correction else "full"}


def _calibration_graph(module: torch.nn.Module, example: torch.Tensor,
                       samples: np.ndarray) -> tuple[torch.fx.GraphModule, int]:
    """The module exported for calibration and the rows per calibration batch.

    Histogram observers cost per call, not per row: a graph with a dynamic batch dim calibrates in batches of
    ``CALIBRATION_BATCH`` (300 samples: 10 calls instead of 300 at batch 1). A module whose batch dim cannot
    stay dynamic is calibrated at the export batch.
    """
    import torch
    from torch._dynamo.exc import UserError as ExportConstraintError

    rows = min(CALIBRATION_BATCH, len(samples))
    if rows > len(example) and rows >= 2:
        batch = torch.export.Dim("batch", min=1)  # the converted graph is re-exported at the export batch
        wider = torch.from_numpy(np.ascontiguousarray(samples[:rows]))
        with contextlib.suppress(ExportConstraintError):
            return exported_graph(module, wider, dynamic_shapes=({0: batch},)), rows
    return exported_graph(module, example), len(example)


def quantize_static(module: torch.nn.Module, example: torch.Tensor, samples: np.ndarray, options: QuantizationOptions,
                    int8_method: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Static W8A8 with the XNNPACK quantizer, calibrated on ``samples``; returns the module and its record."""
    if int8_method == "nncf":  # NNCF's quantize_pt2e needs static shapes
        batches = calibration_batches(samples, len(example))
        quantized, record = _calibrate_nncf(exported_graph(module, example), batches, options)
    else:
        graph, rows = _calibration_graph(module, example, samples)
        batches = calibration_batches(samples, rows)
        quantized, record = _calibrate_pt2e(graph, batches, options)
    return quantized, {
        **record, "int8_method": int8_method, "weights": "int8 symmetric per-channel", "kept_fp": list(options.keep_fp),
        "activations": "int8 per-tensor, calibrated",
        "quantized_ops": "linear, conv2d, add (XNNPACK quantizer patterns); the rest fp32",
        "samples": len(samples), "calibration_batches": len(batches),
        "calibration_batch_rows": len(batches[0])}


def quantize_dynamic(module: torch.nn.Module, example: torch.Tensor, weight_bits: int,
                     keep_fp: tuple[str, ...] = ()) -> tuple[torch.nn.Module, dict[str, Any]]:
    """INT8 or INT4 weights, activations quantized at run time (torchao PT2E, XNNPACK quantizer)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(exported_graph(module, example),
                            _xnnpack_quantizer(dynamic=True, weight_bits=weight_bits, keep_fp=keep_fp))
    prepared(example)
    return convert_pt2e(prepared), {
        "method": "PT2E dynamic: torchao prepare_pt2e/convert_pt2e with the XNNPACK quantizer",
        "weights": "int8 symmetric per-channel" if weight_bits == 8 else
        "int4 symmetric per-channel ([-8, 7]: XNNPACK qc4w; the PT2E XNNPACK quantizer has no group-wise mode)",
        "activations": "int8, quantization parameters computed at run time", "kept_fp": list(keep_fp),
        "quantized_ops": "linear, conv2d; the rest fp32" if weight_bits == 8 else "linear; the rest fp32"}


def prepare_module(module: torch.nn.Module, example: torch.Tensor, precision: str, samples: np.ndarray,
                   options: QuantizationOptions,
                   int8_method: str = DEFAULT_INT8_METHOD) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The module to export at ``precision`` and the quantization actually applied."""
    if precision == "int8":
        return quantize_static(module, example, samples, options, int8_method)
    if precision in ("int8-dyn", "int4-w"):
        return quantize_dynamic(module, example, weight_bits=4 if precision == "int4-w" else 8,
                                keep_fp=options.keep_fp)
    return module, {"method": "none (fp32 weights and activations)"}
