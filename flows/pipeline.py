"""The distillation pipeline as one straight-line Prefect flow."""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow, get_run_logger

from deploy.chain import run_pipeline_stages
from distill.config import config_to_yaml, flatten, load_config
from distill.store import write_json_atomic
from distill.summary import build_summary
from tasks import stages
from tasks.registry import REGISTRY_RECORD, check_registry_record
from tasks.tracking import MlflowTracker, default_tracking_uri, git_commit

SUMMARY = "summary.json"


@flow(name="distillery-pipeline")
def distill_pipeline(config_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """data -> teacher -> [augment] -> logit cache -> student -> evaluation -> ONNX -> INT8
    -> registry -> bundle -> gates. Stage folders live in the config's store (default: the
    workdir); run-specific files in the workdir."""
    started = time.perf_counter()
    config = load_config(config_path, overrides or [])
    workdir = config.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = config.store_dir.resolve()
    logger = get_run_logger()
    tracker = MlflowTracker(
        default_tracking_uri(workdir),
        config.tracking.experiment,
        workdir / "mlartifacts",
        registry_record=workdir / REGISTRY_RECORD,
    )
    # A registry that lost versions this workdir registered stops the run before any work.
    check_registry_record(
        tracker.client,
        workdir / REGISTRY_RECORD,
        tracker.tracking_uri,
        config.tracking.registered_model,
    )
    run_id = tracker.start_run(
        run_name=config.name,
        tags={"config_path": str(config_path), "git_commit": git_commit() or "unknown"},
    )
    logger.info("MLflow run %s at %s", run_id, tracker.tracking_uri)
    tracker.log_params(flatten(config))
    config_file = workdir / "config.resolved.yaml"
    config_file.write_text(config_to_yaml(config))
    tracker.log_artifact(config_file, "config")
    succeeded = False
    try:
        artifacts = run_pipeline_stages(
            config, store, stages.prefect_runner(tracker), stages.prefect_fan_out
        )
        registration = stages.register_model(config.tracking.registered_model, artifacts, tracker)
        # The bundle goes with the run before any gate can promote the version, so a champion
        # always has its bundle.
        bundle = stages.bundle(workdir, artifacts, registration, tracker)
        promotion = stages.promote(
            config.promotion,
            registration,
            artifacts,
            tracker,
            latency_samples=config.quantize.latency_samples,
        )
        summary = build_summary(
            artifacts,
            mlflow_run_id=run_id,
            registered_model=registration.name,
            model_version=registration.version,
            wall_seconds=time.perf_counter() - started,
            promotion=promotion,
        )
        summary["bundle"] = str(bundle)
        summary["bundle_bytes"] = sum(f.stat().st_size for f in bundle.iterdir())
        write_json_atomic(workdir / SUMMARY, summary)
        tracker.log_artifact(workdir / SUMMARY)
        tracker.log_metrics({"pipeline/wall_seconds": summary["wall_seconds"]})
        logger.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "stages"}))
        succeeded = True
        return summary
    finally:
        tracker.end_run(succeeded)
