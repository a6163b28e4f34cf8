"""NNCF accuracy control driven by a reliability objective (OpenVINO): which image-tower operations to keep in FP.

``nncf.quantize_with_accuracy_control`` quantizes the image tower, then reverts quantized operations to
floating point, ranked by their effect, until the validation function is within ``max_drop`` of the FP32
model's. Its validation function here is the tune objective (ECE, NLL or top-1, as ``lpmr_edge.metrics``
defines them; negated when lower is better) of zero-shot classification of the *validation split's* ID
images against the FP32 text embeddings, at the suite's logit scale. The operations it reverted become an
ordinary configuration (``ignored_patterns`` naming them exactly), exported, evaluated and timed like every
other trial and reproducible from its artifact manifest.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpmr_edge.data import preprocess_batches
from lpmr_edge.manifest import atomic_write_json, read_json, sha256_json
from lpmr_edge.metrics import accuracy_summary, calibration_summary, classification_outcomes
from lpmr_edge.suite.families.classification import ID_SET, resolve_logit_scale
from lpmr_edge.suite.run import EvalSettings
from lpmr_edge.tune.space import TrialConfig
from lpmr_edge.tune.splits import VALIDATION, Splits, split_sets
from lpmr_edge.zeroshot import class_embeddings, cosine_similarities

if TYPE_CHECKING:
    import openvino as ov

# objective metric key -> higher-is-better score of per-sample outcomes
SCORES = {"ece": lambda outcomes: -calibration_summary(outcomes)["ece"],
          "nll": lambda outcomes: -calibration_summary(outcomes)["nll"],
          "top1": lambda outcomes: accuracy_summary(outcomes)["top1"]}
QUANTIZABLE = ("MatMul", "Convolution")
MAX_ITERATIONS = 4  # rounds of reverting: bounds the search time


def quantized_operations(model: ov.Model) -> set[str]:
    """Friendly names of the MatMul/Convolution operations with a FakeQuantize on an input."""
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in QUANTIZABLE and any(
        op.input_value(index).get_node().get_type_name() == "FakeQuantize" for index in range(op.get_input_size()))}


def reverted_operations(model_spec: str, base: TrialConfig, suite: Any, splits: Splits, settings: EvalSettings,
                        metric: str, max_drop: float) -> list[str]:
    """The image-tower operations NNCF's accuracy control keeps in FP for ``metric`` on the validation split."""
    from lpmr_edge.models import load_model
    from lpmr_edge.quantize import load_calibration_inputs, quantize_openvino, quantize_openvino_with_control
    from lpmr_edge.runtimes.openvino.export import convert_tower
    from lpmr_edge.runtimes.torch_runtime import TorchRuntime

    clip, options = load_model(model_spec), base.options
    images = next(s for s in split_sets(suite, splits, VALIDATION, settings, clip.image_size) if s.name == ID_SET).dataset
    embeddings = class_embeddings(TorchRuntime(clip), clip.tokenize, images.class_names, images.templates)
    scale = resolve_logit_scale(suite.calibration.logit_scale, clip.logit_scale)
    inputs = np.concatenate(list(preprocess_batches(images, clip.preprocess, settings.batch_size)))
    items = [(inputs[index:index + 1], int(label)) for index, label in enumerate(images.labels)]

    def validate(compiled: Any, data: Iterable[tuple[np.ndarray, int]]) -> tuple[float, None]:
        chosen = list(data)
        features = np.concatenate([compiled(image)[0] for image, _ in chosen])
        logits = scale * cosine_similarities(features, embeddings)
        return float(SCORES[metric](classification_outcomes(logits, np.array([label for _, label in chosen])))), None

    calibration = load_calibration_inputs(clip, options).images
    plain = quantize_openvino(convert_tower(clip, "image"), calibration, options)
    controlled = quantize_openvino_with_control(convert_tower(clip, "image"), calibration, options, items, validate,
                                                max_drop, MAX_ITERATIONS)
    return sorted(quantized_operations(plain) - quantized_operations(controlled))


def controlled_config(root: Path, model_spec: str, base: TrialConfig, suite: Any, splits: Splits,
                      settings: EvalSettings, metric: str, max_drop: float) -> TrialConfig:
    """``base`` with the operations accuracy control reverted added as exact ignored-scope patterns; the
    reverted operations are stored (``accuracy-control/<key>.json``) so a resumed tune does not search again."""
    key = sha256_json({"model": model_spec, "base": base.describe(), "suite": repr(suite), "splits": repr(splits),
                       "metric": metric, "max_drop": max_drop, "iterations": MAX_ITERATIONS})[:16]
    path = Path(root) / "accuracy-control" / f"{key}.json"
    if path.is_file():
        reverted = read_json(path, "accuracy-control record")["reverted"]
    else:
        reverted = reverted_operations(model_spec, base, suite, splits, settings, metric, max_drop)
        atomic_write_json(path, {"base": base.describe(), "metric": metric, "max_drop": max_drop,
                                 "max_iterations": MAX_ITERATIONS, "reverted": reverted})
    patterns = tuple(dict(base.knobs).get("ignored_patterns", ()))
    return base.with_knobs(ignored_patterns=(*patterns, *(f"^{re.escape(name)}$" for name in reverted)))
