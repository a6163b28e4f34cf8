"""ExecuTorch's OpenVINO delegate: a tower lowered whole to ``OpenvinoBackend`` (target option ``delegate =
"openvino"``, x86_64 only).

Per tower: ``torch.export`` at static shapes -> (int8) NNCF ``quantize_pt2e`` with ExecuTorch's
``OpenVINOQuantizer`` -> ``to_edge_transform_and_lower`` with the ``OpenvinoPartitioner`` -> ``to_executorch``.
The partitioner compiles each partition with OpenVINO's CPU plugin on the exporting host and stores the
compiled model's ``export_model()`` blob in the .pte; at load time the backend (``libexecutorch_backend_openvino``,
which dlopens the openvino wheel's ``libopenvino_c.so``) calls ``ov_core_import_model(blob, device)`` with no
properties. Two consequences, measured with openvino 2026.4.1 and executorch 1.5.1:

- the inference precision cannot be set: a blob compiled with ``INFERENCE_PRECISION_HINT=f32`` is imported at
  the CPU's default, which is bf16 on CPUs with AVX512-BF16/AMX (this x86 machine), f32 on plain AVX2 CPUs.
  Operations OpenVINO does not run in INT8 therefore run in that default precision; the loader reports it.
- threads cannot be set either: OpenVINO uses its own default (all cores), not ExecuTorch's threadpool.

Precisions: fp32 (no quantization), int8 (static; NNCF ``quantize_pt2e`` with ``OpenVINOQuantizer`` in
``INT8_TRANSFORMER`` mode or the preset of ``QuantizationOptions``, SmoothQuant and fast bias correction as for
the OpenVINO IR, calibrated on the same ``CalibrationInputs``).
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any

from lpmr_edge.errors import UserError

if TYPE_CHECKING:
    import torch

    from lpmr_edge.export import ExportRequest
    from lpmr_edge.quantize import QuantizationOptions

BACKEND = "OpenvinoBackend"
DEVICE = "CPU"
PRECISIONS = ("fp32", "int8")
ARCH = "x86_64"
# What the backend leaves unset on import (see the module docstring), in the manifest's words
INFERENCE_PRECISION = ("OpenVINO's CPU default, not settable through the delegate (it imports the compiled blob "
                       "without properties): bf16 on CPUs with AVX512-BF16/AMX, f32 otherwise")
THREADS_NOTE = ("ExecuTorch's OpenVINO delegate runs on OpenVINO's own threads (default: all cores), not on "
                "ExecuTorch's threadpool: the target's threads do not apply")
# The loader replaces CPU_DEFAULT with the precision OpenVINO's CPU plugin picks on the machine it runs on
CPU_DEFAULT = "ov-cpu-default"
EXECUTED = {"fp32": CPU_DEFAULT, "int8": f"int8+{CPU_DEFAULT}"}
ABI_NOTE = ("each partition is an OpenVINO CPU-plugin model compiled on the exporting host (x86_64): the runtime "
            "needs ExecuTorch's OpenvinoBackend and the openvino wheel of the version recorded (libopenvino_c.so)")


def compile_spec() -> dict[str, str]:
    """The delegate's compile spec (the backend reads ``device``; OpenVINO properties are not passed on)."""
    return {"device": DEVICE}


def check_request(request: ExportRequest) -> None:
    """UserError unless the delegate can export ``request``: an x86_64 target at fp32 or int8, no ``keep_fp``."""
    if request.target.arch != ARCH:
        raise UserError(f"target '{request.target.name}': delegate = \"openvino\" compiles for OpenVINO's CPU "
                        f"plugin on this host and supports {ARCH} targets only; use delegate = \"xnnpack\" for "
                        f"{request.target.arch}")
    if request.options.keep_fp:
        raise UserError("keep_fp is not supported with ExecuTorch's OpenVINO delegate; drop it, or use "
                        "delegate = \"xnnpack\"")
    if request.precision not in PRECISIONS:
        raise UserError(f"precision '{request.precision}' is not supported by ExecuTorch's OpenVINO delegate; use "
                        f"one of {', '.join(PRECISIONS)}, or delegate = \"xnnpack\"")


def quantize(module: torch.nn.Module, batches: list[torch.Tensor],
             options: QuantizationOptions) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Static W8A8 for OpenVINO: NNCF ``quantize_pt2e`` with ``OpenVINOQuantizer`` on the static-shape graph of
    ``module`` (exported at the shape of ``batches``), SmoothQuant and bias correction per ``options``."""
    import nncf
    import torch
    from executorch.backends.openvino.quantizer import OpenVINOQuantizer, QuantizationMode
    from nncf.experimental.torch.fx import quantize_pt2e
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    mode = QuantizationMode.INT8_TRANSFORMER if options.transformer else (
        QuantizationMode.INT8_MIXED if options.preset == "mixed" else QuantizationMode.INT8_SYM)
    smooth_quant = options.smooth_quant_alpha >= 0
    graph = torch.export.export(module, (batches[0],)).module()
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars must not pollute --json output
        quantized = quantize_pt2e(graph, OpenVINOQuantizer(mode=mode), nncf.Dataset(batches),
                                  subset_size=len(batches), smooth_quant=smooth_quant,
                                  smooth_quant_params=AdvancedSmoothQuantParameters(
                                      matmul=options.smooth_quant_alpha) if smooth_quant else None,
                                  fast_bias_correction=options.fast_bias_correction, fold_quantize=False)
    return quantized, {
        "method": "PT2E static W8A8: nncf.experimental.torch.fx.quantize_pt2e with ExecuTorch's OpenVINOQuantizer",
        "mode": mode.value, "weights": "int8 symmetric per-channel",
        "activations": "int8 per-tensor, calibrated (NNCF min/max statistics)",
        "quantized_ops": "what OpenVINOQuantizer annotates (matmul/linear/conv inputs and more, per NNCF's "
                         "transformer or preset rules); OpenVINO runs the rest in its inference precision",
        "smooth_quant_alpha": options.smooth_quant_alpha if smooth_quant else None,
        "bias_correction": "fast" if options.fast_bias_correction else "full",
        "calibration_batches": len(batches), "calibration_batch_rows": len(batches[0])}


def partitioned(exported: torch.export.ExportedProgram) -> Any:
    """``exported`` as an edge program whose supported partitions are compiled for the delegate."""
    from executorch.backends.openvino.partitioner import OpenvinoPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.backend.compile_spec_schema import CompileSpec

    specs = [CompileSpec(key, value.encode()) for key, value in compile_spec().items()]
    with contextlib.redirect_stdout(sys.stderr):  # the partitioner prints every op it does not support
        return to_edge_transform_and_lower(exported, partitioner=[OpenvinoPartitioner(specs)])


def manifest_fields() -> dict[str, Any]:
    """What the manifest's ``runtime_config`` records for this delegate (besides backend, method, threads)."""
    from importlib import metadata

    return {"compile_spec": compile_spec(), "inference_precision": INFERENCE_PRECISION,
            "openvino": metadata.version("openvino"), "threads_note": THREADS_NOTE}

