"""Run evaluation sets through a runtime, store per-sample outputs, compute metrics.

Results layout (one directory per (runtime/artifact, suite run)):
  outputs/<set>.npz   per-sample image features (float32), labels, optional groups
  metrics.json        metric values and settings (written atomically, last)
  manifest.json       runtime + artifact manifest, datasets, seeds, tool versions
Outputs already on disk for the same runtime identity and dataset hash are reused,
so a killed run resumes where it stopped.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.data import ImageDataset, load_dataset, preprocess_batches
from lpmr_edge.manifest import atomic_write_bytes, atomic_write_json, machine_info, now_utc, tool_versions
from lpmr_edge.metrics import accuracy_metrics
from lpmr_edge.models import build_preprocess, build_tokenizer
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.zeroshot import class_embeddings, cosine_similarities

OUTPUTS_DIR = "outputs"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how."""

    dataset: str = "fmnist-test"
    limit: int | None = None
    batch_size: int = 64
    seed: int = 0
    skip_bad_images: bool = False


def _outputs_path(out_dir: Path, set_name: str) -> Path:
    return out_dir / OUTPUTS_DIR / f"{set_name}.npz"


def collect_features(runtime: Runtime, dataset: ImageDataset, preprocess: Callable[[Any], Any],
                     out_dir: Path, set_name: str, batch_size: int,
                     on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Image features for a dataset through the runtime, reused from disk when already computed."""
    path = _outputs_path(out_dir, set_name)
    if path.is_file():
        stored = np.load(path)
        if str(stored["runtime_identity"]) == runtime.identity and str(stored["dataset_sha256"]) == dataset.sha256:
            return stored["features"]
    chunks = []
    for batch in preprocess_batches(dataset, preprocess, batch_size):
        chunks.append(runtime.image_features(batch))
        if on_batch:
            on_batch(len(batch))
    features = np.concatenate(chunks).astype(np.float32)
    _save_outputs(path, features=features, labels=dataset.labels,
                  groups=dataset.groups if dataset.groups is not None else np.zeros(0),
                  runtime_identity=np.str_(runtime.identity), dataset_sha256=np.str_(dataset.sha256))
    return features


def _save_outputs(path: Path, **arrays: np.ndarray) -> None:
    import io

    handle = io.BytesIO()
    np.savez_compressed(handle, **arrays)
    atomic_write_bytes(path, handle.getvalue())


def evaluate(runtime: Runtime, out_dir: Path, settings: EvalSettings = EvalSettings(),
             progress: Callable[[str, int], Iterator[Callable[[int], None]]] | None = None) -> dict[str, Any]:
    """Zero-shot evaluation of ``settings.dataset`` through ``runtime``; writes and returns metrics."""
    out_dir = Path(out_dir)
    model_info = runtime.model_info
    dataset = load_dataset(settings.dataset, skip_bad_images=settings.skip_bad_images).head(settings.limit)
    embeddings = class_embeddings(runtime, build_tokenizer(model_info), dataset.class_names, dataset.templates)
    preprocess = build_preprocess(model_info)
    if progress:
        with progress(f"{settings.dataset} ({runtime.name})", len(dataset)) as advance:
            features = collect_features(runtime, dataset, preprocess, out_dir, "id", settings.batch_size, advance)
    else:
        features = collect_features(runtime, dataset, preprocess, out_dir, "id", settings.batch_size)
    logits = model_info["logit_scale"] * cosine_similarities(features, embeddings)
    metrics = {"accuracy": accuracy_metrics(logits, dataset.labels)}
    description = runtime.describe()
    result = {
        "model": model_info["spec"], "model_label": model_info["label"], "runtime": runtime.name,
        "precision": description["precision"], "executed_precision": description["executed_precision"],
        "n": len(dataset), "dataset": dataset.describe(), "settings": settings.__dict__, "metrics": metrics,
        "logit_scale": model_info["logit_scale"], "created": now_utc(),
    }
    atomic_write_json(out_dir / "manifest.json", {"runtime": description, "dataset": dataset.describe(),
                                                  "settings": settings.__dict__, "tool_versions": tool_versions(),
                                                  "machine": machine_info(), "created": result["created"]})
    atomic_write_json(out_dir / METRICS_FILE, result)
    return result
