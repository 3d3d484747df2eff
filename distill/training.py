"""A flat, seeded training loop for sequence classifiers, built from small helpers.

The loop knows nothing about teachers or distillation: the caller passes `loss_fn(model, batch)`.
Metrics go to an optional `log(metrics, step)` callable, so tests and MLflow plug in the same way.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from tqdm.auto import tqdm

from distill.batching import collate, iterate_sorted, length_grouped_batches
from distill.config import TrainingConfig

LossFn = Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]
MetricsLog = Callable[[Mapping[str, float], int], None]
LOG_EVERY = 10
logger = logging.getLogger("distill.training")


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def warmup_linear_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, math.ceil(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def build_optimizer(model: torch.nn.Module, settings: TrainingConfig) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm weights, as in BERT.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.learning_rate)


def train_classifier(
    model: torch.nn.Module,
    train_split,
    validation_split,
    settings: TrainingConfig,
    loss_fn: LossFn,
    log: MetricsLog | None = None,
    description: str = "train",
) -> TrainResult:
    """Train, evaluate on validation after each epoch, and leave the best epoch's weights loaded."""
    started = time.perf_counter()
    rng = seed_everything(settings.seed)
    lengths = [len(ids) for ids in train_split["input_ids"]]
    steps_per_epoch = math.ceil(len(lengths) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    optimizer = build_optimizer(model, settings)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear_decay(total_steps, settings.warmup_ratio)
    )
    log = log or (lambda metrics, step: None)
    result = TrainResult(best_epoch=-1, best_val_accuracy=-1.0)
    best_state: dict[str, torch.Tensor] | None = None
    step = 0
    progress = tqdm(total=total_steps, desc=description, disable=None, leave=False)
    for epoch in range(settings.epochs):
        model.train()
        running = []
        for indices in length_grouped_batches(lengths, settings.batch_size, rng):
            batch = collate(train_split, indices)
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            running.append(loss.item())
            progress.update(1)
            if step % LOG_EVERY == 0 or step == total_steps:
                metrics = {"train_loss": float(np.mean(running)), "lr": schedule.get_last_lr()[0]}
                log(metrics, step)
                result.history.append({"step": step, **metrics})
                progress.set_postfix(loss=f"{metrics['train_loss']:.4f}")
                running = []
        logits = predict_logits(model, validation_split, settings.batch_size * 2)
        val_labels = np.asarray(validation_split["label"])
        val_metrics = {
            "val_accuracy": accuracy(logits, val_labels),
            "val_loss": float(
                torch.nn.functional.cross_entropy(
                    torch.from_numpy(logits), torch.from_numpy(val_labels)
                )
            ),
            "epoch": float(epoch + 1),
        }
        log(val_metrics, step)
        logger.info(
            "%s epoch %d/%d: val_accuracy %.4f, val_loss %.4f (%.0f s)",
            description,
            epoch + 1,
            settings.epochs,
            val_metrics["val_accuracy"],
            val_metrics["val_loss"],
            time.perf_counter() - started,
        )
        result.history.append({"step": step, **val_metrics})
        if val_metrics["val_accuracy"] > result.best_val_accuracy:
            result.best_val_accuracy = val_metrics["val_accuracy"]
            result.best_epoch = epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, split, batch_size: int = 64) -> np.ndarray:
    """Logits for every row of a tokenized split, in the split's order."""
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    for batch in iterate_sorted(split, batch_size):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if out is None:
            out = np.empty((len(split), logits.shape[-1]), dtype=np.float32)
        out[batch["index"].numpy()] = logits.float().numpy()
    model.train(was_training)
    assert out is not None, "cannot predict on an empty split"
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(accuracy_score(labels, logits.argmax(-1)))


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, object]:
    predictions = logits.argmax(-1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
        "confusion_matrix": confusion_matrix(
            labels, predictions, labels=list(range(num_classes))
        ).tolist(),
    }
