"""Student stage: a smaller transformer trained on labels and cached teacher targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from distill.store import Artifact, run_stage, stable_hash
from distill.training import LossFn, MetricsLog, train_classifier

# Settings added after students were first cached, whose unset value (None) keeps the earlier
# behaviour: left out of the key while unset, so students trained before they existed stay valid.
LATER_OPTIONAL_SETTINGS = (("init", "intermediate_size"),)


def student_key(config: StudentConfig, cache: Artifact, data: Artifact) -> str:
    settings = config.model_dump(mode="json")
    for section, name in LATER_OPTIONAL_SETTINGS:
        if settings[section][name] is None:
            del settings[section][name]
    return stable_hash("student", settings, cache.key, data.manifest["fingerprint"])


def student_stage(
    workdir: Path,
    config: StudentConfig,
    teacher: Artifact,
    cache: Artifact,
    data: Artifact,
    augmented: Artifact | None = None,
    log: MetricsLog | None = None,
) -> Artifact:
    return run_stage(
        workdir,
        "student",
        student_key(config, cache, data),
        lambda folder: build_student(config, teacher, cache, data, augmented, folder, log),
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
    teacher: Artifact,
    cache: Artifact,
    data: Artifact,
    augmented: Artifact | None,
    folder: Path,
    log: MetricsLog | None,
) -> dict[str, Any]:
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
    return {
        "weights_sha256": weights_sha256,
        "teacher_sha256": teacher.manifest["weights_sha256"],
        "cache_key": cache.key,
        "data_fingerprint": data.manifest["fingerprint"],
        "training_rows": cache.manifest["rows"],
        "params": count_parameters(model),
        "num_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "weights_bytes": (folder / "model.safetensors").stat().st_size,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "history": result.history,
        "train_seconds": result.seconds,
    }
