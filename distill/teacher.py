"""Teacher stage: a pretrained encoder with a classification head, fine-tuned on the train split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.config import TeacherConfig
from distill.data import DataManifest, load_split
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
from distill.store import Artifact, StageManifest, run_stage, stage_key
from distill.training import HistoryRow, MetricsLog, seed_everything, train_classifier

# bump when the teacher trained for the same settings and data changes
# 2: steps run and the stop reason recorded (early stopping)
VERSION = 2
WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


class TeacherManifest(StageManifest):
    fine_tuned: bool
    history: list[HistoryRow]
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    train_seconds: float | None = None
    # Where fine-tuning ran and in which precision (None when the model was used as is).
    device: str | None = None
    precision: str | None = None
    # Optimizer steps run and why fine-tuning stopped ("max_epochs" or "patience").
    steps: int | None = None
    stop_reason: str | None = None
    source: str
    weights_sha256: str
    data_fingerprint: str
    params: int
    num_layers: int
    hidden_size: int
    weights_bytes: int


def teacher_key(config: TeacherConfig, data: Artifact[DataManifest]) -> str:
    """Data + teacher settings + the model source's files; never anything of the student, nor
    the runtime that labels the cache afterwards (`labelling`: the cache's key has it), nor the
    other teachers of an ensemble (`ensemble`: the ensemble cache's key has them)."""
    source = resolve_model_source(config.model)
    return stage_key(
        "teacher",
        VERSION,
        config.model_dump(mode="json", exclude={"labelling", "ensemble"}),
        source_identity(source, WEIGHT_FILES),
        data.key,
    )


def teacher_stage(
    store: Path,
    config: TeacherConfig,
    data: Artifact[DataManifest],
    log: MetricsLog | None = None,
) -> Artifact[TeacherManifest]:
    return run_stage(
        store,
        "teacher",
        teacher_key(config, data),
        lambda folder: build_teacher(config, data, folder, log),
        TeacherManifest,
    )


def teacher_loss(model: torch.nn.Module, batch) -> LossTerms:
    """Fine-tuning on labels only: the loss is its cross-entropy (no kl or pkd terms)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = hard_label_ce(logits, batch["label"])
    return LossTerms(ce, {"ce": ce})


def starting_teacher(
    config: TeacherConfig, label_names: list[str], data: DataManifest
) -> tuple[torch.nn.Module, bool]:
    """The teacher before fine-tuning (pretrained, or randomly initialised for `random_init`),
    and whether it needs fine-tuning on these labels."""
    source = resolve_model_source(config.model)
    # The new classification head is drawn from torch's global generator: seed it first, or two
    # runs of the same config fine-tune different teachers.
    seed_everything(config.training.seed)
    if config.random_init is None:
        return pretrained_classifier(source, label_names), not is_finetuned_for(source, label_names)
    vocabulary = len(load_tokenizer(source))
    max_positions = max(128, data.max_length)
    arch, seed = config.random_init, config.training.seed
    return random_classifier(arch, vocabulary, max_positions, label_names, seed), True


def build_teacher(
    config: TeacherConfig, data: Artifact[DataManifest], folder: Path, log: MetricsLog | None
) -> TeacherManifest:
    tokenizer = load_tokenizer(resolve_model_source(config.model))
    model, fine_tune = starting_teacher(config, list(data.manifest.label_names), data.manifest)
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
        summary.update(result.manifest_fields())
    weights_sha256 = save_classifier(model, tokenizer, folder)
    return TeacherManifest(
        **summary,
        source=config.model,
        weights_sha256=weights_sha256,
        data_fingerprint=data.manifest.fingerprint,
        params=count_parameters(model),
        num_layers=model.config.num_hidden_layers,
        hidden_size=model.config.hidden_size,
        weights_bytes=(folder / "model.safetensors").stat().st_size,
    )
