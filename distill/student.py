"""Student stage: a smaller transformer trained on labels and cached teacher targets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distill.config import PretrainedInit, RandomInit, StudentConfig
from distill.data import load_split
from distill.logit_cache import open_targets
from distill.losses import LossTerms, Outputs, active_terms, weighted_loss
from distill.models import (
    count_parameters,
    load_classifier,
    load_tokenizer,
    random_student,
    resolve_model_source,
    save_classifier,
    source_identity,
    student_from_pretrained,
    student_from_teacher,
)
from distill.rows import TeacherTargets, row_counts, training_rows
from distill.store import Artifact, StageManifest, run_stage, stage_key
from distill.training import HistoryRow, LossFn, MetricsLog, train_classifier

if TYPE_CHECKING:
    from distill.augment import AugmentManifest
    from distill.data import DataManifest
    from distill.logit_cache import CacheManifest
    from distill.teacher import TeacherManifest

# bump when the student trained for the same settings and inputs changes
# 2: steps run and the stop reason recorded (early stopping)
VERSION = 2


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
    history: list[HistoryRow]
    train_seconds: float
    device: str  # where training ran, and in which precision
    precision: str
    steps: int | None = None  # optimizer steps run, and why training stopped
    stop_reason: str | None = None
    # Where the student came from: "teacher" (carved from it), "random", or the pretrained
    # checkpoint it was carved from; its init kind, family and the tokenizer its ids come from.
    # (None in manifests written before these fields existed: a teacher_layers student.)
    source: str | None = None
    init_kind: str | None = None
    model_type: str | None = None
    tokenizer_id: str | None = None


class AlignmentError(ValueError):
    """The student's training rows do not line up with the cached teacher targets."""


def student_key(
    config: StudentConfig,
    teacher: Artifact[TeacherManifest],
    cache: Artifact[CacheManifest],
    data: Artifact[DataManifest],
) -> str:
    # The cache key already covers the teacher, the teacher's data and any augmented rows; `data`
    # is the student's own tokenization of the same rows (the teacher's when they share one).
    inputs: list[Any] = [config.model_dump(mode="json"), teacher.key, cache.key, data.key]
    if isinstance(config.init, PretrainedInit):  # the checkpoint's files, not only its name
        source = resolve_model_source(config.init.model)
        inputs.append(source_identity(source, PRETRAINED_FILES))
    return stage_key("student", VERSION, *inputs)


SOURCES = {"teacher_layers": "teacher", "random": "random"}
PRETRAINED_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


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


def init_student(
    config: StudentConfig, teacher_folder: Path, label_names: list[str]
) -> torch.nn.Module:
    if isinstance(config.init, PretrainedInit):
        return student_of(None, config, label_names)
    return student_of(load_classifier(teacher_folder), config, label_names)


def student_of(
    teacher: torch.nn.Module | None, config: StudentConfig, label_names: list[str]
) -> torch.nn.Module:
    """The untrained student: from `teacher` (its layers, or its shape at random), or for a
    `pretrained` init from its own checkpoint (`teacher` unused, may be None)."""
    if isinstance(config.init, PretrainedInit):
        source = resolve_model_source(config.init.model)
        return student_from_pretrained(source, config.init, label_names)
    if isinstance(config.init, RandomInit):
        return random_student(teacher, config.init, config.training.seed)
    return student_from_teacher(teacher, config.init)


def student_tokenizer_model(config: StudentConfig, teacher_model: str) -> str:
    """The model whose tokenizer the student reads: its own checkpoint's, else the teacher's."""
    if isinstance(config.init, PretrainedInit):
        return config.init.model
    return teacher_model


def check_tokenizer(init: PretrainedInit, data: Artifact[DataManifest]) -> None:
    """A pretrained student must read its own token ids, never another tokenizer's."""
    from distill.data import tokenizer_identity

    _, tokenizer_id = tokenizer_identity(init.model)
    if tokenizer_id != data.manifest.tokenizer_id:
        raise AlignmentError(
            f"student.init.model '{init.model}' has its own tokenizer ({tokenizer_id}), but the "
            f"data {data.path} is tokenized with another ({data.manifest.tokenizer_id}): pass "
            "the rows distill.chain.run_student_rows makes"
        )


def check_alignment(
    cache: Artifact[CacheManifest],
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None,
    rows: int,
) -> None:
    """Cached targets are matched to training rows by index: the rows must be the same ones."""
    expected = dict(cache.manifest.rows)
    expected.setdefault("transfer", 0)  # caches written before transfer text existed
    found = row_counts(data, augmented)
    if found != expected or rows != cache.manifest.shape[0]:
        raise AlignmentError(
            f"the student's training rows {found} ({rows} in all) do not match the logit "
            f"cache {cache.path} ({expected}, {cache.manifest.shape[0]} rows): cached targets "
            "are matched to rows by index, so both must come from the same data, augmentation "
            "and transfer text"
        )


def student_loss(config: StudentConfig, targets: TeacherTargets) -> LossFn:
    """The weighted sum of the loss terms the config turns on (`distill.losses.LOSS_TERMS`).

    A batch's `index` (on the CPU) selects its rows of the cached targets, which go to the
    model's device. Only what an active term reads is read: the cached logits (not with
    alpha = 1) and, over the mapped layers, the [CLS] states. Hidden state 0 is the embedding
    output, so transformer block i's output is hidden state i + 1 on both sides.
    """
    terms = active_terms(config)
    reads_logits = any(term.reads_teacher_logits for term in terms)
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
        soft = torch.from_numpy(targets.logits[rows]).to(device) if reads_logits else None
        student_cls = teacher_cls = None
        if layer_map:
            student_cls = torch.stack([out.hidden_states[i][:, 0] for i in student_states], 1)
            teacher_cls = torch.from_numpy(targets.cls_states[rows][:, teacher_states]).to(device)
        student, teacher = Outputs(out.logits, student_cls), Outputs(soft, teacher_cls)
        return weighted_loss(terms, student, teacher, batch["label"])

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
    if isinstance(config.init, PretrainedInit):
        check_tokenizer(config.init, data)
    label_names = list(data.manifest.label_names)
    model = init_student(config, teacher.path, label_names)
    targets = open_targets(cache)
    rows = training_rows(data, augmented)
    check_alignment(cache, data, augmented, len(rows))
    if config.hidden_layer_map() and model.config.hidden_size != targets.cls_states.shape[2]:
        keys = ", ".join(f"student.hidden.{name}" for name in config.hidden.weighted())
        raise ValueError(
            f"{keys}: the [CLS]-state terms compare hidden states, but the student is "
            f"{model.config.hidden_size} wide and the teacher {targets.cls_states.shape[2]}"
        )
    for _, teacher_layer in config.hidden_layer_map():
        if teacher_layer + 1 >= targets.cls_states.shape[1]:
            raise ValueError(
                f"student.hidden.layer_map names teacher layer {teacher_layer}, "
                f"but the teacher has layers 0..{targets.cls_states.shape[1] - 2}"
            )
    result = train_classifier(
        model,
        rows,
        load_split(data.path, "validation"),
        config.training,
        student_loss(config, targets),
        log=log,
        description="student",
        section="student.training",
    )
    tokenizer_source = (
        resolve_model_source(config.init.model)
        if isinstance(config.init, PretrainedInit)
        else str(teacher.path)
    )
    weights_sha256 = save_classifier(model, load_tokenizer(tokenizer_source), folder)
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
        **result.manifest_fields(),
        source=config.init.model
        if isinstance(config.init, PretrainedInit)
        else SOURCES[config.init.kind],
        init_kind=config.init.kind,
        model_type=model.config.model_type,
        tokenizer_id=data.manifest.tokenizer_id,
    )
