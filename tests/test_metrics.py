"""One accuracy and one padding function, numpy-only so ONNX and edge code can use them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from distill.metrics import accuracy, classification_metrics
from distill.padding import pad


def test_accuracy_from_logits_or_labels():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = [1, 0, 0, 1]
    assert accuracy(logits, labels) == 0.5
    assert accuracy(np.array([1, 0, 0, 1]), labels) == 1.0


def test_accuracy_refuses_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy(np.array([1, 0, 1]), [1, 0])
    with pytest.raises(ValueError, match="empty"):
        accuracy(np.array([]), [])


def test_classification_metrics():
    logits = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    metrics = classification_metrics(logits, np.array([0, 0, 1, 1]), num_classes=2)
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    assert metrics["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_pad_right_pads_with_the_value():
    out = pad([[5, 6, 7], [8], []], value=1)
    assert out.dtype == np.int64
    assert out.tolist() == [[5, 6, 7], [8, 1, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="empty batch"):
        pad([])


def test_collate_pads_through_the_same_function(tiny_data):
    from distill.batching import collate
    from distill.data import load_split

    split = load_split(tiny_data.path, "train")
    rows = np.arange(5)
    batch = collate(split, rows, pad_id=3)
    expected = pad([split[int(i)]["input_ids"] for i in rows], 3)
    assert np.array_equal(batch["input_ids"].numpy(), expected)


def test_metrics_and_padding_import_neither_torch_nor_sklearn():
    code = (
        "import sys, distill.metrics, distill.padding; "
        "print(sorted(m for m in ('torch', 'sklearn', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
