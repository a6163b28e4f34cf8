"""Loads an OpenVINO artifact and says what the CPU plugin executes: the one loading code of the host's
``OpenVinoRuntime`` and of a device (lpmr_edge/devices/serve.py ships this file's source to it).

Standard library, numpy and openvino only, never lpmr_edge. Contract of every backend loader:
``load(directory, manifest, threads) -> (towers, info)`` where ``towers[tower](batch)`` returns float32
features of one static batch and ``info`` is JSON (``version``, ``threads``, ``executed_precision``, ...);
``ValueError``: the artifact cannot be loaded here, ``ImportError``: the runtime is missing or broken (the
device's setup); ``warnings(manifest, info, where)`` and ``description(manifest, info)`` read ``info``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution")
PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "u8": "int8", "i8": "int8", "u4": "int4",
                   "i4": "int4"}
COMPRESSED_WEIGHTS = ("fp16", "int8", "int4")

Infer = Callable[..., Any]


def executed_layers(compiled: Any) -> dict[str, dict[str, int]]:
    """Per compute layer type, how many layers ran with each ``activations/weights`` precision pair.

    Read from the compiled execution graph: e.g. ``{"FullyConnected": {"u8/i8": 15, "f32/u4": 2}}``.
    """
    counts: dict[str, Counter] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        layer = node.get_rt_info()["layerType"].astype(str)
        if layer in COMPUTE_LAYERS:
            activations, weights = (port.get_element_type().get_type_name() for port in node.inputs()[:2])
            counts.setdefault(layer, Counter())[f"{activations}/{weights}"] += 1
    return {layer: dict(counter) for layer, counter in counts.items()}


def summarise_execution(inference_precision: str, layers: dict[str, dict[str, int]],
                        dynamic_quantization_group: int = 0) -> str:
    """What ran, e.g. ``fp32``, ``bf16``, ``int8+fp32`` (integer-activation layers, the rest in fp32) or
    ``fp32 (int4+int8 weights, dynamic int8 activations, group 32)``.

    The CPU plugin quantizes activations of integer-weight layers on the fly when
    DYNAMIC_QUANTIZATION_GROUP_SIZE > 0; the execution graph does not show it, so it is passed in.
    """
    rest = PRECISION_NAMES.get(inference_precision, inference_precision)
    integer, weights = set(), set()
    for pair in (pair for counts in layers.values() for pair in counts):
        activations, weight = (PRECISION_NAMES.get(part, part) for part in pair.split("/"))
        if activations.startswith("int"):
            integer.add(activations)
        elif weight != activations and weight in COMPRESSED_WEIGHTS:
            weights.add(weight)
    summary = "+".join([*sorted(integer), rest])
    if not weights:
        return summary
    dynamic = dynamic_quantization_group and any(weight.startswith("int") for weight in weights)
    details = [f"{'+'.join(sorted(weights))} weights",
               *([f"dynamic int8 activations, group {dynamic_quantization_group}"] if dynamic else [])]
    return f"{summary} ({', '.join(details)})"


def tower_execution(compiled: Any) -> dict[str, Any]:
    """What one compiled tower executes: inference precision, dynamic quantization group, thread pinning, layers,
    summary."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    group = int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    layers = executed_layers(compiled)
    return {"inference_precision": hint, "dynamic_quantization_group_size": group,
            "cpu_pinning": bool(compiled.get_property("ENABLE_CPU_PINNING")), "layers": layers,
            "executed_precision": summarise_execution(hint, layers, group)}


def combined_precision(per_tower: dict[str, str]) -> str:
    """One label for both towers: theirs if equal, else ``image: X, text: Y``."""
    if per_tower["image"] == per_tower["text"]:
        return per_tower["image"]
    return ", ".join(f"{tower}: {precision}" for tower, precision in per_tower.items())


def load(directory: Path, manifest: dict[str, Any], threads: int) -> tuple[dict[str, Infer], dict[str, Any]]:
    """Compile both towers for the manifest's device with its recorded properties and ``threads``;
    ``towers[tower](batch, output=0)`` runs one batch (output 1: a fused zero-shot head's logits)."""
    import numpy as np
    import openvino

    config = manifest["runtime_config"]
    core = openvino.Core()
    towers, execution = {}, {}
    for tower in manifest["towers"]:
        try:
            compiled = core.compile_model(core.read_model(Path(directory) / manifest["towers"][tower]["file"]),
                                          config["device"], {**config["properties"], "INFERENCE_NUM_THREADS": threads})
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            raise ValueError(f"OpenVINO {openvino.get_version()} cannot load the {tower} tower of {directory} "
                             f"({first_line}); re-export the artifact with this OpenVINO version") from None
        request, outputs = compiled.create_infer_request(), compiled.outputs

        def infer(batch: Any, output: int = 0, request: Any = request, outputs: Any = outputs) -> Any:
            return np.array(request.infer({0: batch})[outputs[output]], dtype=np.float32)

        towers[tower] = infer
        execution[tower] = tower_execution(compiled)
    executed = combined_precision({tower: facts["executed_precision"] for tower, facts in execution.items()})
    return towers, {"version": openvino.get_version(), "threads": threads, "execution": execution,
                    "executed_precision": executed}


def warnings(manifest: dict[str, Any], info: dict[str, Any], where: str) -> list[str]:
    """Where a tower executes another inference precision than the artifact asked for (on ``where``)."""
    requested = manifest["runtime_config"]["properties"]["INFERENCE_PRECISION_HINT"]
    return [f"{tower} tower: INFERENCE_PRECISION_HINT {requested} was requested but "
            f"{facts['inference_precision']} executes on {where}"
            for tower, facts in info["execution"].items() if facts["inference_precision"] != requested]


def description(manifest: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """What a runtime's ``describe()`` adds for this backend: the execution read back per tower."""
    return {"execution": info["execution"]}
