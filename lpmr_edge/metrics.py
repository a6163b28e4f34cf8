"""Metric definitions, delegated to scikit-learn / scipy and pinned by hand-checked tests."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1, top-5 (top-k with k = min(5, classes)) and balanced accuracy."""
    classes = np.arange(logits.shape[1])
    predictions = logits.argmax(axis=1)
    return {
        "top1": float(np.mean(predictions == labels)),
        "top5": float(top_k_accuracy_score(labels, logits, k=min(5, len(classes)), labels=classes)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
    }
