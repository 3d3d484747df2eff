"""The student's training rows, their counts per source, and the teacher's targets for them.

The rows are the train split, then any augmented rows, then any transfer text. Cached teacher
targets are matched to these rows by index, so this order is the contract between the logit
cache (the teacher's token ids, `distill/logit_cache.py`) and the student (its own ids,
`distill/student.py`): row i of `TeacherTargets` belongs to training row i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.augment import AugmentManifest, load_augmented
from distill.data import UNLABELED, DataManifest, load_split
from distill.store import Artifact


@dataclass(frozen=True)
class TeacherTargets:
    """What the teacher computed for each training row (in row order, or a shard's order)."""

    logits: np.ndarray  # [rows, classes] float32
    cls_states: np.ndarray  # [rows, teacher_layers + 1, hidden] float16


def training_rows(data: Artifact[DataManifest], augmented: Artifact[AugmentManifest] | None):
    """The student's training rows: the train split, then the augmented rows if any, then the
    transfer text if any (one `datasets.Dataset`)."""
    parts = [load_split(data.path, "train")]
    if augmented is not None:
        parts.append(load_augmented(augmented))
    if UNLABELED in data.manifest.sizes:
        parts.append(load_split(data.path, UNLABELED))
    if len(parts) == 1:
        return parts[0]
    from datasets import concatenate_datasets

    return concatenate_datasets(parts)


def row_counts(
    data: Artifact[DataManifest], augmented: Artifact[AugmentManifest] | None
) -> dict[str, int]:
    """Rows per source, in training-row order (what the cache manifest records)."""
    return {
        "train": data.manifest.sizes["train"],
        "augmented": augmented.manifest.rows if augmented else 0,
        "transfer": data.manifest.sizes.get(UNLABELED, 0),
    }
