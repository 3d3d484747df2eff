"""Every loss term reaches MLflow as `student/<name>` (`student/ce`, `student/kl`, ...; real
SQLite store), and the `distill` logger's progress lines reach Prefect's handlers in a
CLI-configured run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset

from distill.config import RandomArchitecture, TrainingConfig
from distill.losses import LOSS_TERM_NAMES, LossTerms
from distill.models import random_classifier
from distill.training import train_classifier


def rows(n: int) -> Dataset:
    rng = np.random.default_rng(n)
    ids = [[1, *rng.integers(5, 40, size=4).tolist(), 2] for _ in range(n)]
    return Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * 6] * n, "label": rng.integers(0, 2, n)}
    )


def distill_like_loss(model, batch) -> LossTerms:
    """A part under every registered term's name (CE first, the others made up)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = torch.nn.functional.cross_entropy(logits, batch["label"])
    others = {name: logits.pow(power).abs().mean() for power, name in enumerate(LOSS_TERM_NAMES)}
    parts = {"ce": ce, **{name: part for name, part in others.items() if name != "ce"}}
    return LossTerms(sum(parts.values()), parts)


def test_loss_terms_are_mlflow_metrics_per_step(tmp_path):
    from tasks.tracking import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "terms", tmp_path / "artifacts")
    run_id = tracker.start_run("terms", {})
    arch = RandomArchitecture(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
    model = random_classifier(arch, 50, 32, ["a", "b"], seed=0)
    settings = TrainingConfig(epochs=1, batch_size=4, device="cpu")
    result = train_classifier(
        model, rows(48), rows(8), settings, distill_like_loss, log=tracker.metrics_log("student")
    )
    tracker.end_run(True)
    logged = [e for e in result.history if "train_loss" in e]
    for name in (*LOSS_TERM_NAMES, "train_loss"):
        history = tracker.client.get_metric_history(run_id, f"student/{name}")
        assert [m.step for m in history] == [10, 12]
        assert [m.value for m in history] == pytest.approx([e[name] for e in logged])


PREFECT_PROBE = """
import logging, sys
from pathlib import Path
from flows.runtime_env import configure_environment
configure_environment(Path(sys.argv[1]))
from prefect.logging.configuration import setup_logging
setup_logging()
distill = logging.getLogger("distill.training")
handlers = [type(h).__name__ for h in logging.getLogger("distill").handlers]
print(distill.isEnabledFor(logging.INFO), sorted(handlers))
"""


def test_distill_progress_lines_reach_prefects_run_log_handlers(tmp_path):
    """In the environment the CLI sets, Prefect attaches its run-log (API) handler to the
    `distill` logger, and INFO lines (the per-epoch progress) pass its level."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run(
        [sys.executable, "-c", PREFECT_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    enabled, handlers = out.stdout.strip().split(" ", 1)
    assert enabled == "True"
    assert "APILogHandler" in handlers
