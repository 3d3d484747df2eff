"""Teacher ensembles (`teacher.ensemble`): soft targets averaged over several teachers.

Each member is a teacher of its own: the run's rows in its tokenizer's ids, fine-tuned and
labelled as its own stages (`teacher`, `logit_cache`; reused from the store like the main
teacher's). The `ensemble_cache` stage then writes one cache the student reads like any other:

    p = sum_i w_i softmax(z_i / T) / sum_i w_i,    logits = T * log p

so that softmax(logits / T), what the KD term reads, is exactly the weighted mean of the
teachers' soft targets at the run's temperature T (`student.temperature`, part of the key). The
main teacher counts with weight 1, each member with its `weight`. The [CLS] states are the main
teacher's (a hard link to its cache's file), so the hidden-state terms compare with it alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from distill.config import EnsembleMember, TeacherConfig
from distill.labelling import softmax
from distill.logit_cache import LOGITS_FILE, CacheManifest, open_targets
from distill.store import Artifact, file_sha256, run_stage, stage_key
from distill.teacher import TeacherManifest

STAGE = "ensemble_cache"
# bump when the combined targets for the same inputs change
VERSION = 1


def member_teacher(teacher: TeacherConfig, member: EnsembleMember) -> TeacherConfig:
    """A member's teacher settings: its model (and architecture), the main teacher's training
    unless it gives its own, the same labelling runtime rule."""
    return teacher.model_copy(
        update={
            "model": member.model,
            "random_init": member.random_init,
            "training": member.training or teacher.training,
            "ensemble": [],
        }
    )


@dataclass(frozen=True)
class Labelled:
    """One teacher of the ensemble: its model (as configured), weight, teacher and cache."""

    model: str
    weight: float
    teacher: Artifact[TeacherManifest]
    cache: Artifact[CacheManifest]


class MemberRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    weight: float
    teacher_key: str
    teacher_sha256: str
    teacher_val_accuracy: float | None
    cache_key: str
    labelling_runtime: str


class EnsembleManifest(CacheManifest):
    """A logit cache (the student reads it as one) that records its teachers."""

    temperature: float
    main_cache_key: str  # the main teacher's own cache (tagged, so gc keeps it)
    members: list[MemberRecord]  # the main teacher first


def combined_logits(
    logits: Sequence[np.ndarray], weights: Sequence[float], temperature: float
) -> np.ndarray:
    """T * log of the weighted mean of softmax(z_i / T): float32, one row per input row."""
    mean = sum(
        weight * softmax(np.asarray(member), temperature)
        for member, weight in zip(logits, weights, strict=True)
    ) / sum(weights)
    return (temperature * np.log(np.maximum(mean, np.finfo(np.float64).tiny))).astype(np.float32)


def ensemble_key(members: Sequence[Labelled], temperature: float) -> str:
    # A member's cache key covers its teacher, rows and labelling runtime.
    return stage_key(STAGE, VERSION, temperature, [(m.cache.key, m.weight) for m in members])


def ensemble_cache_stage(
    store: Path, members: Sequence[Labelled], temperature: float
) -> Artifact[EnsembleManifest]:
    """The members' caches (the main teacher's first) combined into one; they must hold the
    same rows, in the same order."""
    main = members[0].cache.manifest
    for member in members[1:]:
        other = member.cache.manifest
        if other.rows != main.rows or other.shape != main.shape:
            raise ValueError(
                f"teacher.ensemble: {member.cache.path} holds rows {other.rows} (shape "
                f"{other.shape}), the main teacher's cache {members[0].cache.path} "
                f"{main.rows} ({main.shape}): members must label the same rows"
            )

    def build(folder: Path) -> EnsembleManifest:
        logits = [open_targets(member.cache).logits for member in members]
        weights = [member.weight for member in members]
        np.save(folder / LOGITS_FILE, combined_logits(logits, weights, temperature))
        _link_or_copy(members[0].cache.file(main.cls_file), folder / main.cls_file)
        return EnsembleManifest(
            **main.model_dump(exclude={"file", "sha256"}),
            file=LOGITS_FILE,
            sha256=file_sha256(folder / LOGITS_FILE),
            temperature=temperature,
            main_cache_key=members[0].cache.key,
            members=[_record(member) for member in members],
        )

    return run_stage(store, STAGE, ensemble_key(members, temperature), build, EnsembleManifest)


def _record(member: Labelled) -> MemberRecord:
    teacher = member.teacher.manifest
    return MemberRecord(
        model=member.model,
        weight=member.weight,
        teacher_key=member.teacher.key,
        teacher_sha256=teacher.weights_sha256,
        teacher_val_accuracy=teacher.best_val_accuracy,
        cache_key=member.cache.key,
        labelling_runtime=member.cache.manifest.labelling_runtime,
    )


def _link_or_copy(source: Path, target: Path) -> None:
    """The main teacher's [CLS] states without a second copy on disk where links work."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
