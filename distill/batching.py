"""Batches with dynamic padding; training batches grouped by length so little is padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from distill.padding import pad

# Training batches are drawn from shuffled windows of this many batches, sorted by length inside
# each window: most of the speed of sorting, most of the randomness of shuffling.
WINDOW_BATCHES = 50


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Every row exactly once, in batches of similar lengths, in a seeded random order."""
    order = rng.permutation(len(lengths))
    window = batch_size * WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Inference batches in length order; callers scatter results back by index."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(split, indices: np.ndarray, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch of rows `indices` of a tokenized split (a `datasets.Dataset`)."""
    rows = split[[int(i) for i in indices]]
    return {
        "index": torch.as_tensor(indices, dtype=torch.long),
        "input_ids": torch.from_numpy(pad(rows["input_ids"], pad_id)),
        "attention_mask": torch.from_numpy(pad(rows["attention_mask"], 0)),
        "label": torch.as_tensor(rows["label"], dtype=torch.long),
    }


def iterate_sorted(split, batch_size: int, pad_id: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    lengths = [len(ids) for ids in split["input_ids"]]
    for indices in sorted_batches(lengths, batch_size):
        yield collate(split, indices, pad_id)
