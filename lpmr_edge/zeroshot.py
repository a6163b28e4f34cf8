"""Zero-shot classifier: class embeddings from prompt templates (cached on disk) and logits."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lpmr_edge.cache import cache_root
from lpmr_edge.manifest import atomic_write_bytes, sha256_json

if TYPE_CHECKING:  # the cache only needs a runtime's identity and text tower, not the runtimes package
    from lpmr_edge.runtimes.base import Runtime



def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def class_embeddings_key(runtime: Runtime, class_names: Sequence[str], templates: Sequence[str]) -> str:
    """Cache key: the runtime's identity (weights, precision) plus the prompts."""
    return sha256_json({"runtime": runtime.identity, "classes": list(class_names), "templates": list(templates)})


def class_embeddings(runtime: Runtime, tokenizer: Callable[[list[str]], np.ndarray],
                     class_names: Sequence[str], templates: Sequence[str],
                     cache_dir: Path | None = None) -> np.ndarray:
    """Unit-norm class embeddings ``[C,D]``: the mean of each class's normalised template embeddings.

    Computed once per (runtime identity, class names, templates) and cached as ``.npy``.
    """
    path = Path(cache_dir or cache_root()) / "text" / f"{class_embeddings_key(runtime, class_names, templates)}.npy"
    if path.is_file():
        return np.load(path)
    prompts = [template.format(name) for name in class_names for template in templates]
    features = normalise(runtime.text_features(tokenizer(prompts)))
    embeddings = normalise(features.reshape(len(class_names), len(templates), -1).mean(axis=1))
    buffer = _npy_bytes(embeddings)
    atomic_write_bytes(path, buffer)
    return embeddings


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    handle = io.BytesIO()
    np.save(handle, array)
    return handle.getvalue()


def cosine_similarities(image_features: np.ndarray, class_embeddings_: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[N,C]`` between images and classes; logits are this times a logit scale."""
    return normalise(image_features) @ class_embeddings_.T
