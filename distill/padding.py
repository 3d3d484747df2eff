"""Right-padding of token-id rows into one int64 array (numpy: shared by torch and ONNX code)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad(sequences: Sequence[Sequence[int]], value: int = 0) -> np.ndarray:
    """[rows, longest row] int64, each row left-aligned and filled up with `value`."""
    if not len(sequences):
        raise ValueError("cannot pad an empty batch")
    width = max(len(seq) for seq in sequences)
    out = np.full((len(sequences), width), value, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out
