"""A flat, seeded training loop for sequence classifiers, built from small helpers.

The loop knows nothing about teachers or distillation: the caller passes `loss_fn(model, batch)`,
which returns the loss and its parts (`LossTerms`). Metrics go to an optional `log(metrics, step)`
callable, so tests and MLflow plug in the same way. One epoch of optimisation (`train_epoch`),
validation (`validate`) and keeping the best epoch's weights (`BestEpoch`) are separate pieces.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.batching import collate, iterate_sorted, length_grouped_batches
from distill.config import TrainingConfig
from distill.devices import CPU, Runtime, move_batch, resolve_runtime
from distill.losses import LossTerms
from distill.metrics import accuracy
from distill.models import pad_token_id

LossFn = Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], LossTerms]
MetricsLog = Callable[[Mapping[str, float], int], None]
LOG_EVERY = 10
HEARTBEAT_SECONDS = 60.0
MAX_EPOCHS, PATIENCE = "max_epochs", "patience"  # why a training run stopped
LOSS_MIN_DELTA = 1e-4  # a validation loss lower by less is no improvement (rounding, not learning)


class Heartbeat:
    """An INFO line at most every `every` seconds while a long loop runs: a log that is not a
    terminal (a scheduled run, CI, `2>run.log`) shows no progress bar, and an MPNet epoch runs
    for over ten minutes without another line."""

    def __init__(
        self,
        description: str,
        total: int,
        every: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.every, self.clock = description, total, every, clock
        self.started = self.last = clock()

    def beat(self, done: int, note: str = "") -> bool:
        """Log progress if `every` seconds passed since the last line; whether it logged."""
        now = self.clock()
        if now - self.last < self.every or done <= 0:
            return False
        self.last = now
        elapsed = now - self.started
        eta = elapsed * (self.total - done) / done
        logger.info(
            "%s: %d/%d%s; %.0f s elapsed, ETA %.0f s",
            self.description,
            done,
            self.total,
            f" ({note})" if note else "",
            elapsed,
            eta,
        )
        return True


logger = logging.getLogger("distill.training")

# One history row: the global `step` and the metrics logged there (train_loss, lr, the loss
# terms by name, val_accuracy, ...). A mapping, since the loss terms a config turns on vary.
HistoryRow = dict[str, int | float]


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[HistoryRow] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"  # the device type actually used: cpu, cuda or mps
    precision: str = "fp32"  # the precision actually used: fp32, bf16 or fp16
    steps: int = 0  # optimizer steps run
    stop_reason: str = MAX_EPOCHS  # MAX_EPOCHS, or PATIENCE when validation stopped improving

    def manifest_fields(self) -> dict[str, Any]:
        """What a stage manifest records of a training run (teacher and student alike)."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "history": self.history,
            "train_seconds": self.seconds,
            "device": self.device,
            "precision": self.precision,
            "steps": self.steps,
            "stop_reason": self.stop_reason,
        }


class EarlyStopping:
    """Counts evaluations in a row in which validation did not improve: neither a higher
    accuracy nor a lower loss than every evaluation before (accuracy on a small validation set
    moves in steps; the loss shows a model that is still learning)."""

    def __init__(self, patience: int | None, min_steps: int = 0) -> None:
        self.patience, self.min_steps = patience, min_steps
        self.best_accuracy, self.best_loss = -math.inf, math.inf
        self.stale = 0

    def update(self, val_accuracy: float, val_loss: float) -> None:
        improved = val_accuracy > self.best_accuracy or val_loss < self.best_loss - LOSS_MIN_DELTA
        self.best_accuracy = max(self.best_accuracy, val_accuracy)
        self.best_loss = min(self.best_loss, val_loss)
        self.stale = 0 if improved else self.stale + 1

    def should_stop(self, step: int) -> bool:
        return self.patience is not None and step >= self.min_steps and self.stale >= self.patience


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


@dataclass
class Optimisation:
    """What one optimisation step needs, and the global step count it advances."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    settings: TrainingConfig
    total_steps: int
    runtime: Runtime = CPU
    scaler: torch.amp.GradScaler | None = None
    step: int = 0

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        settings: TrainingConfig,
        total_steps: int,
        runtime: Runtime = CPU,
    ) -> Optimisation:
        optimizer = build_optimizer(model, settings)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_linear_decay(total_steps, settings.warmup_ratio)
        )
        return cls(optimizer, schedule, settings, total_steps, runtime, runtime.grad_scaler())

    def apply(self, model: torch.nn.Module, loss_fn: LossFn, batch) -> LossTerms:
        """Forward (under autocast), backward, clip, step the optimizer and the schedule."""
        with self.runtime.autocast():
            terms = loss_fn(model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            terms.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.settings.max_grad_norm)
            self.optimizer.step()
        else:  # fp16: scale the loss, unscale before clipping, skip steps with inf gradients
            self.scaler.scale(terms.total).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.settings.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.schedule.step()
        self.step += 1
        return terms


class RunningMeans:
    """Means of named values since the last reset (the loss and its parts)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.values.setdefault(name, []).append(value)

    def means(self) -> dict[str, float]:
        return {name: float(np.mean(values)) for name, values in self.values.items()}

    def reset(self) -> None:
        self.values = {}


def train_epoch(
    model: torch.nn.Module,
    split,
    lengths: list[int],
    loss_fn: LossFn,
    optimisation: Optimisation,
    rng: np.random.Generator,
    log: MetricsLog,
    history: list[HistoryRow],
    progress: tqdm | None = None,
    heartbeat: Heartbeat | None = None,
    after_step: Callable[[int], bool] | None = None,
) -> dict[str, float]:
    """One pass over every training row in length-grouped, seeded batches.

    Every LOG_EVERY global steps (and at the last) logs `train_loss`, the unweighted loss parts
    by term name (`ce`, `kl`, ..., those the loss computed) averaged over those steps, and `lr`.
    `after_step(step)` runs after each step; True ends the pass there. Returns the pass's means
    of the loss and its parts.
    """
    model.train()
    pad_id = pad_token_id(getattr(model, "config", None))
    running, epoch = RunningMeans(), RunningMeans()
    batch_size = optimisation.settings.batch_size
    for indices in length_grouped_batches(lengths, batch_size, rng):
        batch = move_batch(collate(split, indices, pad_id), optimisation.runtime.device)
        terms = optimisation.apply(model, loss_fn, batch)
        values = {"train_loss": terms.total.item(), **terms.floats()}
        running.add(values)
        epoch.add(values)
        if progress is not None:
            progress.update(1)
        step = optimisation.step
        if step % LOG_EVERY == 0 or step == optimisation.total_steps:
            metrics = {**running.means(), "lr": optimisation.schedule.get_last_lr()[0]}
            log(metrics, step)
            history.append({"step": step, **metrics})
            if progress is not None:
                progress.set_postfix(loss=f"{metrics['train_loss']:.4f}")
            running.reset()
        if heartbeat is not None:
            heartbeat.beat(step, f"steps, loss {values['train_loss']:.4f}")
        if after_step is not None and after_step(step):
            break
    return epoch.means()


def validate(
    model: torch.nn.Module, split, batch_size: int, runtime: Runtime = CPU
) -> dict[str, float]:
    """Validation accuracy and cross-entropy of the model as it is now."""
    logits = predict_logits(model, split, batch_size, runtime, description="validation")
    labels = np.asarray(split["label"])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    return {"val_accuracy": accuracy(logits, labels), "val_loss": float(loss)}


class BestEpoch:
    """Keeps a CPU copy of the weights of the epoch with the highest validation accuracy (the
    first one on ties) and loads them back at the end."""

    def __init__(self) -> None:
        self.epoch = -1
        self.accuracy = -1.0
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_accuracy: float, model: torch.nn.Module) -> bool:
        """Remember the model's weights if this epoch is the best so far; True if so."""
        if val_accuracy <= self.accuracy:
            return False
        self.epoch, self.accuracy = epoch, val_accuracy
        self.state = {
            name: tensor.detach().to("cpu", copy=True)
            for name, tensor in model.state_dict().items()
        }
        return True

    def restore(self, model: torch.nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def train_classifier(
    model: torch.nn.Module,
    train_split,
    validation_split,
    settings: TrainingConfig,
    loss_fn: LossFn,
    log: MetricsLog | None = None,
    description: str = "train",
    section: str = "training",
) -> TrainResult:
    """Train, evaluate on validation after each epoch, and leave the best epoch's weights loaded.

    Runs on the device and in the precision `settings` ask for (`section` names the settings in
    errors, e.g. "student.training"); the model comes back on the CPU.
    """
    started = time.perf_counter()
    runtime = resolve_runtime(settings, section)
    model.to(runtime.device)
    rng = seed_everything(settings.seed)
    lengths = [len(ids) for ids in train_split["input_ids"]]
    total_steps = math.ceil(len(lengths) / settings.batch_size) * settings.epochs
    optimisation = Optimisation.create(model, settings, total_steps, runtime)
    log = log or (lambda metrics, step: None)
    result = TrainResult(
        best_epoch=-1,
        best_val_accuracy=-1.0,
        device=runtime.device_name,
        precision=runtime.precision,
    )
    best = BestEpoch()
    logger.info(
        "%s: %d rows, %d epochs, %d steps on %s (%s)",
        description,
        len(lengths),
        settings.epochs,
        total_steps,
        runtime.device_name,
        runtime.precision,
    )
    heartbeat = Heartbeat(description, total_steps)
    stopper = EarlyStopping(settings.patience, settings.min_steps)
    steps_per_epoch = total_steps // settings.epochs
    epoch, evaluated_at, stop, latest = 0, -1, False, {}

    def evaluate() -> None:
        """Validate now; remember the best weights; decide whether to stop."""
        nonlocal evaluated_at, stop, latest
        latest = val_metrics = {
            **validate(model, validation_split, settings.batch_size * 2, runtime),
            "epoch": optimisation.step / steps_per_epoch,
        }
        log(val_metrics, optimisation.step)
        result.history.append({"step": optimisation.step, **val_metrics})
        best.update(epoch, val_metrics["val_accuracy"], model)
        stopper.update(val_metrics["val_accuracy"], val_metrics["val_loss"])
        evaluated_at, stop = optimisation.step, stopper.should_stop(optimisation.step)

    def after_step(step: int) -> bool:
        every = settings.eval_every_steps
        if every is not None and step % every == 0 and step % steps_per_epoch:
            evaluate()
        return stop

    with tqdm(total=total_steps, desc=description, disable=None, leave=False) as progress:
        for epoch in range(1, settings.epochs + 1):
            losses = train_epoch(
                model,
                train_split,
                lengths,
                loss_fn,
                optimisation,
                rng,
                log,
                result.history,
                progress,
                heartbeat,
                after_step,
            )
            if evaluated_at != optimisation.step:
                evaluate()
            log_epoch(description, epoch, settings.epochs, losses, latest, started)
            if stop:
                result.stop_reason = PATIENCE
                logger.info(
                    "%s: stopped after %d of %d steps: validation did not improve for %d "
                    "evaluations (best val_accuracy %.4f in epoch %d)",
                    description,
                    optimisation.step,
                    total_steps,
                    stopper.stale,
                    best.accuracy,
                    best.epoch,
                )
                break
    best.restore(model)
    model.to("cpu").eval()  # callers save and export from the CPU
    result.best_epoch, result.best_val_accuracy = best.epoch, best.accuracy
    result.steps = optimisation.step
    result.seconds = time.perf_counter() - started
    return result


def log_epoch(
    description: str,
    epoch: int,
    epochs: int,
    losses: Mapping[str, float],
    val_metrics: Mapping[str, float],
    started: float,
) -> None:
    """One INFO line per epoch: loss parts, validation, elapsed time and a linear ETA."""
    elapsed = time.perf_counter() - started
    eta = elapsed / epoch * (epochs - epoch)
    parts = ", ".join(f"{name} {value:.4f}" for name, value in losses.items())
    logger.info(
        "%s epoch %d/%d: %s; val_accuracy %.4f, val_loss %.4f; %.0f s elapsed, ETA %.0f s",
        description,
        epoch,
        epochs,
        parts,
        val_metrics["val_accuracy"],
        val_metrics["val_loss"],
        elapsed,
        eta,
    )


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    split,
    batch_size: int = 64,
    runtime: Runtime | None = None,
    description: str = "predict",
) -> np.ndarray:
    """Float32 logits for every row of a tokenized split, in the split's order.

    Runs where the model's parameters are unless `runtime` says otherwise (and autocasts in its
    precision).
    """
    if runtime is None:
        runtime = Runtime(next(model.parameters()).device, "fp32")
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    batches = iterate_sorted(split, batch_size, pad_token_id(getattr(model, "config", None)))
    heartbeat, done = Heartbeat(description, len(split)), 0
    for batch in tqdm(batches, desc=description, disable=None, leave=False):
        done += len(batch["index"])
        heartbeat.beat(done, "rows")
        batch = move_batch(batch, runtime.device)
        with runtime.autocast():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        if out is None:
            out = np.empty((len(split), logits.shape[-1]), dtype=np.float32)
        out[batch["index"].numpy()] = logits.float().cpu().numpy()
    model.train(was_training)
    assert out is not None, "cannot predict on an empty split"
    return out
