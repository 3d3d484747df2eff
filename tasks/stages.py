"""Thin Prefect tasks: call one core stage, time it, record it in MLflow, return its artifact.

Idempotency lives in the core (content-addressed stage folders), so these tasks use no Prefect
cache: a rerun calls the stage, which returns the finished folder at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from deploy.export import export_stage
from deploy.quantize import quantize_stage
from distill.augment import augmentation_stage
from distill.config import (
    AugmentationConfig,
    DataConfig,
    ExportConfig,
    PromotionConfig,
    StudentConfig,
    TeacherConfig,
)
from distill.data import data_stage
from distill.evaluation import evaluation_stage
from distill.logit_cache import logit_cache_stage
from distill.store import MANIFEST, Artifact
from distill.student import student_stage
from distill.teacher import teacher_stage
from tasks.tracking import MlflowTracker, Registration


def _timed(run: Callable[[], Artifact]) -> Artifact:
    started = time.perf_counter()
    artifact = run()
    return dataclasses.replace(artifact, seconds=time.perf_counter() - started)


def record_stage(
    tracker: MlflowTracker,
    artifact: Artifact,
    metrics: Iterable[str] = (),
    files: Iterable[str] = (),
) -> None:
    """Log a stage's manifest, chosen manifest numbers and files; replay curves if reused."""
    stage = artifact.stage
    tracker.log_metrics(
        {
            f"{stage}/{name}": artifact.manifest[name]
            for name in metrics
            if name in artifact.manifest
        }
        | {f"{stage}/seconds": artifact.seconds, f"{stage}/reused": float(artifact.reused)}
    )
    if artifact.reused and artifact.manifest.get("history"):
        tracker.log_history(stage, artifact.manifest["history"])
    tracker.set_tags({f"stage.{stage}.key": artifact.key})
    tracker.log_artifact(artifact.file(MANIFEST), f"manifests/{stage}")
    for name in files:
        tracker.log_artifact(artifact.file(name), stage)


@task(name="prepare-data", cache_policy=NONE)
def prepare_data(
    workdir: Path, config: DataConfig, tokenizer_model: str, tracker: MlflowTracker
) -> Artifact:
    artifact = _timed(lambda: data_stage(workdir, config, tokenizer_model))
    record_stage(tracker, artifact, files=["labels.json", "split.json"])
    tracker.set_tags({"data_fingerprint": artifact.manifest["fingerprint"]})
    return artifact


@task(name="fine-tune-teacher", cache_policy=NONE)
def fine_tune_teacher(
    workdir: Path, config: TeacherConfig, data: Artifact, tracker: MlflowTracker
) -> Artifact:
    artifact = _timed(
        lambda: teacher_stage(workdir, config, data, log=tracker.metrics_log("teacher"))
    )
    record_stage(tracker, artifact, metrics=["best_val_accuracy", "best_epoch", "params"])
    tracker.set_tags({"teacher_sha256": artifact.manifest["weights_sha256"]})
    return artifact


@task(name="augment-data", cache_policy=NONE)
def augment(
    workdir: Path,
    config: AugmentationConfig,
    data: Artifact,
    teacher: Artifact,
    tracker: MlflowTracker,
) -> Artifact | None:
    """Unlabelled variants of the train split; None when augmentation is off."""
    if config.multiplier == 0:
        return None
    artifact = _timed(lambda: augmentation_stage(workdir, config, data, teacher.path))
    record_stage(tracker, artifact, metrics=["rows"])
    return artifact


@task(name="cache-teacher-logits", cache_policy=NONE)
def cache_teacher_logits(
    workdir: Path,
    teacher: Artifact,
    data: Artifact,
    augmented: Artifact | None,
    tracker: MlflowTracker,
) -> Artifact:
    artifact = _timed(lambda: logit_cache_stage(workdir, teacher, data, augmented))
    record_stage(tracker, artifact)
    return artifact


@task(name="train-student", cache_policy=NONE)
def train_student(
    workdir: Path,
    config: StudentConfig,
    teacher: Artifact,
    cache: Artifact,
    data: Artifact,
    augmented: Artifact | None,
    tracker: MlflowTracker,
) -> Artifact:
    artifact = _timed(
        lambda: student_stage(
            workdir, config, teacher, cache, data, augmented, log=tracker.metrics_log("student")
        )
    )
    record_stage(tracker, artifact, metrics=["best_val_accuracy", "best_epoch", "params"])
    return artifact


@task(name="evaluate", cache_policy=NONE)
def evaluate(
    workdir: Path, teacher: Artifact, student: Artifact, data: Artifact, tracker: MlflowTracker
) -> Artifact:
    artifact = _timed(lambda: evaluation_stage(workdir, teacher, student, data))
    record_stage(
        tracker,
        artifact,
        metrics=[
            "teacher_accuracy",
            "teacher_macro_f1",
            "student_accuracy",
            "student_macro_f1",
            "retention",
            "agreement",
            "teacher_params",
            "student_params",
        ],
        files=["report.json", "confusion_matrix.png"],
    )
    return artifact


@task(name="export-onnx", cache_policy=NONE)
def export_onnx(
    workdir: Path, config: ExportConfig, student: Artifact, data: Artifact, tracker: MlflowTracker
) -> Artifact:
    artifact = _timed(lambda: export_stage(workdir, config, student, data))
    record_stage(
        tracker,
        artifact,
        metrics=["max_abs_logit_diff", "label_agreement", "test_accuracy", "bytes"],
        files=[artifact.manifest["file"]],
    )
    return artifact


@task(name="quantize-int8", cache_policy=NONE)
def quantize(
    workdir: Path, config: ExportConfig, export: Artifact, data: Artifact, tracker: MlflowTracker
) -> Artifact:
    artifact = _timed(lambda: quantize_stage(workdir, config, export, data))
    record_stage(
        tracker,
        artifact,
        metrics=["test_accuracy", "accuracy_drop", "label_agreement_with_fp32", "bytes"],
        files=[artifact.manifest["file"]],
    )
    return artifact


@task(name="register-model", cache_policy=NONE)
def register_model(
    registered_model: str,
    quantized: Artifact,
    teacher: Artifact,
    data: Artifact,
    tracker: MlflowTracker,
) -> Registration:
    from tasks.registry import register_model as register

    return register(
        tracker,
        quantized.file(quantized.manifest["file"]),
        registered_model,
        num_labels=len(data.manifest["label_names"]),
        version_tags={
            "run_id": tracker.run_id,
            "data_fingerprint": data.manifest["fingerprint"],
            "teacher_sha256": teacher.manifest["weights_sha256"],
            "quantization": quantized.manifest["method"],
            "int8_test_accuracy": quantized.manifest["test_accuracy"],
        },
    )


@task(name="gate-and-promote", cache_policy=NONE)
def promote(
    config: PromotionConfig,
    registration: Registration,
    artifacts: Mapping[str, Artifact],
    tracker: MlflowTracker,
    latency_samples: int,
) -> dict[str, Any]:
    """Measure the registered INT8 model, judge the gates, write its model card, and make it
    `champion` when every gate passed (it stays `challenger` otherwise)."""
    from tasks.promotion import gate_and_promote

    return gate_and_promote(config, registration, artifacts, tracker, latency_samples)


@task(name="bundle-for-edge", cache_policy=NONE)
def bundle(
    workdir: Path,
    artifacts: Mapping[str, Artifact],
    registration: Registration,
    tracker: MlflowTracker,
) -> Path:
    """Build `<workdir>/bundle/` (+ .tar.gz) for the registered version; log it with the run."""
    from deploy.bundle import bundle_from_stages

    folder = bundle_from_stages(
        workdir,
        artifacts["quantize"],
        artifacts["student"],
        artifacts["data"],
        artifacts["evaluation"],
        artifacts["teacher"],
        run_id=tracker.run_id,
        model_version=registration.version,
    )
    tracker.log_artifacts(folder, "bundle")
    return folder
