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
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.batching import iterate_sorted
from distill.config import TrainingConfig
from distill.data import load_split
from distill.devices import CPU, Runtime, move_batch, resolve_runtime
from distill.models import load_classifier
from distill.store import Artifact, StageManifest, file_sha256, run_stage, stage_key

if TYPE_CHECKING:
    from distill.augment import AugmentManifest
    from distill.data import DataManifest
    from distill.teacher import TeacherManifest

LOGITS_FILE = "train_logits.npy"
CLS_FILE = "train_cls_states.npy"
VERSION = 2  # bump when what the cache holds changes


class CacheManifest(StageManifest):
    file: str
    cls_file: str
    rows: dict[str, int]  # "train", "augmented"
    shape: list[int]
    dtype: str
    cls_shape: list[int]
    sha256: str
    cls_sha256: str
    teacher_sha256: str
    data_fingerprint: str
    augmented_fingerprint: str | None


class CacheError(RuntimeError):
    """The cache on disk does not match its manifest."""


@dataclass(frozen=True)
class TeacherTargets:
    logits: np.ndarray  # [rows, classes] float32
    cls_states: np.ndarray  # [rows, teacher_layers + 1, hidden] float16


def cache_key(
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None = None,
    precision: str = "fp32",
) -> str:
    """Teacher, data, augmented rows and the inference precision; never temperature or loss
    weights (bf16 logits differ from fp32 ones, so precision is part of what the cache holds)."""
    return stage_key(
        "logit_cache",
        VERSION,
        teacher.key,
        data.key,
        augmented.key if augmented else None,
        precision,
    )


def training_rows(data: Artifact[DataManifest], augmented: Artifact[AugmentManifest] | None):
    """The student's training rows: the train split, then the augmented rows if any."""
    train = load_split(data.path, "train")
    if augmented is None:
        return train
    from datasets import concatenate_datasets

    from distill.augment import load_augmented

    return concatenate_datasets([train, load_augmented(augmented)])


def logit_cache_stage(
    store: Path,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None = None,
    batch_size: int = 128,
    training: TrainingConfig | None = None,
) -> Artifact[CacheManifest]:
    """`training` (the teacher's section) picks the device and precision; None: CPU, fp32."""
    runtime = CPU if training is None else resolve_runtime(training, "teacher.training")
    return run_stage(
        store,
        "logit_cache",
        cache_key(teacher, data, augmented, runtime.precision),
        lambda folder: build_logit_cache(teacher, data, augmented, folder, batch_size, runtime),
        CacheManifest,
        accept=lambda manifest: _same_teacher(manifest, teacher),
    )


def _same_teacher(manifest: CacheManifest, teacher: Artifact[TeacherManifest]) -> str | None:
    """A teacher rebuilt under the same key (its weights were damaged) may differ: targets
    computed from other weights are not this teacher's."""
    if manifest.teacher_sha256 == teacher.manifest.weights_sha256:
        return None
    return (
        f"its targets come from teacher weights {manifest.teacher_sha256[:12]}, "
        f"the teacher is now {teacher.manifest.weights_sha256[:12]}"
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
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None,
    folder: Path,
    batch_size: int,
    runtime: Runtime = CPU,
) -> CacheManifest:
    rows = training_rows(data, augmented)
    targets = teacher_outputs(load_classifier(teacher.path), rows, batch_size, runtime)
    np.save(folder / LOGITS_FILE, targets.logits)
    np.save(folder / CLS_FILE, targets.cls_states)
    return CacheManifest(
        file=LOGITS_FILE,
        cls_file=CLS_FILE,
        rows={
            "train": data.manifest.sizes["train"],
            "augmented": augmented.manifest.rows if augmented else 0,
        },
        shape=list(targets.logits.shape),
        dtype=str(targets.logits.dtype),
        cls_shape=list(targets.cls_states.shape),
        sha256=file_sha256(folder / LOGITS_FILE),
        cls_sha256=file_sha256(folder / CLS_FILE),
        teacher_sha256=teacher.manifest.weights_sha256,
        data_fingerprint=data.manifest.fingerprint,
        augmented_fingerprint=augmented.manifest.fingerprint if augmented else None,
    )


def _open_checked(
    cache: Artifact[CacheManifest], name: str, sha: str, shape: list[int], verify: bool
):
    path = cache.file(name)
    if verify and file_sha256(path) != sha:
        raise CacheError(f"logit cache {path} does not match the checksum in its manifest")
    array = np.load(path, mmap_mode="r")
    if list(array.shape) != list(shape):
        raise CacheError(f"logit cache {path} has shape {array.shape}, manifest says {shape}")
    return array


def open_targets(cache: Artifact[CacheManifest], verify: bool = True) -> TeacherTargets:
    """The cached targets as read-only memmaps, checked against the manifest."""
    manifest = cache.manifest
    return TeacherTargets(
        _open_checked(cache, manifest.file, manifest.sha256, manifest.shape, verify),
        _open_checked(cache, manifest.cls_file, manifest.cls_sha256, manifest.cls_shape, verify),
    )
