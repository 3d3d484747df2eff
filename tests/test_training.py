"""The training loop's pieces, each on its own, and the loop end to end on a tiny random model.

The synthetic split is learnable (label 1 rows use higher token ids), so validation accuracy
changes between epochs; no tokenizer or data stage is needed.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from datasets import Dataset

from distill import devices
from distill.batching import WINDOW_BATCHES, length_grouped_batches
from distill.config import RandomArchitecture, TrainingConfig
from distill.losses import LossTerms
from distill.models import random_classifier
from distill.teacher import teacher_loss
from distill.training import (
    BestEpoch,
    Optimisation,
    predict_logits,
    train_classifier,
    train_epoch,
    validate,
    warmup_linear_decay,
)

SETTINGS = dict(epochs=5, batch_size=8, learning_rate=2e-2, seed=3)


def synthetic_split(rows: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    ids, mask, labels = [], [], []
    for _ in range(rows):
        length = int(rng.integers(3, 12))
        label = int(rng.integers(0, 2))
        middle = rng.integers(5, 25, size=length - 2) + label * 15
        ids.append([1, *(int(token) for token in middle), 2])
        mask.append([1] * length)
        labels.append(label)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "label": labels})


@pytest.fixture(scope="module")
def splits():
    return synthetic_split(120, 1), synthetic_split(30, 2)


def tiny_model() -> torch.nn.Module:
    arch = RandomArchitecture(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
    return random_classifier(arch, 50, 32, ["a", "b"], seed=0)


def weights_digest(model: torch.nn.Module) -> str:
    tensors = model.state_dict().values()
    return hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in tensors)).hexdigest()


def no_accelerator(monkeypatch) -> None:
    """Make `auto` see this machine as CPU-only, whatever it has."""
    monkeypatch.setattr(devices, "available", lambda kind: kind == "cpu")


@pytest.fixture(autouse=True)
def fp32_cpu(monkeypatch):
    """`auto` precision is fp32 here on every CPU (one with bf16 units would pick bf16), so the
    recorded runs and the logged lines below hold on any x86-64 machine."""
    monkeypatch.setattr(devices, "fast_cpu_bf16", lambda: False)


# Recorded with the single-function train_classifier before it was split (commit 22afb4c), same
# model, data and settings: (step, train_loss) every 10 steps and val_accuracy per epoch.
OLD_TRAIN_LOSS = [
    (10, 0.6940046846866608),
    (20, 0.1150714173913002),
    (30, 0.06086641892325133),
    (40, 0.08736928135622293),
    (50, 0.0017803654773160815),
    (60, 0.07886952649569139),
    (70, 0.16246623168699442),
    (75, 0.2967236306518316),
]
OLD_VAL_ACCURACY = [0.9666666666666667] * 4 + [1.0]
OLD_ABS_WEIGHT_SUM = 531.7320113417599
# How far the same 75 steps drift across CPU kinds (different SIMD kernels round the last bits
# differently, and 75 steps of training amplify that). Measured: weight sum 531.73201 (Intel
# Xeon, AMX), 531.72973 (AMD EPYC), 531.71930 (AMD EPYC, ATEN_CPU_CAPABILITY=avx2): at most
# 2.4e-5 relative, so 2e-4 leaves room for kinds not seen yet. A changed loop (another schedule,
# another batch order, a lost step) moves the sum by percents, far outside it. Bit-exactness is
# the job of the same-machine test below, which compares two runs in one process.
CROSS_CPU_RTOL = 2e-4
# Losses near zero (step 50) drift in absolute terms, not relative ones.
CROSS_CPU_LOSS_ATOL = 1e-3


@pytest.mark.parametrize(
    "extra", [{}, {"device": "cpu", "precision": "fp32"}], ids=["default", "cpu-fp32"]
)
def test_matches_the_recorded_run_of_the_old_loop(splits, extra, monkeypatch):
    no_accelerator(monkeypatch)
    model = tiny_model()
    result = train_classifier(
        model, *splits, TrainingConfig(**SETTINGS, **extra), teacher_loss, description="t"
    )
    losses = [(h["step"], h["train_loss"]) for h in result.history if "train_loss" in h]
    assert [step for step, _ in losses] == [step for step, _ in OLD_TRAIN_LOSS]
    assert [loss for _, loss in losses] == pytest.approx(
        [v for _, v in OLD_TRAIN_LOSS], rel=CROSS_CPU_RTOL * 10, abs=CROSS_CPU_LOSS_ATOL
    )
    val = [h["val_accuracy"] for h in result.history if "val_accuracy" in h]
    assert val == pytest.approx(OLD_VAL_ACCURACY)
    assert (result.best_epoch, result.device, result.precision) == (5, "cpu", "fp32")
    total = sum(float(t.double().abs().sum()) for t in model.state_dict().values())
    assert total == pytest.approx(OLD_ABS_WEIGHT_SUM, rel=CROSS_CPU_RTOL)


def test_two_runs_with_the_same_seed_give_identical_weights(splits):
    settings = TrainingConfig(**{**SETTINGS, "epochs": 1}, device="cpu", precision="fp32")
    first, second = tiny_model(), tiny_model()
    train_classifier(first, *splits, settings, teacher_loss)
    train_classifier(second, *splits, settings, teacher_loss)
    assert weights_digest(first) == weights_digest(second)


def test_teacher_training_logs_its_cross_entropy_only(splits):
    logged: list[tuple[dict, int]] = []
    settings = TrainingConfig(**{**SETTINGS, "epochs": 1}, device="cpu")
    train_classifier(
        tiny_model(), *splits, settings, teacher_loss, log=lambda m, s: logged.append((m, s))
    )
    step_keys = {key for metrics, _ in logged if "train_loss" in metrics for key in metrics}
    assert step_keys == {"train_loss", "ce", "lr"}


def test_loss_parts_are_averaged_like_the_loss(splits):
    """A loss with kl and pkd parts: each is logged as the mean over the logging window."""
    calls = []

    def loss(model, batch) -> LossTerms:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = torch.nn.functional.cross_entropy(logits, batch["label"])
        n = float(len(calls))
        calls.append(n)
        return LossTerms(ce, {"ce": ce, "kl": torch.tensor(n), "pkd": torch.tensor(2 * n)})

    logged = []
    settings = TrainingConfig(**{**SETTINGS, "epochs": 1}, device="cpu")
    train_classifier(tiny_model(), *splits, settings, loss, log=lambda m, s: logged.append((m, s)))
    steps = [(metrics, step) for metrics, step in logged if "train_loss" in metrics]
    assert [step for _, step in steps] == [10, 15]
    assert steps[0][0]["kl"] == pytest.approx(np.mean(range(10)))
    assert steps[1][0]["kl"] == pytest.approx(np.mean(range(10, 15)))
    assert steps[1][0]["pkd"] == pytest.approx(2 * np.mean(range(10, 15)))


@pytest.mark.parametrize(
    ("step", "factor"),
    # 100 steps, 10 of warm-up: linear up to 1 at step 9, then linear down to 0 at step 100.
    [(0, 0.1), (4, 0.5), (9, 1.0), (10, 1.0), (55, 0.5), (99, 1 / 90), (100, 0.0), (150, 0.0)],
)
def test_warmup_then_linear_decay(step, factor):
    assert warmup_linear_decay(100, 0.1)(step) == pytest.approx(factor)


def test_schedule_drives_the_optimizer_learning_rate():
    model = tiny_model()
    settings = TrainingConfig(learning_rate=1e-3, warmup_ratio=0.25)
    optimisation = Optimisation.create(model, settings, total_steps=8)
    seen = [optimisation.schedule.get_last_lr()[0]]
    for _ in range(8):
        optimisation.optimizer.step()
        optimisation.schedule.step()
        seen.append(optimisation.schedule.get_last_lr()[0])
    expected = [0.5, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]
    assert seen == pytest.approx([1e-3 * f for f in expected])


def test_length_grouped_batches_cover_every_row_once_in_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(1, 200, size=1000))
    batch_size = 4  # windows of 4 * WINDOW_BATCHES rows
    batches = length_grouped_batches(lengths, batch_size, np.random.default_rng(5))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000))
    assert all(len(batch) == batch_size for batch in batches)
    spread = np.mean([np.ptp([lengths[i] for i in batch]) for batch in batches])
    random_spread = np.mean([np.ptp(lengths[i : i + batch_size]) for i in range(0, 1000, 4)])
    assert spread < random_spread / 5
    assert len(rows) > batch_size * WINDOW_BATCHES  # more than one window was sorted
    again = length_grouped_batches(lengths, batch_size, np.random.default_rng(5))
    other = length_grouped_batches(lengths, batch_size, np.random.default_rng(6))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_train_epoch_visits_every_row_once(splits):
    train, _ = splits
    seen: list[int] = []

    def loss(model, batch) -> LossTerms:
        seen.extend(batch["index"].tolist())
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return LossTerms(logits.sum() * 0.0)

    model = tiny_model()
    settings = TrainingConfig(batch_size=8)
    optimisation = Optimisation.create(model, settings, total_steps=15)
    lengths = [len(ids) for ids in train["input_ids"]]
    means = train_epoch(
        model, train, lengths, loss, optimisation, np.random.default_rng(0), lambda m, s: None, []
    )
    assert sorted(seen) == list(range(len(train)))
    assert optimisation.step == 15 and means == {"train_loss": 0.0}


def test_validate_scores_the_model_as_it_is(splits):
    _, validation = splits
    model = tiny_model()
    metrics = validate(model, validation, batch_size=7)
    logits = predict_logits(model, validation, batch_size=30)
    labels = np.asarray(validation["label"])
    assert metrics["val_accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)))
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(labels))
    assert metrics["val_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_best_epoch_restores_the_best_weights_not_the_last():
    model, best = tiny_model(), BestEpoch()
    snapshots = {}
    for epoch, val_accuracy in enumerate([0.6, 0.9, 0.9, 0.7], start=1):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
        snapshots[epoch] = weights_digest(model)
        best.update(epoch, val_accuracy, model)
    assert (best.epoch, best.accuracy) == (2, 0.9)  # the first of a tie
    assert weights_digest(model) == snapshots[4]
    best.restore(model)
    assert weights_digest(model) == snapshots[2]


def test_best_epoch_is_restored_by_the_loop(splits):
    """Validation on flipped labels: the worst epoch for the task is the best for validation."""
    train, validation = splits
    flipped = validation.map(lambda row: {"label": 1 - row["label"]})
    model = tiny_model()
    result = train_classifier(model, train, flipped, TrainingConfig(**SETTINGS), teacher_loss)
    val = [h["val_accuracy"] for h in result.history if "val_accuracy" in h]
    assert result.best_epoch == int(np.argmax(val)) + 1
    assert max(val) > val[-1]
    # The returned model scores what its best epoch scored, not what the last epoch did.
    assert validate(model, flipped, 16)["val_accuracy"] == pytest.approx(max(val))


def test_epoch_progress_lines_at_info(splits, caplog):
    settings = TrainingConfig(**{**SETTINGS, "epochs": 2}, device="cpu")
    with caplog.at_level(logging.INFO, logger="distill"):
        train_classifier(tiny_model(), *splits, settings, teacher_loss, description="teacher")
    lines = [r.getMessage() for r in caplog.records if r.name == "distill.training"]
    epochs = [line for line in lines if "epoch" in line and "ETA" in line]
    assert len(epochs) == 2
    assert epochs[0].startswith("teacher epoch 1/2: train_loss ")
    assert "ce " in epochs[0] and "val_accuracy " in epochs[0] and "elapsed" in epochs[0]
    assert epochs[1].endswith("ETA 0 s")
    assert any("on cpu (fp32)" in line for line in lines)


def test_training_curves_show_the_loss_terms_when_present(tmp_path):
    from tasks.model_card import plot_training_curves

    teacher = [{"step": 10, "train_loss": 0.7, "ce": 0.7}, {"step": 10, "val_accuracy": 0.8}]
    student = [
        {"step": 10, "train_loss": 0.5, "ce": 0.6, "kl": 0.4, "pkd": 0.1, "lr": 1e-4},
        {"step": 20, "train_loss": 0.4, "ce": 0.5, "kl": 0.3, "pkd": 0.1, "lr": 1e-4},
        {"step": 20, "val_accuracy": 0.8, "val_loss": 0.45, "epoch": 1.0},
    ]
    path = tmp_path / "curves.png"
    labels = plot_training_curves({"teacher": teacher, "student": student}, path)
    assert {"student ce", "student kl", "student pkd", "teacher ce"} <= set(labels)
    assert "teacher kl" not in labels and path.stat().st_size > 0
    # Histories recorded before the terms were logged: no terms panel, no error.
    old = [{k: v for k, v in e.items() if k not in ("ce", "kl", "pkd")} for e in student]
    assert plot_training_curves({"student": old}, path) == [
        "student train_loss",
        "student val_loss",
        "student val_accuracy",
    ]


def test_a_heartbeat_line_comes_at_most_once_a_minute(caplog):
    """Without a terminal there is no progress bar: a long epoch still says where it is."""
    from distill.training import Heartbeat

    now = [0.0]
    heartbeat = Heartbeat("teacher", total=100, every=60.0, clock=lambda: now[0])
    beats = []
    for step in range(1, 101):
        now[0] += 2.0  # a step every two seconds
        with caplog.at_level(logging.INFO, logger="distill.training"):
            beats.append(heartbeat.beat(step, "steps"))
    assert [step for step, beat in enumerate(beats, 1) if beat] == [30, 60, 90]
    assert "teacher: 30/100 (steps); 60 s elapsed, ETA 140 s" in caplog.text


def test_transformers_load_and_save_bars_are_quiet_and_others_are_not():
    from transformers.utils import logging as hf_logging

    from flows.runtime_env import quiet_weight_loading

    quiet_weight_loading()
    try:
        for desc in ("Loading weights", "Writing model shards"):
            assert hf_logging.tqdm(range(3), desc=desc).disable
        assert not hf_logging.tqdm(range(3), desc="Downloading", disable=False).disable
    finally:
        hf_logging.set_tqdm_hook(None)


def test_early_stopping_counts_evaluations_without_any_improvement():
    from distill.training import EarlyStopping

    stopper = EarlyStopping(patience=2, min_steps=50)
    for accuracy, loss in [(0.6, 0.7), (0.7, 0.8), (0.7, 0.5), (0.7, 0.55), (0.65, 0.6)]:
        stopper.update(accuracy, loss)
    assert stopper.stale == 2  # neither 0.7 nor 0.5 was beaten twice in a row
    assert not stopper.should_stop(step=40)  # not before min_steps
    assert stopper.should_stop(step=50)
    stopper.update(0.71, 0.9)  # a better accuracy is an improvement, whatever the loss
    assert stopper.stale == 0
    assert not EarlyStopping(patience=None).should_stop(step=10**6)


def test_a_run_that_stops_learning_stops_early_and_keeps_its_best_weights(splits):
    """A learning rate so small that nothing changes: validation never improves again."""
    settings = TrainingConfig(
        **{**SETTINGS, "learning_rate": 1e-12, "epochs": 20},
        patience=2,
        eval_every_steps=5,
        device="cpu",
    )
    model = tiny_model()
    result = train_classifier(model, *splits, settings, teacher_loss)
    evaluations = [h for h in result.history if "val_accuracy" in h]
    assert result.stop_reason == "patience"
    assert len(evaluations) == 3  # the first, then two without improvement
    assert result.steps == 15 < 20 * 15
    assert validate(model, splits[1], 8)["val_accuracy"] == result.best_val_accuracy


def test_a_run_that_keeps_learning_runs_to_its_maximum(splits):
    settings = TrainingConfig(**{**SETTINGS, "epochs": 3}, patience=5, device="cpu")
    result = train_classifier(tiny_model(), *splits, settings, teacher_loss)
    assert (result.stop_reason, result.steps) == ("max_epochs", 45)


def test_min_steps_holds_off_a_stop_and_eval_every_steps_adds_checks(splits):
    settings = TrainingConfig(
        **{**SETTINGS, "learning_rate": 1e-12, "epochs": 2},
        patience=1,
        min_steps=30,
        eval_every_steps=4,
        device="cpu",
    )
    result = train_classifier(tiny_model(), *splits, settings, teacher_loss)
    steps = [h["step"] for h in result.history if "val_accuracy" in h]
    assert steps == [4, 8, 12, 15, 16, 20, 24, 28, 30]  # every 4 steps and each epoch's end
    assert (result.stop_reason, result.steps) == ("patience", 30)
