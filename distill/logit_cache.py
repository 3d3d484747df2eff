"""Teacher target cache: the teacher runs once over the student's training rows.

Stored per row: the logits and the [CLS] state after the embeddings and after every teacher
layer (float16; small next to the data, and they feed the intermediate-layer loss). The rows are
the train split followed by any augmented rows and any transfer text. The key covers exactly
what the targets depend on: the teacher's weights, the tokenized data (its fingerprint includes
the tokenizer, max length and transfer text) and the augmented rows. Temperature and loss
weights are applied at training time, so sweeping them reuses the cache.

The rows (and their order) are `distill/rows.py`'s; they are labelled in shards
(`distill/shards.py`). A reused cache folder's files are checked once, by the store
(`distill.store.verified_manifest`); reading the targets checks only their shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distill.config import TrainingConfig
from distill.devices import CPU, Runtime, resolve_runtime
from distill.fan_out import FanOut, run_each_here
from distill.labelling import TORCH, Labelling, LabellingRecord
from distill.rows import TeacherTargets, row_counts, training_rows
from distill.shards import assemble, label_shard, plan_shards, release_teachers
from distill.store import MANIFEST, Artifact, StageManifest, file_sha256, run_stage, stage_key

if TYPE_CHECKING:
    from distill.augment import AugmentManifest
    from distill.data import DataManifest
    from distill.teacher import TeacherManifest

LOGITS_FILE = "train_logits.npy"
CLS_FILE = "train_cls_states.npy"
VERSION = 3  # bump when what the cache holds changes (3: the labelling runtime is in the key)


class CacheManifest(StageManifest):
    file: str
    cls_file: str
    rows: dict[str, int]  # "train", "augmented", "transfer" (older caches lack "transfer")
    shape: list[int]
    dtype: str
    cls_shape: list[int]
    sha256: str  # of the two files, as recorded when built (the store checks `_files` on reuse)
    cls_sha256: str
    teacher_sha256: str
    data_fingerprint: str
    augmented_fingerprint: str | None
    device: str  # where the teacher ran; the logits on disk are float32 whatever the precision
    precision: str
    # The runtime that labelled the rows ("torch", "onnx", "onnx-int8") and its figures against
    # the PyTorch teacher on the validation split (None for torch: it is the reference).
    labelling_runtime: str = "torch"
    labelling_max_abs_logit_diff: float | None = None
    labelling_agreement: float | None = None
    labelling_mean_kl: float | None = None
    labelling_graph_key: str | None = None  # the teacher_onnx stage whose graph labelled it
    labelling: LabellingRecord | None = None  # the choice, with every candidate's numbers


class CacheError(RuntimeError):
    """The cache on disk cannot be read as its manifest describes it."""


def cache_key(
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None = None,
    precision: str = "fp32",
    labelling: Labelling = TORCH,
) -> str:
    """Teacher, data, augmented rows, the inference precision and the labelling runtime (with
    the graph it runs); never temperature or loss weights (bf16 or INT8 logits differ from fp32
    ones, so precision and runtime are part of what the cache holds)."""
    return stage_key(
        "logit_cache",
        VERSION,
        teacher.key,
        data.key,
        augmented.key if augmented else None,
        precision,
        labelling.runtime,
        labelling.graph_key,
    )


# Rows per shard when the config does not say (compute.shard_rows): small data is one shard.
DEFAULT_SHARD_ROWS = 100_000
# Rows per batch when the teacher labels the cache; a runtime's speed is judged at this batch
# (deploy/teacher_precision.py), as speed per text differs between batch sizes.
LABELLING_BATCH = 128


def logit_cache_stage(
    store: Path,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None = None,
    batch_size: int = LABELLING_BATCH,
    training: TrainingConfig | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    fan_out: FanOut = run_each_here,
    labelling: Labelling = TORCH,
) -> Artifact[CacheManifest]:
    """`training` (the teacher's section) picks the device and precision; None: CPU, fp32.
    `labelling` is the runtime that runs the teacher (`distill.labelling`; default PyTorch, in
    the labelling's precision where it names one); another runtime runs its own graph on the
    CPU, in its own precision.
    The rows are labelled in shards of `shard_rows` (distill/shards.py), each run by `fan_out`;
    the shard size never changes the cache's bytes, so it is not part of the key."""
    runtime = CPU if training is None else resolve_runtime(training, "teacher.training")
    if labelling.open is not None:
        runtime = CPU  # the graph runs in ONNX Runtime, on the CPU, in its own precision
    elif labelling.precision is not None:
        runtime = dataclasses.replace(runtime, precision=labelling.precision)
    key = cache_key(teacher, data, augmented, runtime.precision, labelling)
    build = functools.partial(
        build_logit_cache,
        teacher,
        data,
        augmented,
        batch_size=batch_size,
        runtime=runtime,
        store=store,
        key=key,
        shard_rows=shard_rows,
        fan_out=fan_out,
        labelling=labelling,
    )
    return run_stage(
        store,
        "logit_cache",
        key,
        build,
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


def build_logit_cache(
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None,
    folder: Path,
    *,
    batch_size: int,
    runtime: Runtime = CPU,
    store: Path,
    key: str,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    fan_out: FanOut = run_each_here,
    labelling: Labelling = TORCH,
) -> CacheManifest:
    """Plan the shards, have `fan_out` build (or reuse) each, assemble them in row order."""
    rows = training_rows(data, augmented)
    shards = plan_shards([len(ids) for ids in rows["input_ids"]], batch_size, shard_rows)
    works = [
        functools.partial(
            label_shard,
            store,
            key,
            teacher.path,
            data,
            augmented,
            shard,
            batch_size,
            runtime,
            labelling.open,
        )
        for shard in shards
    ]
    try:
        targets = assemble(fan_out("logit_shard", works), len(rows))
    finally:  # what labelled the shards here is not needed again (about 0.6 GB for MiniLM)
        release_teachers()
        if labelling.release is not None:
            labelling.release()
    np.save(folder / LOGITS_FILE, targets.logits)
    np.save(folder / CLS_FILE, targets.cls_states)
    return CacheManifest(
        file=LOGITS_FILE,
        cls_file=CLS_FILE,
        rows=row_counts(data, augmented),
        shape=list(targets.logits.shape),
        dtype=str(targets.logits.dtype),
        cls_shape=list(targets.cls_states.shape),
        sha256=file_sha256(folder / LOGITS_FILE),
        cls_sha256=file_sha256(folder / CLS_FILE),
        teacher_sha256=teacher.manifest.weights_sha256,
        data_fingerprint=data.manifest.fingerprint,
        augmented_fingerprint=augmented.manifest.fingerprint if augmented else None,
        device=runtime.device_name,
        precision=runtime.precision,
        **_labelling_fields(labelling),
    )


def _labelling_fields(labelling: Labelling) -> dict:
    """The manifest's labelling fields: the runtime, its own figures and the whole record."""
    record = labelling.record
    own = [c for c in (record.candidates if record else []) if c.runtime == labelling.runtime]
    figures = own[0] if own else None
    return {
        "labelling_runtime": labelling.runtime,
        "labelling_max_abs_logit_diff": figures.max_abs_logit_diff if figures else None,
        "labelling_agreement": figures.agreement if figures else None,
        "labelling_mean_kl": figures.mean_kl if figures else None,
        "labelling_graph_key": labelling.graph_key,
        "labelling": record,
    }


def _open_checked(cache: Artifact[CacheManifest], name: str, shape: list[int]) -> np.ndarray:
    path = cache.file(name)
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:  # missing, unreadable or not a .npy file
        raise _corrupt(cache, f"{name} cannot be read ({err})") from None
    if list(array.shape) != list(shape):
        raise _corrupt(cache, f"{name} has shape {list(array.shape)}, its manifest says {shape}")
    return array


def _corrupt(cache: Artifact[CacheManifest], problem: str) -> CacheError:
    """Unmark the folder as finished, so the next run rebuilds it instead of failing again."""
    cache.file(MANIFEST).unlink(missing_ok=True)
    return CacheError(
        f"logit cache stage folder {cache.path} is corrupt: {problem}; its manifest was "
        "removed, so the next run rebuilds it"
    )


def open_targets(cache: Artifact[CacheManifest]) -> TeacherTargets:
    """The cached targets as read-only memmaps of the shapes its manifest records.

    `cache` comes from `logit_cache_stage`, whose store already checked every file's sha256
    against the manifest (or just wrote them), so they are not hashed again here."""
    manifest = cache.manifest
    return TeacherTargets(
        _open_checked(cache, manifest.file, manifest.shape),
        _open_checked(cache, manifest.cls_file, manifest.cls_shape),
    )
