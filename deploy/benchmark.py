"""Accuracy and batch-1 latency of the models a promotion compares, on a tokenized split.

Latency is one example at a time on one thread, as an edge device answers requests, measured
with `deploy.latency` (ONNX models in interleaved rounds, so load from other jobs hits them alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.latency import (
    Timing,
    batch1_feeds,
    compare_onnx_latency_each,
    summarize,
    time_calls,
)
from deploy.onnx_eval import onnx_logits, open_session
from distill.metrics import accuracy

WARMUP = 3


def first_feeds(split: Mapping[str, Sequence], limit: int) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds of the split's first `limit` rows (a datasets split or a dict of lists)."""
    count = min(limit, len(split["input_ids"]))
    return batch1_feeds(split["input_ids"][:count], split["attention_mask"][:count])


def onnx_latencies(
    models: Mapping[str, tuple[Path, Mapping[str, Sequence]]], limit: int
) -> dict[str, Timing]:
    """Batch-1 latency of each model on the first `limit` rows of its own tokenized split."""
    return compare_onnx_latency_each(
        {name: (path, first_feeds(split, limit)) for name, (path, split) in models.items()},
        threads=1,
    )


def torch_latency(model_folder: Path, split: Mapping[str, Sequence], limit: int) -> Timing:
    """A saved PyTorch classifier on one thread, to set the teacher beside its exports."""
    import torch

    from distill.models import load_classifier

    model = load_classifier(model_folder).eval()
    feeds = first_feeds(split, limit)

    def run(feed: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return model(**{name: torch.from_numpy(array) for name, array in feed.items()}).logits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        time_calls(run, feeds[:WARMUP])
        return summarize(time_calls(run, feeds))
    finally:
        torch.set_num_threads(threads)


def onnx_accuracy(path: Path, split: Mapping[str, Sequence]) -> tuple[float, int]:
    """Accuracy on the split's labels, and the model's number of outputs (classes)."""
    logits = onnx_logits(open_session(path), split["input_ids"], split["attention_mask"])
    labels = np.asarray(split["label"])
    return accuracy(logits, labels), int(logits.shape[-1])
