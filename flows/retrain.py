"""Scheduled retraining: rerun the pipeline (and its gates) only when the data changed.

"Changed" means the data stage's fingerprint (texts, labels, split, tokenizer, max length)
differs from the `data_fingerprint` tag of the current champion version. The data stage is
content-addressed, so checking an unchanged source costs a hash of the source file.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from distill.config import load_config


@flow(name="distillery-retrain", log_prints=True)
def retrain_flow(config_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    from distill.data import data_stage
    from tasks.registry import champion_fingerprint
    from tasks.tracking import default_tracking_uri

    logger = get_run_logger()
    config = load_config(config_path, overrides or [])
    workdir = config.workdir.resolve()
    data = data_stage(config.store_dir.resolve(), config.data, config.teacher.model)
    fingerprint = data.manifest.fingerprint
    champion = champion_fingerprint(default_tracking_uri(workdir), config.tracking.registered_model)
    if champion is not None and champion[1] == fingerprint:
        logger.info(
            "nothing to do: data fingerprint %s is the one champion v%s was trained on",
            fingerprint,
            champion[0],
        )
        return {"action": "skipped", "data_fingerprint": fingerprint, "champion": champion[0]}

    if champion is None:
        logger.info("no champion yet: running the pipeline on data %s", fingerprint)
    else:
        logger.info(
            "data changed (%s, champion v%s has %s): running the pipeline",
            fingerprint,
            champion[0],
            champion[1],
        )
    from flows.pipeline import distill_pipeline

    summary = distill_pipeline(config_path, overrides)
    return {"action": "retrained", "data_fingerprint": fingerprint, "summary": summary}
