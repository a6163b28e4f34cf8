"""ExecuTorch export: both CLIP towers as XNNPACK-delegated ``.pte`` programs (or, with the target option
``delegate = "openvino"``, delegated to ExecuTorch's OpenVINO backend: see ``openvino_delegate``).

Per tower: ``torch.export`` at static shapes (for the quantizer: with concatenations split straight back
dropped, ``rewrites.drop_concat_split_round_trips``) -> quantization (below) -> rewrite of the ops XNNPACK has no
kernel for into equivalent ones it has (``rewrites.xnnpack_decompositions``) -> ``to_edge_transform_and_lower``
folding constant subgraphs (``rewrites.fold_constants_pass``) and partitioning with the ``XnnpackPartitioner``
-> ``to_executorch``. Precisions (quantization: ``xnnpack_quantize``):

  fp32      no quantization
  int8      static W8A8 PT2E with the XNNPACK quantizer (symmetric; INT8 per-channel weights, INT8 per-tensor
            activations) on linear/conv/add, calibrated on the shared ``CalibrationInputs``: torchao
            ``prepare_pt2e``/``convert_pt2e`` with histogram observers, or (target option
            ``int8_method = "nncf"``) NNCF's ``quantize_pt2e`` with SmoothQuant and bias correction
  int8-dyn  the same weights (linear/conv), activations quantized at run time (no calibration)
  int4-w    INT4 per-channel weights ([-8, 7], XNNPACK's qc4w) on linears, activations dynamic INT8. True
            weight-only INT4 does not lower: the XNNPACK quantizer has no weight-only config, and torchao's
            IntxWeightOnlyConfig leaves ``dequantize_affine`` outside XNNPACK with no ExecuTorch kernel for it

Everything the XNNPACK quantizer does not cover (layer norm, softmax, GELU, attention matmuls, embedding)
runs in fp32. Delegation coverage goes into the manifest; an op left to ExecuTorch's portable kernels is a
warning. Each artifact carries ``reference.npz``: a fixed input per tower and this program's output on the
exporting host, so a device can check that it computes the same (``verification`` in the manifest).
"""
from __future__ import annotations

import io
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpmr_edge.artifact import TOWERS, feature_agreement
from lpmr_edge.errors import UserError
from lpmr_edge.export import ExportRequest
from lpmr_edge.manifest import atomic_write_bytes, tool_versions
from lpmr_edge.runtimes.executorch import openvino_delegate
from lpmr_edge.runtimes.executorch.loader import method_runner
from lpmr_edge.runtimes.executorch.rewrites import fold_constants_pass, xnnpack_decompositions
from lpmr_edge.runtimes.executorch.xnnpack_quantize import (
    DEFAULT_INT8_METHOD,
    INT8_METHODS,
    calibration_batches,
    prepare_module,
)

if TYPE_CHECKING:
    import torch

    from lpmr_edge.models import ClipModel
    from lpmr_edge.quantize import CalibrationInputs, QuantizationOptions

INPUT_NAMES = {"image": "images", "text": "tokens"}
BACKEND = "XnnpackBackend"
DELEGATES = {"xnnpack": BACKEND, "openvino": openvino_delegate.BACKEND}  # target option ``delegate``
DEFAULT_DELEGATE = "xnnpack"
REFERENCE_FILE = "reference.npz"
REFERENCE_ROWS = 4  # real calibration rows in the reference input; the rest of the static batch is zeros
# Same program on another CPU: XNNPACK picks other microkernels (summation order, FMA), so outputs may differ
# by float rounding; quantized programs also by an occasional requantization step.
TOLERANCES = {"fp32": {"cosine_min": 0.99999, "relative_max_diff": 1e-4},
              "quantized": {"cosine_min": 0.999, "relative_max_diff": 2e-2}}
BOOKKEEPING_OPS = ("getitem",)  # picks a delegate's outputs apart; no computation
EXECUTED = {"fp32": "fp32", "int8": "int8+fp32", "int8-dyn": "int8-dyn+fp32",
            "int4-w": "int8-dyn+fp32 (int4 weights)"}  # when XNNPACK runs the quantized ops


@dataclass(frozen=True)
class LoweredTower:
    """One tower lowered to an ExecuTorch program."""

    program: bytes
    delegation: dict[str, Any]
    quantization: dict[str, Any]
    seconds: float


# --- lowering -----------------------------------------------------------------------------------------

def delegation_coverage(graph_module: Any) -> dict[str, Any]:
    """Nodes delegated to XNNPACK vs left to portable kernels (per op), from ``get_delegation_info``."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    operators = {op: breakdown for op, breakdown in info.delegation_by_operator.items() if op not in BOOKKEEPING_OPS}
    delegated = sum(breakdown.delegated for breakdown in operators.values())
    total = delegated + sum(breakdown.non_delegated for breakdown in operators.values())
    return {"delegated": delegated, "total": total, "fraction": round(delegated / max(total, 1), 4),
            "subgraphs": info.num_delegated_subgraphs,
            "quantize_nodes_delegated": sum(breakdown.delegated for op, breakdown in operators.items()
                                            if "quantize" in op or "qparams" in op),
            "non_delegated": {op: breakdown.non_delegated for op, breakdown in sorted(operators.items())
                              if breakdown.non_delegated}}


def executed_precision(precision: str, delegation: dict[str, dict[str, Any]],
                       delegate: str = DEFAULT_DELEGATE) -> str:
    """What runs: quantized precisions count only if the delegate took (de)quantize nodes in every tower."""
    executed = openvino_delegate.EXECUTED if delegate == "openvino" else EXECUTED
    if precision == "fp32" or all(tower["quantize_nodes_delegated"] for tower in delegation.values()):
        return executed[precision]
    return f"{executed['fp32']} ({delegate} took no quantized ops: weights are dequantized, run in floating point)"


def _xnnpack_program(module: torch.nn.Module, example: torch.Tensor, precision: str, samples: np.ndarray,
                     options: QuantizationOptions, int8_method: str) -> tuple[Any, Any, dict[str, Any]]:
    """The edge program partitioned for XNNPACK, its ExecuTorch backend config and the quantization applied."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import (
        get_xnnpack_edge_compile_config,
        get_xnnpack_executorch_backend_config,
    )
    from executorch.exir import to_edge_transform_and_lower

    prepared, quantization = prepare_module(module, example, precision, samples, options, int8_method)
    exported = torch.export.export(prepared, (example,)).run_decompositions(xnnpack_decompositions())
    edge = to_edge_transform_and_lower(exported, transform_passes=fold_constants_pass(),
                                       partitioner=[XnnpackPartitioner()],
                                       compile_config=get_xnnpack_edge_compile_config())
    return edge, get_xnnpack_executorch_backend_config(), quantization


def _openvino_program(module: torch.nn.Module, example: torch.Tensor, precision: str, samples: np.ndarray,
                      options: QuantizationOptions) -> tuple[Any, None, dict[str, Any]]:
    """The edge program partitioned for ExecuTorch's OpenVINO delegate and the quantization applied (int8:
    calibrated at the export batch, NNCF's ``quantize_pt2e`` needs static shapes)."""
    import torch

    prepared, quantization = module, {"method": "none (fp32 weights and activations)"}
    if precision == "int8":
        prepared, quantization = openvino_delegate.quantize(module, calibration_batches(samples, len(example)), options)
        quantization = {**quantization, "samples": len(samples)}
    return openvino_delegate.partitioned(torch.export.export(prepared, (example,))), None, quantization


def lower_tower(module: torch.nn.Module, example: torch.Tensor, precision: str, samples: np.ndarray,
                options: QuantizationOptions, int8_method: str = DEFAULT_INT8_METHOD,
                delegate: str = DEFAULT_DELEGATE) -> LoweredTower:
    """Quantize (per ``precision``), export and lower one tower to an ExecuTorch program delegated to XNNPACK
    (or to OpenVINO, ``delegate = "openvino"``)."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        if delegate == "openvino":
            edge, config, quantization = _openvino_program(module.eval(), example, precision, samples, options)
        else:
            edge, config, quantization = _xnnpack_program(module.eval(), example, precision, samples, options,
                                                          int8_method)
        delegation = delegation_coverage(edge.exported_program().graph_module)
        program = edge.to_executorch(config).buffer
    return LoweredTower(program=program, delegation=delegation, quantization=quantization,
                        seconds=round(time.perf_counter() - start, 2))


def run_program(program: bytes | Path, inputs: np.ndarray) -> np.ndarray:
    """Run an ExecuTorch program's ``forward`` on one batch with the Python runtime (the backend's loader)."""
    return method_runner(program)(inputs)


def reference_input(samples: np.ndarray, batch: int) -> np.ndarray:
    """A static batch: the first ``REFERENCE_ROWS`` samples, then zeros (compresses well in the .npz)."""
    rows = samples[:min(batch, REFERENCE_ROWS)]
    return np.concatenate([rows, np.zeros((batch - len(rows), *rows.shape[1:]), dtype=rows.dtype)])


def merge_records(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One quantization record: what both towers share at the top, what differs under ``towers``."""
    image, text = records["image"], records["text"]
    shared = {key: value for key, value in image.items() if text.get(key) == value}
    return {**shared, "towers": {tower: {key: value for key, value in record.items() if key not in shared}
                                 for tower, record in records.items()}}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _program_format(program: bytes) -> str:
    """The flatbuffer file identifier of a .pte (bytes 4-8, e.g. ``ET12``)."""
    return program[4:8].decode("ascii", errors="replace")


def _quoted(names: Any) -> str:
    return ", ".join(repr(name) for name in names)


def requested_options(request: ExportRequest) -> tuple[str, str]:
    """The target's ``delegate`` and ``int8_method`` options (checked); refuses dynamic batches, unknown
    options and what the delegate cannot export."""
    if request.dynamic_batch:
        raise UserError("ExecuTorch artifacts have static shapes (XNNPACK plans memory for them); drop "
                        "--dynamic-batch, or set image_batch/text_batch in the target")
    options = dict(request.target.runtime("executorch").options)
    delegate = options.pop("delegate", DEFAULT_DELEGATE)
    method = options.pop("int8_method", DEFAULT_INT8_METHOD)
    if options or method not in INT8_METHODS or delegate not in DELEGATES:
        raise UserError(f"target '{request.target.name}': [runtimes.executorch] options are "
                        f"{dict(request.target.runtime('executorch').options)}; the options are int8_method = one "
                        f"of {_quoted(INT8_METHODS)} and delegate = one of {_quoted(DELEGATES)}")
    if delegate == "openvino":
        openvino_delegate.check_request(request)
    return delegate, method


@dataclass(frozen=True)
class ExportedTower:
    """A tower written to the staging directory, with everything the manifest says about it."""

    entry: dict[str, Any]
    lowered: LoweredTower
    reference: dict[str, np.ndarray]
    peak_rss_mb: int


def export_tower(tower: str, module: torch.nn.Module, samples: np.ndarray, request: ExportRequest,
                 staging_dir: Path, method: str, delegate: str = DEFAULT_DELEGATE) -> ExportedTower:
    """Lower one tower at the request's precision and static batch, write ``<tower>.pte`` and run it once."""
    import torch

    inputs = reference_input(samples, request.batch[tower])
    lowered = lower_tower(module, torch.from_numpy(inputs), request.precision, samples, request.options, method,
                          delegate)
    atomic_write_bytes(staging_dir / f"{tower}.pte", lowered.program)
    expected = run_program(lowered.program, inputs)
    with torch.no_grad():
        torch_fp32 = module(torch.from_numpy(inputs)).numpy()
    entry = {"file": f"{tower}.pte", "bytes": len(lowered.program),
             "inputs": [{"name": INPUT_NAMES[tower], "shape": list(inputs.shape), "dtype": inputs.dtype.name}],
             "outputs": [{"name": "features", "shape": list(expected.shape), "dtype": expected.dtype.name}],
             "reference_vs_torch_fp32": feature_agreement(torch_fp32, expected)}
    return ExportedTower(entry=entry, lowered=lowered,
                         reference={f"{tower}_input": inputs, f"{tower}_expected": expected},
                         peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def portable_warning(tower: str, delegation: dict[str, Any], backend: str = BACKEND) -> list[str]:
    """A warning naming the ops left outside the delegate ``backend``, if any."""
    outside = delegation["non_delegated"]
    if not outside:
        return []
    named = ", ".join(f"{op} x{count}" for op, count in outside.items())
    warning = (f"{tower} tower: {sum(outside.values())} node(s) run in ExecuTorch's portable kernels outside "
               f"{backend} (slow, single-threaded): {named}")
    return [warning]


def portable_warnings(delegation: dict[str, dict[str, Any]], backend: str = BACKEND) -> list[str]:
    """The towers' warnings about ops left outside the delegate ``backend``."""
    return [warning for tower in TOWERS for warning in portable_warning(tower, delegation[tower], backend)]


def retarget(fields: dict[str, Any], request: ExportRequest) -> dict[str, Any]:
    """The manifest fields of ``request``'s artifact from those of the same .pte files exported for another
    target: the threads and architecture are the target's (a .pte holds neither). Refuses what an export of
    ``request`` would refuse (e.g. the OpenVINO delegate for an aarch64 target)."""
    requested_options(request)
    return {**fields, "runtime_config": {**fields["runtime_config"], "threads": request.target.threads},
            "abi": {**fields["abi"], "arch": request.target.arch},
            "warnings": portable_warnings(fields["delegation"], fields["runtime_config"]["backend"])}


def export_towers(clip: ClipModel, request: ExportRequest, calibration: CalibrationInputs,
                  staging_dir: Path) -> dict[str, Any]:
    """Write ``image.pte``, ``text.pte`` and ``reference.npz``; return the backend's manifest fields."""
    delegate, method = requested_options(request)
    backend = DELEGATES[delegate]
    modules = {"image": clip.image_tower(), "text": clip.text_tower()}
    samples = {"image": calibration.images, "text": calibration.tokens}
    exported = {tower: export_tower(tower, modules[tower], samples[tower], request, staging_dir, method, delegate)
                for tower in TOWERS}
    atomic_write_bytes(staging_dir / REFERENCE_FILE,
                       _npz_bytes({name: array for tower in exported.values() for name, array in tower.reference.items()}))
    delegation = {tower: result.lowered.delegation for tower, result in exported.items()}
    return {
        "towers": {tower: result.entry for tower, result in exported.items()},
        "delegation": delegation,
        "lowering": {tower: {"seconds": result.lowered.seconds, "process_peak_rss_mb": result.peak_rss_mb}
                     for tower, result in exported.items()},
        "warnings": portable_warnings(delegation, backend),
        "quantization": merge_records({tower: result.lowered.quantization for tower, result in exported.items()}),
        "runtime_config": {"backend": backend, "method": "forward", "threads": request.target.threads,
                           "delegate": delegate,
                           **(openvino_delegate.manifest_fields() if delegate == "openvino" else {}),
                           "executed_precision": executed_precision(request.precision, delegation, delegate)},
        "abi": {"arch": request.target.arch, "program_format": _program_format(exported["image"].lowered.program),
                "executorch": tool_versions()["executorch"], "backends": [backend],
                "portable_operators": sorted({op for entry in delegation.values() for op in entry["non_delegated"]}),
                "note": openvino_delegate.ABI_NOTE if delegate == "openvino" else
                "a .pte is CPU-independent: XNNPACK picks microkernels for the CPU at load time; the "
                "runtime needs the XNNPACK backend and the portable operators listed"},
        "verification": {"file": REFERENCE_FILE, "tolerance": TOLERANCES[
                             "fp32" if request.precision == "fp32" and delegate == "xnnpack" else "quantized"],
                         "towers": {tower: {"input": f"{tower}_input", "expected": f"{tower}_expected"}
                                    for tower in TOWERS},
                         "expected_from": f"this program in the ExecuTorch Python runtime on the exporting host "
                                          f"({platform.machine()})",
                         "how": "run <tower>_input through <tower>.pte on the device and compare with "
                                "<tower>_expected: cosine >= cosine_min and max|diff| / max|expected| <= "
                                "relative_max_diff (ExecuTorchRuntime.verify_outputs does this)"},
    }
