"""The distillation pipeline as one straight-line Prefect flow."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from deploy.bundle import BUNDLE_DIR, bundle_bytes, place_folder, tarball_path, write_tarball
from deploy.chain import RunArtifacts, run_pipeline_stages
from distill.config import PipelineConfig, config_to_yaml, flatten, load_config
from distill.files import write_json_atomic, write_text_atomic
from distill.gates import PromotionResult
from flows.workdir import recover_workdir, workdir_lock
from tasks import stages
from tasks.recovery import close_abandoned_runs, run_identity_tags
from tasks.registry import REGISTRY_RECORD, check_registry_record
from tasks.summary import build_summary
from tasks.tracking import MlflowTracker, Registration, default_tracking_uri, git_commit

SUMMARY = "summary.json"
PREVIOUS_SUMMARY = "summary.previous.json"


@flow(name="distillery-pipeline")
def distill_pipeline(config_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """data -> teacher -> [augment] -> logit cache -> student -> evaluation -> ONNX -> INT8
    -> registry -> bundle -> gates. Stage folders live in the config's store (default: the
    workdir); run-specific files in the workdir, which one run holds at a time."""
    config = load_config(config_path, overrides or [])
    workdir = config.workdir.resolve()
    logger = get_run_logger()
    # The CLI already holds it (taken before Prefect started); a served deployment takes it here.
    with workdir_lock(workdir, say=logger.warning) as taken:
        if taken:
            recover_workdir(workdir, config.store_dir.resolve(), logger.warning)
        return _run(config, config_path, workdir)


def _run(config: PipelineConfig, config_path: str, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    store = config.store_dir.resolve()
    logger = get_run_logger()
    tracker = open_tracker(config, workdir)
    # A registry that lost versions this workdir registered stops the run before any work.
    check_registry(tracker, config, workdir)
    for run_id in close_abandoned_runs(tracker.client, workdir):
        logger.warning("MLflow run %s of a killed pipeline was left RUNNING: marked KILLED", run_id)
    # summary.json describes the last finished run only: a run killed from here on leaves none
    # (the previous one stays beside it), never an old one that looks current.
    if (workdir / SUMMARY).exists():
        os.replace(workdir / SUMMARY, workdir / PREVIOUS_SUMMARY)
    run_id = tracker.start_run(
        run_name=config.name,
        tags={
            "config_path": str(config_path),
            "git_commit": git_commit() or "unknown",
            **run_identity_tags(workdir),
        },
    )
    logger.info("MLflow run %s at %s", run_id, tracker.tracking_uri)
    status = "FAILED"
    try:
        tracker.log_params(flatten(config))
        config_file = workdir / "config.resolved.yaml"
        write_text_atomic(config_file, config_to_yaml(config))
        tracker.log_artifact(config_file, "config")
        artifacts = run_pipeline_stages(
            config, store, stages.prefect_runner(tracker), stages.prefect_fan_out
        )
        registration, bundle, promotion = register_bundle_and_gate(
            config, artifacts, tracker, workdir
        )
        summary = build_summary(
            artifacts,
            mlflow_run_id=run_id,
            registered_model=registration.name,
            model_version=registration.version,
            wall_seconds=time.perf_counter() - started,
            promotion=promotion,
            bundle=bundle,
            bundle_bytes=bundle_bytes(bundle),
        )
        written = summary.as_json()
        write_json_atomic(workdir / SUMMARY, written)
        tracker.log_artifact(workdir / SUMMARY)
        tracker.log_metrics({"pipeline/wall_seconds": summary.wall_seconds})
        logger.info("summary: %s", json.dumps({k: v for k, v in written.items() if k != "stages"}))
        status = "FINISHED"
        return written  # summary.json's content (`RunSummary.model_validate` reads it back)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            tracker.end_run(status=status)
        except Exception as err:  # never hide the run's own error behind this one
            logger.error("could not mark MLflow run %s %s: %s", run_id, status, err)


def open_tracker(config: PipelineConfig, workdir: Path) -> MlflowTracker:
    """The run's MLflow tracker: the workdir's store unless MLFLOW_TRACKING_URI says otherwise."""
    return MlflowTracker(
        default_tracking_uri(workdir),
        config.tracking.experiment,
        workdir / "mlartifacts",
        registry_record=workdir / REGISTRY_RECORD,
    )


def check_tracking(config: PipelineConfig, workdir: Path) -> None:
    """The tracking server answers and its registry still holds what this workdir registered:
    the CLI checks it before the flow starts, so either failure is one line, not a flow
    traceback (the flow checks again: a deployment runs it without the CLI)."""
    check_registry(open_tracker(config, workdir), config, workdir)


def check_registry(tracker: MlflowTracker, config: PipelineConfig, workdir: Path) -> None:
    check_registry_record(
        tracker.client,
        workdir / REGISTRY_RECORD,
        tracker.tracking_uri,
        config.tracking.registered_model,
    )


def register_bundle_and_gate(
    config: PipelineConfig, artifacts: RunArtifacts, tracker: MlflowTracker, workdir: Path
) -> tuple[Registration, Path, PromotionResult]:
    """Register (`challenger`), bundle, gate, then put the gated bundle in place.

    The bundle goes with the run before any gate can promote the version, so a champion always
    has its bundle; it replaces <workdir>/bundle only once the gates have judged it."""
    registration = stages.register_model(config.tracking.registered_model, artifacts, tracker)
    pending = stages.bundle(workdir, artifacts, registration, tracker)
    promotion = stages.promote(
        config.promotion,
        registration,
        artifacts,
        tracker,
        latency_samples=config.quantize.latency_samples,
    )
    return registration, place_bundle(pending, workdir / BUNDLE_DIR), promotion


def place_bundle(pending: Path, final: Path) -> Path:
    """Swap the gated bundle into `<workdir>/bundle` and write its archive beside it."""
    place_folder(pending, final)
    write_tarball(final, tarball_path(final))
    return final
