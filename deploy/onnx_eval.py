"""Running an ONNX classifier over a tokenized split with onnxruntime (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distill.padding import pad


def open_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 lets onnxruntime use every core
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(
    session: ort.InferenceSession,
    input_ids: Sequence[Sequence[int]],
    attention_mask: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> np.ndarray:
    """Logits for every row, in order; rows are batched by length to keep padding small."""
    order = np.argsort([len(ids) for ids in input_ids], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        feeds = {
            "input_ids": pad([input_ids[i] for i in rows]),
            "attention_mask": pad([attention_mask[i] for i in rows]),
        }
        logits = session.run(["logits"], feeds)[0]
        if out is None:
            out = np.empty((len(order), logits.shape[-1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None, "cannot run on an empty split"
    return out
