"""OpenVINO runtime: loads a verified IR artifact and reports the precision the CPU plugin actually executes."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.export import TOWERS, foreign_machine_warnings, verify_artifact
from lpmr_edge.manifest import sha256_json
from lpmr_edge.runtimes.base import Runtime, run_in_static_batches

COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution")
PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "u8": "int8", "i8": "int8", "u4": "int4",
                   "i4": "int4"}
COMPRESSED_WEIGHTS = ("fp16", "int8", "int4")


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


class OpenVinoRuntime(Runtime):
    """Both towers of an OpenVINO artifact compiled for the CPU with the artifact's recorded properties."""

    name = "openvino"

    def __init__(self, artifact_dir: Path, threads: int | None = None) -> None:
        import openvino as ov

        self.artifact_dir = Path(artifact_dir)
        self.manifest = verify_artifact(self.artifact_dir, self.name)
        config = self.manifest["runtime_config"]
        self.threads = threads or config["threads"]
        properties = {**config["properties"], "INFERENCE_NUM_THREADS": self.threads}
        core = ov.Core()
        self._compiled, self._requests, self._execution = {}, {}, {}
        for tower in TOWERS:
            try:
                compiled = core.compile_model(core.read_model(self.artifact_dir / self.manifest["towers"][tower]["file"]),
                                              config["device"], properties)
            except RuntimeError as error:
                first_line = str(error).strip().splitlines()[0]
                raise UserError(f"OpenVINO cannot load the {tower} tower of {self.artifact_dir} ({first_line}); "
                                "re-export the artifact with this OpenVINO version") from None
            self._compiled[tower] = compiled
            self._requests[tower] = compiled.create_infer_request()
            hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            group = int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
            layers = executed_layers(compiled)
            self._execution[tower] = {"inference_precision": hint, "dynamic_quantization_group_size": group,
                                      "layers": layers, "executed_precision": summarise_execution(hint, layers, group)}
        self._has_head = len(self._compiled["image"].outputs) > 1

    @property
    def executed_precision(self) -> str:
        """What ran, read back from the compiled models (``image: X, text: Y`` when the towers differ)."""
        per_tower = {tower: self._execution[tower]["executed_precision"] for tower in TOWERS}
        if per_tower["image"] == per_tower["text"]:
            return per_tower["image"]
        return ", ".join(f"{tower}: {precision}" for tower, precision in per_tower.items())

    @property
    def identity(self) -> str:
        return sha256_json({"runtime": self.name, "precision": self.manifest["precision"],
                            "files": self.manifest["files"], "executed": self.executed_precision})

    @property
    def model_info(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def static_batch(self) -> dict[str, int | None]:
        shapes = {tower: self.manifest["towers"][tower]["inputs"][0]["shape"][0] for tower in TOWERS}
        return {tower: None if batch == -1 else batch for tower, batch in shapes.items()}

    def _infer(self, tower: str, inputs: np.ndarray, output: int = 0) -> np.ndarray:
        results = self._requests[tower].infer({0: inputs})
        return np.array(results[self._compiled[tower].outputs[output]], dtype=np.float32)

    def _image_features(self, images: np.ndarray) -> np.ndarray:
        return self._infer("image", images)

    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        return self._infer("text", tokens)

    def zero_shot_logits(self, images: np.ndarray) -> np.ndarray:
        """Logits from the fused zero-shot head (artifacts exported with ``--fuse-head``)."""
        if not self._has_head:
            raise UserError(f"{self.artifact_dir} has no fused zero-shot head; export it with --fuse-head")
        return run_in_static_batches(lambda chunk: self._infer("image", chunk, output=1),
                                     np.asarray(images, dtype=np.float32), self.static_batch["image"])

    def warnings(self) -> list[str]:
        """Where execution differs from what the artifact asked for, or the machine from its target."""
        problems = []
        requested = self.manifest["runtime_config"]["properties"]["INFERENCE_PRECISION_HINT"]
        for tower in TOWERS:
            executed = self._execution[tower]["inference_precision"]
            if executed != requested:
                problems.append(f"{tower} tower: INFERENCE_PRECISION_HINT {requested} was requested but "
                                f"{executed} executes on this CPU")
        problems += foreign_machine_warnings(self.manifest)
        return problems

    def describe(self) -> dict[str, Any]:
        import openvino as ov

        return {"runtime": self.name, "version": ov.get_version(), "precision": self.manifest["precision"],
                "executed_precision": self.executed_precision, "threads": self.threads, "identity": self.identity,
                "model": self.model_info, "artifact": self.manifest,
                "execution": self._execution, "warnings": self.warnings()}
