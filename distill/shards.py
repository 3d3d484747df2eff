"""Sharded teacher labelling: the logit cache's rows cut into fixed-size, content-addressed shards.

The rows are put in one global length-sorted order and cut into inference batches exactly as an
unsharded pass would cut them; a shard is a run of whole consecutive batches. So every row is
computed in the same batch, with the same padding, whatever the shard size, and the assembled
cache is byte-identical to the unsharded one (the unsharded cache is the one-shard case).

Each shard is a stage folder of its own (`logit_shard/<key>`: logits, [CLS] states and the row
indices, in the shard's batch order), keyed on the cache's key, the batch size and the shard's
rows, so a killed run recomputes only the shards without a finished folder. The logit cache hands
the shards to a `distill.fan_out.FanOut`. A shard folder's files are checked by the store when it
is reused (`distill.store`), so assembling reads them without hashing them again.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from distill.batching import collate, sorted_batches
from distill.devices import CPU, Runtime
from distill.labelling import BatchLabeller, TorchLabeller
from distill.models import load_classifier, pad_token_id
from distill.rows import TeacherTargets, training_rows
from distill.store import Artifact, StageManifest, file_sha256, run_stage, stage_key

if TYPE_CHECKING:
    from distill.augment import AugmentManifest
    from distill.data import DataManifest

SHARD_STAGE = "logit_shard"
SHARD_VERSION = 1  # bump when what a shard holds changes
LOGITS_FILE = "logits.npy"
CLS_FILE = "cls_states.npy"
INDICES_FILE = "indices.npy"


@dataclass(frozen=True)
class Shard:
    """Shard `index`: whole inference batches of global row indices, in computing order."""

    index: int
    batches: tuple[np.ndarray, ...]

    @property
    def indices(self) -> np.ndarray:
        return np.concatenate(self.batches)

    @property
    def rows_sha256(self) -> str:
        """Identity of the rows and their batching (a batch boundary changes the floats)."""
        digest = hashlib.sha256()
        for batch in self.batches:
            digest.update(np.asarray(batch, dtype=np.int64).tobytes())
            digest.update(b"|")
        return digest.hexdigest()


class ShardManifest(StageManifest):
    index: int
    rows: int
    rows_sha256: str
    batch_size: int
    logits_file: str
    cls_file: str
    indices_file: str
    logits_sha256: str
    cls_sha256: str
    seconds: float
    texts_per_second: float
    device: str
    precision: str


def plan_shards(lengths: Sequence[int], batch_size: int, shard_rows: int) -> list[Shard]:
    """The global length-sorted batches (as an unsharded pass makes them), grouped into shards
    of `shard_rows` rows rounded up to whole batches."""
    if batch_size < 1 or shard_rows < 1:
        raise ValueError(f"batch_size ({batch_size}) and shard_rows ({shard_rows}) must be >= 1")
    batches = sorted_batches(lengths, batch_size)
    per_shard = -(-shard_rows // batch_size)  # ceil: whole batches only
    return [
        Shard(number, tuple(batches[start : start + per_shard]))
        for number, start in enumerate(range(0, len(batches), per_shard))
    ]


def label_batches(
    model: torch.nn.Module, rows, batches: Sequence[np.ndarray], runtime: Runtime = CPU
) -> TeacherTargets:
    """The teacher's logits (float32) and per-layer [CLS] states (float16) for the rows of
    `batches`, in the batches' order (concatenated), on `runtime`'s device and precision."""
    pad_id = pad_token_id(model.config)  # MPNet and RoBERTa pad with 1, not 0
    return label_batches_with(TorchLabeller(model, runtime), rows, batches, pad_id)


def label_batches_with(
    labeller: BatchLabeller, rows, batches: Sequence[np.ndarray], pad_id: int
) -> TeacherTargets:
    """The targets `labeller` gives for the rows of `batches`, in the batches' order: logits
    float32, [CLS] states float16 (numpy rounds them)."""
    logits = cls_states = None
    start = 0
    count = sum(len(batch) for batch in batches)
    for indices in tqdm(batches, desc="teacher targets", disable=None, leave=False):
        batch = collate(rows, indices, pad_id)
        out_logits, out_states = labeller(
            batch["input_ids"].numpy(), batch["attention_mask"].numpy()
        )
        if logits is None:
            logits = np.empty((count, *out_logits.shape[1:]), dtype=np.float32)
            cls_states = np.empty((count, *out_states.shape[1:]), dtype=np.float16)
        end = start + len(indices)
        logits[start:end] = out_logits
        cls_states[start:end] = out_states
        start = end
    if logits is None:
        raise ValueError("no rows to label")
    return TeacherTargets(logits, cls_states)


def shard_key(cache_key: str, batch_size: int, shard: Shard) -> str:
    """The cache's key (teacher, data, augmented rows, precision, cache format), the batching
    and the shard's rows; not the shard size as such, so equal shards are shared."""
    return stage_key(
        SHARD_STAGE, SHARD_VERSION, cache_key, batch_size, shard.index, shard.rows_sha256
    )


@functools.lru_cache(maxsize=2)
def _teacher(path: str) -> torch.nn.Module:
    """One loaded teacher per worker process, reused by its later shards."""
    return load_classifier(Path(path))


def release_teachers() -> None:
    """Drop this process's loaded teachers (kept for the next shard) once a cache is built."""
    _teacher.cache_clear()


def label_shard(
    store: Path,
    cache_key: str,
    teacher_path: Path,
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None,
    shard: Shard,
    batch_size: int,
    runtime: Runtime = CPU,
    open_labeller: Callable[[], BatchLabeller] | None = None,
) -> Artifact[ShardManifest]:
    """Shard `shard` of the cache `cache_key`, built (or reused) in `<store>/logit_shard/`.
    `open_labeller` gives another runtime's labeller (None: the PyTorch teacher on `runtime`);
    the cache key names the runtime, so the shard key does too."""
    return run_stage(
        store,
        SHARD_STAGE,
        shard_key(cache_key, batch_size, shard),
        lambda folder: _build_shard(
            folder, teacher_path, data, augmented, shard, batch_size, runtime, open_labeller
        ),
        ShardManifest,
    )


def _build_shard(
    folder: Path,
    teacher_path: Path,
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None,
    shard: Shard,
    batch_size: int,
    runtime: Runtime,
    open_labeller: Callable[[], BatchLabeller] | None = None,
) -> ShardManifest:
    rows = training_rows(data, augmented)
    started = time.perf_counter()
    if open_labeller is None:
        targets = label_batches(_teacher(str(teacher_path)), rows, shard.batches, runtime)
    else:
        pad_id = pad_token_id(AutoConfig.from_pretrained(teacher_path))
        targets = label_batches_with(open_labeller(), rows, shard.batches, pad_id)
    seconds = time.perf_counter() - started
    np.save(folder / LOGITS_FILE, targets.logits)
    np.save(folder / CLS_FILE, targets.cls_states)
    np.save(folder / INDICES_FILE, shard.indices.astype(np.int64))
    count = len(targets.logits)
    return ShardManifest(
        index=shard.index,
        rows=count,
        rows_sha256=shard.rows_sha256,
        batch_size=batch_size,
        logits_file=LOGITS_FILE,
        cls_file=CLS_FILE,
        indices_file=INDICES_FILE,
        logits_sha256=file_sha256(folder / LOGITS_FILE),
        cls_sha256=file_sha256(folder / CLS_FILE),
        seconds=seconds,
        texts_per_second=count / seconds if seconds > 0 else 0.0,
        device=runtime.device_name,
        precision=runtime.precision,
    )


class ShardError(RuntimeError):
    """Shards that do not add up to the cache's rows."""


def assemble(shards: Sequence[Artifact[ShardManifest]], total_rows: int) -> TeacherTargets:
    """The shards' rows put back in row order; every row must come from exactly one shard.

    The shards are artifacts `run_stage` just built or verified, so their files are not hashed
    again here; their row indices are checked, since those decide where each row goes."""
    if not shards:
        raise ShardError("no shards to assemble")
    seen = np.zeros(total_rows, dtype=bool)
    logits = cls_states = None
    for shard in shards:
        manifest = shard.manifest
        shard_logits = np.load(shard.file(manifest.logits_file))
        shard_cls = np.load(shard.file(manifest.cls_file))
        indices = np.load(shard.file(manifest.indices_file))
        if len(indices) != manifest.rows or len(shard_logits) != manifest.rows:
            raise ShardError(
                f"shard {shard.path}: {manifest.rows} rows in its manifest, files differ"
            )
        if (
            indices.min(initial=0) < 0
            or indices.max(initial=0) >= total_rows
            or seen[indices].any()
        ):
            raise ShardError(f"shard {shard.path}: rows outside 0..{total_rows - 1} or repeated")
        if logits is None:
            logits = np.empty((total_rows, *shard_logits.shape[1:]), dtype=shard_logits.dtype)
            cls_states = np.empty((total_rows, *shard_cls.shape[1:]), dtype=shard_cls.dtype)
        seen[indices] = True
        logits[indices] = shard_logits
        cls_states[indices] = shard_cls
    if not seen.all():
        raise ShardError(f"shards cover {int(seen.sum())} of {total_rows} rows")
    return TeacherTargets(logits, cls_states)
