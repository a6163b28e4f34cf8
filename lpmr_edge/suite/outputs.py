"""A result directory as the suite writes it: per-sample outputs, then the manifest and metrics.

Layout (one directory per (runtime/artifact, suite run)):
  outputs/<set>.npz   per-sample image features (float32), labels, groups, the zero-shot class
                      embeddings, the model's logit scale, runtime identity and dataset hash
  manifest.json       runtime + artifact manifest, datasets, suite, seeds, tool versions
  metrics.json        metric values with bootstrap CIs, settings and conventions (written atomically, last)
Outputs already on disk for the same runtime identity, dataset and classifier are reused, so a killed
run resumes with the sets it had finished.
"""
from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpmr_edge.data import ImageDataset
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import MANIFEST_NAME, atomic_write_bytes, atomic_write_json, sha256_json
from lpmr_edge.metrics import classification_outcomes
from lpmr_edge.zeroshot import cosine_similarities

if TYPE_CHECKING:
    from lpmr_edge.runtimes.base import Runtime

OUTPUTS_DIR = "outputs"
METRICS_FILE = "metrics.json"
# What every metrics.json holds (lpmr_edge.results reads them); evaluate adds n, logit_scale and conventions.
RESULT_KEYS = ("model", "model_label", "runtime", "precision", "executed_precision", "dataset", "datasets",
               "settings", "suite", "metrics", "created")


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: the images and the dataset whose classes make the zero-shot head."""

    name: str
    dataset: ImageDataset
    classifier: ImageDataset
    id_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class SetOutputs:
    """Stored per-sample outputs of one evaluation set."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    id_index: np.ndarray
    class_embeddings: np.ndarray
    model_logit_scale: float
    runtime_identity: str
    dataset_sha256: str
    classifier_key: str

    def cosine(self) -> np.ndarray:
        """Cosine similarities ``[N,C]`` to the class embeddings."""
        return cosine_similarities(self.features, self.class_embeddings)

    def outcomes(self, logit_scale: float) -> dict[str, np.ndarray]:
        """Per-sample classification outcomes at a logit scale."""
        return classification_outcomes(logit_scale * self.cosine(), self.labels)


def outputs_path(out_dir: Path, set_name: str) -> Path:
    """Where a set's per-sample outputs are stored."""
    return Path(out_dir) / OUTPUTS_DIR / f"{set_name}.npz"


def load_outputs(out_dir: Path, set_name: str) -> SetOutputs:
    """Read one set's stored outputs."""
    path = outputs_path(out_dir, set_name)
    if not path.is_file():
        raise UserError(f"{path} is missing; run `lpmr-edge eval` with the same suite into {out_dir} first")
    names = [f.name for f in dataclasses.fields(SetOutputs)]
    with np.load(path) as stored:
        if not set(names) <= set(stored.files):
            raise UserError(f"{path} was written by an older lpmr-edge; delete it and re-run `lpmr-edge eval`")
        return SetOutputs(**{name: stored[name] if stored[name].ndim else stored[name].item() for name in names})


def _classifier_key(dataset: ImageDataset) -> str:
    return sha256_json({"classes": list(dataset.class_names), "templates": list(dataset.templates)})


def _stored_key(runtime: Runtime, eval_set: EvalSet) -> dict[str, str]:
    return {"runtime_identity": runtime.identity, "dataset_sha256": eval_set.dataset.sha256,
            "classifier_key": _classifier_key(eval_set.classifier)}


def collect_outputs(runtime: Runtime, eval_set: EvalSet, embeddings: np.ndarray, batches: Iterable[np.ndarray],
                    out_dir: Path, on_batch: Callable[[int], None] | None = None) -> bool:
    """Image features of a set through the runtime, stored unless already on disk for the same inputs;
    ``batches`` (read only when needed) are the set's preprocessed images in order.

    Returns whether it ran the set (False: reused the stored outputs).
    """
    path = outputs_path(out_dir, eval_set.name)
    if path.is_file():
        with np.load(path) as stored:
            if all(name in stored.files and str(stored[name]) == value
                   for name, value in _stored_key(runtime, eval_set).items()):
                return False
    chunks = []
    for batch in batches:
        chunks.append(runtime.image_features(batch))
        if on_batch:
            on_batch(len(batch))
    store_outputs(runtime, eval_set, embeddings, np.concatenate(chunks), out_dir)
    return True


def store_outputs(runtime: Runtime, eval_set: EvalSet, embeddings: np.ndarray, features: np.ndarray,
                  out_dir: Path) -> None:
    """Write a set's per-sample outputs (``features`` of ``eval_set.dataset`` in order, through ``runtime``)
    atomically, keyed so that ``collect_outputs`` reuses them."""
    handle = io.BytesIO()
    np.savez_compressed(handle, features=np.asarray(features).astype(np.float32), labels=eval_set.dataset.labels,
                        groups=eval_set.dataset.groups if eval_set.dataset.groups is not None else np.zeros(0),
                        id_index=eval_set.id_index, class_embeddings=embeddings,
                        model_logit_scale=np.float64(runtime.model_info["logit_scale"]),
                        **{name: np.str_(value) for name, value in _stored_key(runtime, eval_set).items()})
    atomic_write_bytes(outputs_path(out_dir, eval_set.name), handle.getvalue())


def write_result(out_dir: Path, result: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Write a result's ``manifest.json``, then its ``metrics.json`` (atomically, last: its presence marks a
    complete result). ``result`` must hold ``RESULT_KEYS`` and ``manifest`` the ``runtime`` description."""
    missing = [key for key in RESULT_KEYS if key not in result] + [
        f"manifest {key}" for key in ("runtime", "machine", "tool_versions", "created") if key not in manifest]
    if missing:
        raise ValueError(f"incomplete result for {out_dir}: missing {', '.join(missing)}")
    atomic_write_json(Path(out_dir) / MANIFEST_NAME, dict(manifest))
    atomic_write_json(Path(out_dir) / METRICS_FILE, dict(result))
