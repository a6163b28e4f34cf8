"""OpenVINO IR export of both CLIP towers at every precision, and the cached NNCF INT8 calibration.

Precisions: fp32 (f32 inference pinned), bf16 (fp32 weights, bf16 inference), fp16 (FP16-compressed
weights; f16 inference where the CPU has it, f32 on x86), int8 (NNCF static W8A8 PTQ), int8-w / int4-w
(NNCF weight-only compression). Towers are converted with a dynamic batch, quantized with one sample per
batch, then reshaped to the target's static batch unless a dynamic batch is asked for.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpmr_edge.artifact import TOWERS
from lpmr_edge.cache import cache_root
from lpmr_edge.errors import UserError
from lpmr_edge.export import ExportRequest, staged_directory
from lpmr_edge.manifest import MANIFEST_NAME, sha256_json, tool_versions, verify_manifest, write_manifest
from lpmr_edge.quantize import (
    CONSTANT_INPUT_NOTE,
    CalibrationInputs,
    QuantizationOptions,
    compress_openvino_weights,
    load_calibration_inputs,
    openvino_quantization_record,
    quantize_openvino,
)
from lpmr_edge.runtimes.base import run_in_static_batches
from lpmr_edge.zeroshot import class_embeddings

if TYPE_CHECKING:
    import openvino as ov

    from lpmr_edge.models import ClipModel

INPUT_NAMES = {"image": "images", "text": "tokens"}
_CONVERTED: dict[tuple[str, str], ov.Model] = {}  # (weights sha256, tower) -> FP32 model
FEATURES, LOGITS = "features", "logits"
CALIBRATION_BATCH = 32
DEFAULT_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32", "int8-w": "f32", "int4-w": "f32"}
# The x86 CPU plugin has no f16 arithmetic (an f16 hint runs bf16 where the CPU has it): FP16 weights, f32 compute.
ARCH_HINTS = {"x86_64": {"fp16": "f32"}}
HINT_NOTES = {
    "f32": "OpenVINO's CPU default inference precision is bf16 on AMX/AVX512-BF16 CPUs (f16 on some ARM CPUs); "
           "runtime_config pins INFERENCE_PRECISION_HINT=f32 - set it too when loading this IR with other tools",
    "bf16": "bf16 executes only on CPUs with AVX512-BF16 or AMX (OpenVINO falls back to f32 elsewhere); "
            "the runtime reports what executed",
    "f16": "f16 inference needs ARMv8.2+ FP16 arithmetic (elsewhere OpenVINO runs f32, or bf16 on x86 CPUs with "
           "AVX512-BF16/AMX); the runtime reports what executed",
}
FP16_ON_X86 = ("x86 CPUs cannot execute f16 in OpenVINO (an f16 hint runs bf16 on CPUs with AVX512-BF16/AMX): "
               "this artifact stores FP16 weights and computes in f32")
WEIGHT_ONLY_NOTE = ("OpenVINO's CPU plugin quantizes the activations of integer-weight layers to int8 on the fly "
                    "(DYNAMIC_QUANTIZATION_GROUP_SIZE, 32 by default on x86): this is weight compression plus "
                    "dynamic activation quantization; set the target option dynamic_quantization_group_size = 0 "
                    "for float activations")


def example_input(clip: ClipModel, tower: str) -> np.ndarray:
    """A model-ready input of batch 1 for a tower."""
    if tower == "image":
        return np.zeros((1, 3, clip.image_size, clip.image_size), dtype=np.float32)
    return clip.tokenize(["a photo of a thing."])


def convert_tower(clip: ClipModel, tower: str) -> ov.Model:
    """The FP32 OpenVINO model of a tower with a dynamic batch dimension (a copy the caller may change).

    Conversions of the latest weights are kept in this process: one export converts each tower once.
    """
    key = (clip.weights_sha256, tower)
    if key not in _CONVERTED:
        for stale in [cached for cached in _CONVERTED if cached[0] != clip.weights_sha256]:
            del _CONVERTED[stale]
        _CONVERTED[key] = _convert_tower(clip, tower)
    return _CONVERTED[key].clone()


def _convert_tower(clip: ClipModel, tower: str) -> ov.Model:
    import openvino as ov
    import torch

    module = (clip.image_tower() if tower == "image" else clip.text_tower()).eval()
    example = example_input(clip, tower)
    shape = ov.PartialShape([-1, *example.shape[1:]])
    with torch.no_grad():  # tracing MultiheadAttention with grad enabled fails
        model = ov.convert_model(module, example_input=torch.from_numpy(example),
                                 input=[(shape, ov.Type(example.dtype))])
    model.inputs[0].get_tensor().set_names({INPUT_NAMES[tower]})
    model.outputs[0].get_tensor().set_names({FEATURES})
    return model


def calibration_samples(calibration: CalibrationInputs, tower: str) -> np.ndarray:
    """The calibration inputs of a tower."""
    return calibration.images if tower == "image" else calibration.tokens


def quantized_tower(clip: ClipModel, tower: str, options: QuantizationOptions,
                    calibration: CalibrationInputs) -> tuple[ov.Model, dict[str, Any]]:
    """NNCF W8A8 PTQ of a tower (dynamic batch), cached by weights, calibration data, options and versions.

    Returns the model and its calibration record (seconds, cache path, whether it came from the cache).
    """
    import openvino as ov

    versions = tool_versions()
    model_info = clip.describe()
    key = sha256_json({"tower": tower, "weights_sha256": clip.weights_sha256, "calibration": calibration.sha256,
                       "architecture": model_info["architecture"], "preprocess": model_info["preprocess"],
                       "options": options.describe(), "openvino": versions["openvino"], "nncf": versions["nncf"]})
    cache = cache_root() / "openvino-int8" / key
    if (cache / MANIFEST_NAME).is_file():
        try:
            record = verify_manifest(cache)["record"]
            return ov.Core().read_model(cache / f"{tower}.xml"), {**record, "cached": True, "cache": str(cache)}
        except (UserError, KeyError, RuntimeError):
            pass  # a damaged cache entry is rebuilt below
    model = convert_tower(clip, tower)
    start, start_cpu = time.perf_counter(), time.process_time()
    quantized = quantize_openvino(model, calibration_samples(calibration, tower), options)
    record = {"tower": tower, "seconds": round(time.perf_counter() - start, 2),
              "cpu_seconds": round(time.process_time() - start_cpu, 2),
              "samples": len(calibration_samples(calibration, tower)), "calibration": calibration.describe(),
              "quantization": openvino_quantization_record("int8", options),
              "fake_quantize_nodes": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())}
    with staged_directory(cache) as staging:
        ov.save_model(quantized, staging / f"{tower}.xml", compress_to_fp16=False)
        write_manifest(staging, {"record": record})
    return quantized, {**record, "cached": False, "cache": str(cache)}


def tower_at_precision(clip: ClipModel, tower: str, precision: str, options: QuantizationOptions,
                       calibration: CalibrationInputs) -> tuple[ov.Model, dict[str, Any]]:
    """A tower's OpenVINO model (dynamic batch) at an export precision, and its quantization record."""
    if precision == "int8":
        return quantized_tower(clip, tower, options, calibration)
    model, record = convert_tower(clip, tower), openvino_quantization_record(precision, options)
    if precision in ("int8-w", "int4-w"):
        model, kept_fp32 = compress_openvino_weights(model, 8 if precision == "int8-w" else 4, options)
        if kept_fp32:
            record = {**record, "kept_fp32": {"reason": CONSTANT_INPUT_NOTE, "layers": {tower: kept_fp32}}}
    return model, record


def inference_hint(request: ExportRequest) -> str:
    """INFERENCE_PRECISION_HINT for an artifact: the target's option, else the default for its CPU."""
    configured = request.target.runtime("openvino").options.get("inference_precision", {})
    return configured.get(request.precision) or ARCH_HINTS.get(request.target.arch, {}).get(
        request.precision, DEFAULT_HINTS[request.precision])


def runtime_config(request: ExportRequest) -> tuple[dict[str, Any], list[str]]:
    """What the runtime sets on load (OpenVINO CPU properties), and the notes users need about it.

    Threads are not pinned to cores unless the target asks (``cpu_pinning = true``): on a machine shared with
    other work, a pinned inference thread waits for its busy core while another core idles (measured on 2
    cores at load average 17: ViT-B-32 image tower batch 1, int8 255 -> 200 ms, fp32 700 -> 598 ms).
    """
    options = request.target.runtime("openvino").options
    hint = inference_hint(request)
    properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint,
                                  "PERFORMANCE_HINT": options.get("performance_hint", "LATENCY"),
                                  "NUM_STREAMS": options.get("num_streams", 1),
                                  "ENABLE_CPU_PINNING": options.get("cpu_pinning", False)}
    notes = [HINT_NOTES[hint]]
    if request.precision == "fp16" and hint == "f32" and request.target.arch == "x86_64":
        notes.append(FP16_ON_X86)
    if request.precision in ("int8-w", "int4-w"):
        if "dynamic_quantization_group_size" in options:
            properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = options["dynamic_quantization_group_size"]
        else:
            notes.append(WEIGHT_ONLY_NOTE)
    return {"device": "CPU", "threads": request.target.threads, "properties": properties}, notes


def _append_zero_shot_head(model: ov.Model, clip: ClipModel,
                           calibration: CalibrationInputs) -> tuple[ov.Model, dict[str, Any]]:
    """Add ``logits = logit_scale * normalise(features) @ class_embeddings.T`` as a second output."""
    import openvino as ov
    import openvino.opset13 as ops

    from lpmr_edge.runtimes.torch_runtime import TorchRuntime

    embeddings = class_embeddings(TorchRuntime(clip), clip.tokenize, calibration.class_names, calibration.templates)
    features = model.get_results()[0].input_value(0)
    unit = ops.normalize_l2(features, ops.constant(np.array([1], dtype=np.int64)), eps=1e-24, eps_mode="max")
    similarities = ops.matmul(unit, ops.constant(np.ascontiguousarray(embeddings.T, dtype=np.float32)), False, False)
    logits = ops.multiply(similarities, ops.constant(np.float32(clip.logit_scale)))
    logits.output(0).get_tensor().set_names({LOGITS})
    head = {"classes": list(calibration.class_names), "templates": list(calibration.templates),
            "logit_scale": clip.logit_scale, "class_embeddings_sha256": sha256_json(embeddings.tolist()),
            "class_embeddings_from": "torch fp32 reference text tower", "source": calibration.name}
    return ov.Model([features, logits.output(0)], model.get_parameters(), model.get_friendly_name()), head


def _ports(ports: list[ov.Output]) -> list[dict[str, Any]]:
    return [{"name": port.get_any_name(),
             "shape": [dim.get_length() if dim.is_static else -1 for dim in port.get_partial_shape()],
             "dtype": port.get_element_type().to_dtype().name} for port in ports]


def _weight_only_record(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest ``quantization`` of a non-int8 export: the towers' shared record, with the layers either kept FP32."""
    kept = [record["kept_fp32"] for record in records.values() if "kept_fp32" in record]
    if not kept:
        return records["image"]
    return {**records["image"], "kept_fp32": {"reason": kept[0]["reason"],
                                              "layers": {k: v for entry in kept for k, v in entry["layers"].items()}}}


def export_towers(clip: ClipModel, request: ExportRequest, calibration: CalibrationInputs,
                  staging_dir: Path) -> dict[str, Any]:
    """Write ``image.xml/.bin`` and ``text.xml/.bin`` at the request's precision; return the manifest fields."""
    import openvino as ov

    towers, records, extras = {}, {}, {}
    for tower in TOWERS:
        model, records[tower] = tower_at_precision(clip, tower, request.precision, request.options, calibration)
        batch = request.batch[tower]
        if batch is not None:
            model.reshape({INPUT_NAMES[tower]: [batch, *example_input(clip, tower).shape[1:]]})
        if tower == "image" and request.fuse_head:
            model, extras["head"] = _append_zero_shot_head(model, clip, calibration)
        ov.save_model(model, staging_dir / f"{tower}.xml", compress_to_fp16=request.precision == "fp16")
        towers[tower] = {"file": f"{tower}.xml", "weights": f"{tower}.bin", "inputs": _ports(model.inputs),
                         "outputs": _ports(model.outputs)}
    config, notes = runtime_config(request)
    quantization = _weight_only_record(records) if request.precision != "int8" else {
        **records["image"]["quantization"],
        "calibration_seconds": {tower: records[tower]["seconds"] for tower in TOWERS},
        "calibration_cpu_seconds": {tower: records[tower].get("cpu_seconds") for tower in TOWERS},
        "fake_quantize_nodes": {tower: records[tower]["fake_quantize_nodes"] for tower in TOWERS}}
    return {"towers": towers, "runtime_config": config, "quantization": quantization, "warnings": notes, **extras}


def retarget(fields: dict[str, Any], request: ExportRequest) -> dict[str, Any]:
    """The manifest fields of ``request``'s artifact from those of the same IR files exported for another target
    or precision (bf16 from fp32): the runtime configuration and its notes are the request's (the IR holds none
    of them; the two precisions' quantization records are the same)."""
    config, notes = runtime_config(request)
    return {**fields, "runtime_config": config, "warnings": notes}


def run_fp32(model: ov.Model, inputs: np.ndarray) -> np.ndarray:
    """Run a dynamic-batch model's first output in true f32, in chunks."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return run_in_static_batches(lambda chunk: compiled(chunk)[0], inputs, CALIBRATION_BATCH)


def calibrate(clip: ClipModel, options: QuantizationOptions) -> dict[str, Any]:
    """Quantize both towers with NNCF (cached for later exports) and compare INT8 with FP32 on the calibration set."""
    from lpmr_edge.artifact import feature_agreement

    calibration = load_calibration_inputs(clip, options)
    towers = {}
    for tower in TOWERS:
        quantized, record = quantized_tower(clip, tower, options, calibration)
        samples = calibration_samples(calibration, tower)
        towers[tower] = {**{key: record.get(key) for key in ("seconds", "cpu_seconds", "samples",
                                                             "fake_quantize_nodes", "cached", "cache")},
                         **feature_agreement(run_fp32(convert_tower(clip, tower), samples),
                                             run_fp32(quantized, samples))}
    return {"model": clip.describe(), "calibration": calibration.describe(),
            "quantization": openvino_quantization_record("int8", options), "towers": towers}
