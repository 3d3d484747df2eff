"""Student stage: a smaller transformer trained on labels and cached teacher targets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distill.config import RandomInit, StudentConfig
from distill.data import load_split
from distill.logit_cache import TeacherTargets, open_targets, training_rows
from distill.losses import LossTerms, distillation_loss, patient_kd_loss
from distill.models import (
    count_parameters,
    load_classifier,
    load_tokenizer,
    random_student,
    save_classifier,
    student_from_teacher,
)
from distill.store import Artifact, StageManifest, run_stage, stage_key
from distill.training import LossFn, MetricsLog, train_classifier

if TYPE_CHECKING:
    from distill.augment import AugmentManifest
    from distill.data import DataManifest
    from distill.logit_cache import CacheManifest
    from distill.teacher import TeacherManifest

VERSION = 1  # bump when the student trained for the same settings and inputs changes


class StudentManifest(StageManifest):
    weights_sha256: str
    teacher_sha256: str
    cache_key: str
    data_fingerprint: str
    training_rows: dict[str, int]
    params: int
    num_layers: int
    hidden_size: int
    weights_bytes: int
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, Any]]
    train_seconds: float
    device: str  # where training ran, and in which precision
    precision: str


def student_key(
    config: StudentConfig,
    teacher: Artifact[TeacherManifest],
    cache: Artifact[CacheManifest],
    data: Artifact[DataManifest],
) -> str:
    # The cache key already covers the teacher, the data and any augmented rows; naming the
    # teacher and data keys too keeps the dependency visible here.
    return stage_key(
        "student", VERSION, config.model_dump(mode="json"), teacher.key, cache.key, data.key
    )


def student_stage(
    store: Path,
    config: StudentConfig,
    teacher: Artifact[TeacherManifest],
    cache: Artifact[CacheManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None = None,
    log: MetricsLog | None = None,
) -> Artifact[StudentManifest]:
    return run_stage(
        store,
        "student",
        student_key(config, teacher, cache, data),
        lambda folder: build_student(config, teacher, cache, data, augmented, folder, log),
        StudentManifest,
    )


def init_student(config: StudentConfig, teacher_folder: Path) -> torch.nn.Module:
    teacher = load_classifier(teacher_folder)
    if isinstance(config.init, RandomInit):
        return random_student(teacher, config.init, config.training.seed)
    return student_from_teacher(teacher, config.init)


def student_loss(config: StudentConfig, targets: TeacherTargets) -> LossFn:
    """The logit loss, plus the Patient-KD term over mapped layers when it has a weight.

    A batch's `index` (on the CPU) selects its rows of the cached targets, which go to the
    model's device. Hidden state 0 is the embedding output, so transformer block i's output is
    hidden state i + 1 on both sides. With alpha = 1 the cached logits are not read.
    """
    layer_map = config.hidden_layer_map()
    student_states = [student + 1 for student, _ in layer_map]
    teacher_states = [teacher + 1 for _, teacher in layer_map]

    def loss(model: torch.nn.Module, batch) -> LossTerms:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=bool(layer_map),
        )
        rows = batch["index"].numpy()
        device = out.logits.device
        soft = None if config.alpha == 1 else torch.from_numpy(targets.logits[rows]).to(device)
        terms = distillation_loss(
            out.logits, soft, batch["label"], config.alpha, config.temperature
        )
        if layer_map:
            student_cls = torch.stack([out.hidden_states[i][:, 0] for i in student_states], 1)
            teacher_cls = torch.from_numpy(targets.cls_states[rows][:, teacher_states])
            pkd = patient_kd_loss(student_cls, teacher_cls.to(device))
            terms = terms.with_pkd(pkd, config.hidden.weight)
        return terms

    return loss


def build_student(
    config: StudentConfig,
    teacher: Artifact[TeacherManifest],
    cache: Artifact[CacheManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None,
    folder: Path,
    log: MetricsLog | None,
) -> StudentManifest:
    model = init_student(config, teacher.path)
    targets = open_targets(cache)
    for _, teacher_layer in config.hidden_layer_map():
        if teacher_layer + 1 >= targets.cls_states.shape[1]:
            raise ValueError(
                f"student.hidden.layer_map names teacher layer {teacher_layer}, "
                f"but the teacher has layers 0..{targets.cls_states.shape[1] - 2}"
            )
    result = train_classifier(
        model,
        training_rows(data, augmented),
        load_split(data.path, "validation"),
        config.training,
        student_loss(config, targets),
        log=log,
        description="student",
        section="student.training",
    )
    weights_sha256 = save_classifier(model, load_tokenizer(str(teacher.path)), folder)
    return StudentManifest(
        weights_sha256=weights_sha256,
        teacher_sha256=teacher.manifest.weights_sha256,
        cache_key=cache.key,
        data_fingerprint=data.manifest.fingerprint,
        training_rows=cache.manifest.rows,
        params=count_parameters(model),
        num_layers=model.config.num_hidden_layers,
        hidden_size=model.config.hidden_size,
        weights_bytes=(folder / "model.safetensors").stat().st_size,
        best_epoch=result.best_epoch,
        best_val_accuracy=result.best_val_accuracy,
        history=result.history,
        train_seconds=result.seconds,
        device=result.device,
        precision=result.precision,
    )
