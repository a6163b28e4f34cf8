"""Parity of an artifact with the torch FP32 reference: feature cosine, max differences, top-1 agreement."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.artifact import feature_agreement
from lpmr_edge.errors import UserError
from lpmr_edge.runtimes.base import Runtime


def torch_reference(runtime: Runtime, threads: int | None = None) -> Runtime:
    """The torch FP32 runtime of the model an artifact was exported from (weights checked by hash)."""
    from lpmr_edge.models import load_model
    from lpmr_edge.runtimes.torch_runtime import TorchRuntime

    info = runtime.model_info
    clip = load_model(info["spec"])
    if clip.weights_sha256 != info["weights_sha256"]:
        raise UserError(f"model '{info['spec']}' now loads different weights than the artifact was exported from "
                        "(weights sha256 differs); re-export the artifact")
    return TorchRuntime(clip, threads=threads)


def compare_runtimes(candidate: Runtime, reference: Runtime, images: np.ndarray, tokens: np.ndarray,
                     class_count: int) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Feature agreement per tower and zero-shot top-1 agreement (prompts are ``class_count`` equal groups).

    Returns the summary and each side's outputs (``image``, ``text`` features and ``predictions``).
    """
    from lpmr_edge.zeroshot import cosine_similarities, normalise

    outputs = {}
    for name, runtime in (("candidate", candidate), ("reference", reference)):
        text = normalise(runtime.text_features(tokens))
        embeddings = normalise(text.reshape(class_count, -1, text.shape[-1]).mean(axis=1))
        image = runtime.image_features(images)
        outputs[name] = {"image": image, "text": text, "predictions": cosine_similarities(image, embeddings).argmax(1)}
    candidate_out, reference_out = outputs["candidate"], outputs["reference"]
    return {"image": feature_agreement(reference_out["image"], candidate_out["image"]),
            "text": feature_agreement(reference_out["text"], candidate_out["text"]),
            "top1_agreement": float((candidate_out["predictions"] == reference_out["predictions"]).mean())}, outputs


def check_parity(artifact: Path, n: int = 256, dataset: str = "fmnist-test",
                 threads: int | None = None) -> dict[str, Any]:
    """Compare an artifact (any runtime) with the torch FP32 reference on the first ``n`` images of a dataset."""
    from lpmr_edge.data import load_dataset, preprocess_batches
    from lpmr_edge.models import build_preprocess, build_tokenizer
    from lpmr_edge.runtimes.factory import open_runtime

    if n < 1:
        raise UserError(f"--n {n}: compare at least one image")
    candidate = open_runtime(artifact=artifact, threads=threads)
    reference = torch_reference(candidate, threads=threads)
    data = load_dataset(dataset).head(n)
    if not data.class_names:
        raise UserError(f"dataset '{dataset}' has no class names; use a labelled dataset such as fmnist-test")
    images = np.concatenate(list(preprocess_batches(data, build_preprocess(candidate.model_info), 64)))
    prompts = [template.format(name) for name in data.class_names for template in data.templates]
    tokens = build_tokenizer(candidate.model_info)(prompts)
    comparison, outputs = compare_runtimes(candidate, reference, images, tokens, len(data.class_names))
    labelled = data.labels >= 0
    description = candidate.describe()
    result = {"artifact": str(artifact), "runtime": candidate.name, "precision": description["precision"],
              "executed_precision": description["executed_precision"], "threads": description["threads"],
              "model": candidate.model_info["spec"], "model_label": candidate.model_info["label"],
              "dataset": data.name, "n": len(data), **comparison,
              **{f"top1_{side}": float((outputs[side]["predictions"] == data.labels)[labelled].mean())
                 for side in outputs},
              "warnings": description.get("warnings", [])}
    head = description["artifact"].get("head")
    if head is not None:
        result["fused_head"] = _fused_head_agreement(candidate, reference, images, outputs["reference"]["image"],
                                                     head)
    return result


def _fused_head_agreement(candidate: Any, reference: Runtime, images: np.ndarray, reference_features: np.ndarray,
                          head: dict[str, Any]) -> dict[str, float]:
    """The fused logits against logits computed from torch features and torch class embeddings."""
    from lpmr_edge.models import build_tokenizer
    from lpmr_edge.zeroshot import class_embeddings, cosine_similarities

    embeddings = class_embeddings(reference, build_tokenizer(reference.model_info), head["classes"],
                                  head["templates"])
    expected = head["logit_scale"] * cosine_similarities(reference_features, embeddings)
    fused = candidate.zero_shot_logits(images)
    agreement = feature_agreement(expected, fused)
    return {"max_abs_diff": agreement["max_abs_diff"], "relative_max_diff": agreement["relative_max_diff"],
            "top1_agreement": float((expected.argmax(1) == fused.argmax(1)).mean())}
