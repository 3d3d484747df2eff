"""Student stage: a smaller transformer trained on labels and cached teacher logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.config import RandomInit, StudentConfig
from distill.data import load_split
from distill.logit_cache import open_logits
from distill.losses import distillation_loss
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


def student_key(config: StudentConfig, cache: Artifact, data: Artifact) -> str:
    return stable_hash(
        "student", config.model_dump(mode="json"), cache.key, data.manifest["fingerprint"]
    )


def student_stage(
    workdir: Path,
    config: StudentConfig,
    teacher: Artifact,
    cache: Artifact,
    data: Artifact,
    log: MetricsLog | None = None,
) -> Artifact:
    return run_stage(
        workdir,
        "student",
        student_key(config, cache, data),
        lambda folder: build_student(config, teacher, cache, data, folder, log),
    )


def init_student(config: StudentConfig, teacher_folder: Path) -> torch.nn.Module:
    teacher = load_classifier(teacher_folder)
    if isinstance(config.init, RandomInit):
        return random_student(teacher, config.init, config.training.seed)
    return student_from_teacher(teacher, config.init)


def kd_loss_fn(teacher_logits, alpha: float, temperature: float) -> LossFn:
    """Loss on a batch: the batch's `index` rows of the cached logits are its soft targets."""

    def loss(model: torch.nn.Module, batch) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        soft = torch.from_numpy(teacher_logits[batch["index"].numpy()])
        return distillation_loss(logits, soft, batch["label"], alpha, temperature)

    return loss


def build_student(
    config: StudentConfig,
    teacher: Artifact,
    cache: Artifact,
    data: Artifact,
    folder: Path,
    log: MetricsLog | None,
) -> dict[str, Any]:
    model = init_student(config, teacher.path)
    result = train_classifier(
        model,
        load_split(data.path, "train"),
        load_split(data.path, "validation"),
        config.training,
        kd_loss_fn(open_logits(cache), config.alpha, config.temperature),
        log=log,
        description="student",
    )
    weights_sha256 = save_classifier(model, load_tokenizer(str(teacher.path)), folder)
    return {
        "weights_sha256": weights_sha256,
        "teacher_sha256": teacher.manifest["weights_sha256"],
        "cache_key": cache.key,
        "data_fingerprint": data.manifest["fingerprint"],
        "params": count_parameters(model),
        "num_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "weights_bytes": (folder / "model.safetensors").stat().st_size,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "history": result.history,
        "train_seconds": result.seconds,
    }
