"""Classification metrics on numpy arrays (no torch: the ONNX and edge code use them too)."""

from __future__ import annotations

from typing import Any

import numpy as np


def predicted_labels(predictions_or_logits: Any) -> np.ndarray:
    """Labels from a [rows] label array or a [rows, classes] score array."""
    values = np.asarray(predictions_or_logits)
    return values.argmax(-1) if values.ndim == 2 else values


def accuracy(predictions_or_logits: Any, labels: Any) -> float:
    """Share of rows whose predicted label (argmax of logits, or the label given) is right."""
    predicted, expected = predicted_labels(predictions_or_logits), np.asarray(labels)
    if predicted.shape != expected.shape:
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} labels")
    if not len(expected):
        raise ValueError("accuracy of an empty set of rows")
    return float(np.mean(predicted == expected))


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, object]:
    """Accuracy, macro-F1 and the confusion matrix (rows: true, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, f1_score  # heavy: only where it is used

    predictions = predicted_labels(logits)
    return {
        "accuracy": accuracy(predictions, labels),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
        "confusion_matrix": confusion_matrix(
            labels, predictions, labels=list(range(num_classes))
        ).tolist(),
    }
