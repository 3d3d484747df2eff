"""Teacher target cache: the teacher runs once over the student's training rows.

Stored per row: the logits and the [CLS] state after the embeddings and after every teacher
layer (float16; small next to the data, and they feed the intermediate-layer loss). The rows are
the train split followed by any augmented rows. The key covers exactly what the targets depend
on: the teacher's weights, the tokenized data (its fingerprint includes the tokenizer and max
length) and the augmented rows. Temperature and loss weights are applied at training time, so
sweeping them reuses the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.batching import iterate_sorted
from distill.config import TrainingConfig
from distill.data import load_split
from distill.devices import CPU, Runtime, move_batch, resolve_runtime
from distill.models import load_classifier
from distill.store import Artifact, file_sha256, run_stage, stable_hash

LOGITS_FILE = "train_logits.npy"
CLS_FILE = "train_cls_states.npy"
FORMAT = 2  # bump when what the cache holds changes


class CacheError(RuntimeError):
    """The cache on disk does not match its manifest."""


@dataclass(frozen=True)
class TeacherTargets:
    logits: np.ndarray  # [rows, classes] float32
    cls_states: np.ndarray  # [rows, teacher_layers + 1, hidden] float16


def cache_key(teacher: Artifact, data: Artifact, augmented: Artifact | None = None) -> str:
    return stable_hash(
        "logits",
        FORMAT,
        teacher.manifest["weights_sha256"],
        data.manifest["fingerprint"],
        augmented.manifest["fingerprint"] if augmented else None,
    )


def training_rows(data: Artifact, augmented: Artifact | None):
    """The student's training rows: the train split, then the augmented rows if any."""
    train = load_split(data.path, "train")
    if augmented is None:
        return train
    from datasets import concatenate_datasets

    from distill.augment import load_augmented

    return concatenate_datasets([train, load_augmented(augmented)])


def logit_cache_stage(
    workdir: Path,
    teacher: Artifact,
    data: Artifact,
    augmented: Artifact | None = None,
    batch_size: int = 128,
    training: TrainingConfig | None = None,
) -> Artifact:
    """`training` (the teacher's section) picks the device and precision; None: CPU, fp32."""
    runtime = CPU if training is None else resolve_runtime(training, "teacher.training")
    return run_stage(
        workdir,
        "logit_cache",
        cache_key(teacher, data, augmented),
        lambda folder: build_logit_cache(teacher, data, augmented, folder, batch_size, runtime),
    )


@torch.inference_mode()
def teacher_outputs(
    model: torch.nn.Module, rows, batch_size: int, runtime: Runtime = CPU
) -> TeacherTargets:
    """The teacher's logits (float32) and per-layer [CLS] states (float16) for every row, in
    row order, computed on `runtime`'s device and precision; always stored as these dtypes."""
    model.to(runtime.device).eval()
    logits = np.empty((len(rows), model.config.num_labels), dtype=np.float32)
    layers, hidden = model.config.num_hidden_layers + 1, model.config.hidden_size
    cls_states = np.empty((len(rows), layers, hidden), dtype=np.float16)
    batches = iterate_sorted(rows, batch_size)
    for batch in tqdm(batches, desc="teacher targets", disable=None, leave=False):
        batch = move_batch(batch, runtime.device)
        with runtime.autocast():
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
        index = batch["index"].numpy()
        logits[index] = out.logits.float().cpu().numpy()
        states = torch.stack([h[:, 0] for h in out.hidden_states], 1)
        cls_states[index] = states.float().cpu().numpy()  # numpy rounds to float16
    return TeacherTargets(logits, cls_states)


def build_logit_cache(
    teacher: Artifact,
    data: Artifact,
    augmented: Artifact | None,
    folder: Path,
    batch_size: int,
    runtime: Runtime = CPU,
) -> dict[str, Any]:
    rows = training_rows(data, augmented)
    targets = teacher_outputs(load_classifier(teacher.path), rows, batch_size, runtime)
    np.save(folder / LOGITS_FILE, targets.logits)
    np.save(folder / CLS_FILE, targets.cls_states)
    return {
        "file": LOGITS_FILE,
        "cls_file": CLS_FILE,
        "rows": {
            "train": data.manifest["sizes"]["train"],
            "augmented": augmented.manifest["rows"] if augmented else 0,
        },
        "shape": list(targets.logits.shape),
        "dtype": str(targets.logits.dtype),
        "cls_shape": list(targets.cls_states.shape),
        "sha256": file_sha256(folder / LOGITS_FILE),
        "cls_sha256": file_sha256(folder / CLS_FILE),
        "teacher_sha256": teacher.manifest["weights_sha256"],
        "data_fingerprint": data.manifest["fingerprint"],
        "augmented_fingerprint": augmented.manifest["fingerprint"] if augmented else None,
    }


def _open_checked(cache: Artifact, name: str, sha: str, shape: list[int], verify: bool):
    path = cache.file(name)
    if verify and file_sha256(path) != sha:
        raise CacheError(f"logit cache {path} does not match the checksum in its manifest")
    array = np.load(path, mmap_mode="r")
    if list(array.shape) != list(shape):
        raise CacheError(f"logit cache {path} has shape {array.shape}, manifest says {shape}")
    return array


def open_targets(cache: Artifact, verify: bool = True) -> TeacherTargets:
    """The cached targets as read-only memmaps, checked against the manifest."""
    manifest = cache.manifest
    return TeacherTargets(
        _open_checked(cache, manifest["file"], manifest["sha256"], manifest["shape"], verify),
        _open_checked(
            cache, manifest["cls_file"], manifest["cls_sha256"], manifest["cls_shape"], verify
        ),
    )
