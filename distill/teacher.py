"""Teacher stage: a pretrained encoder with a classification head, fine-tuned on the train split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.config import TeacherConfig
from distill.data import load_split
from distill.losses import LossTerms, hard_label_ce
from distill.models import (
    count_parameters,
    is_finetuned_for,
    load_tokenizer,
    pretrained_classifier,
    random_classifier,
    resolve_model_source,
    save_classifier,
    source_identity,
)
from distill.store import Artifact, run_stage, stable_hash
from distill.training import MetricsLog, seed_everything, train_classifier

WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def teacher_key(config: TeacherConfig, data: Artifact) -> str:
    source = resolve_model_source(config.model)
    return stable_hash(
        "teacher",
        config.model_dump(mode="json"),
        source_identity(source, WEIGHT_FILES),
        data.manifest["fingerprint"],
    )


def teacher_stage(
    workdir: Path, config: TeacherConfig, data: Artifact, log: MetricsLog | None = None
) -> Artifact:
    return run_stage(
        workdir,
        "teacher",
        teacher_key(config, data),
        lambda folder: build_teacher(config, data, folder, log),
    )


def teacher_loss(model: torch.nn.Module, batch) -> LossTerms:
    """Fine-tuning on labels only: the loss is its cross-entropy (no kl or pkd terms)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = hard_label_ce(logits, batch["label"])
    return LossTerms(ce, ce=ce)


def build_teacher(
    config: TeacherConfig, data: Artifact, folder: Path, log: MetricsLog | None
) -> dict[str, Any]:
    source = resolve_model_source(config.model)
    label_names = list(data.manifest["label_names"])
    tokenizer = load_tokenizer(source)
    # The new classification head is drawn from torch's global generator: seed it first, or two
    # runs of the same config fine-tune different teachers.
    seed_everything(config.training.seed)
    if config.random_init is not None:
        max_positions = max(128, data.manifest["max_length"])
        model = random_classifier(
            config.random_init, len(tokenizer), max_positions, label_names, config.training.seed
        )
        fine_tune = True
    else:
        fine_tune = not is_finetuned_for(source, label_names)
        model = pretrained_classifier(source, label_names)

    summary: dict[str, Any] = {"fine_tuned": fine_tune, "history": []}
    if fine_tune:
        result = train_classifier(
            model,
            load_split(data.path, "train"),
            load_split(data.path, "validation"),
            config.training,
            teacher_loss,
            log=log,
            description="teacher",
            section="teacher.training",
        )
        summary.update(
            best_epoch=result.best_epoch,
            best_val_accuracy=result.best_val_accuracy,
            history=result.history,
            train_seconds=result.seconds,
        )
    weights_sha256 = save_classifier(model, tokenizer, folder)
    return {
        **summary,
        "source": config.model,
        "weights_sha256": weights_sha256,
        "data_fingerprint": data.manifest["fingerprint"],
        "params": count_parameters(model),
        "num_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "weights_bytes": (folder / "model.safetensors").stat().st_size,
    }
