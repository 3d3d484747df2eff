"""Thin Prefect tasks: run one core stage, time it, record it in MLflow, return its artifact.

The stage wiring is `deploy.chain` (shared with the benchmarks and tests); this module gives it a
runner that runs each stage as a Prefect task. Idempotency lives in the core (content-addressed
stage folders), so these tasks use no Prefect cache, and a retry is safe: it rebuilds only what
has no finished folder yet. Registration and promotion change the registry and are not retried.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from deploy import stage_table
from deploy.chain import RunArtifacts
from deploy.stage_table import STAGES, Recording
from distill import memory
from distill.chain import StageRunner
from distill.store import MANIFEST, Artifact, StageManifest, StoreFullError
from distill.training import MetricsLog
from tasks.promotion import gate_and_promote
from tasks.tracking import MlflowTracker, Registration, comparison_tags

UNGATED_BUNDLE = ".ungated-bundle"  # where the bundle waits for the gates
STAGE_RETRIES = 2
STAGE_RETRY_DELAY_SECONDS = 2


# Stage folder name -> what MLflow records from it, read from the one stage table.
RECORDINGS: dict[str, Recording] = {
    stage.name: stage.recording for stage in STAGES if stage.recording is not None
}


def field(manifest: StageManifest, name: str) -> Any:
    """A manifest field a recording names; a name the manifest type lacks is an error."""
    if name not in type(manifest).model_fields:
        raise AttributeError(
            f"{type(manifest).__name__} has no field {name!r} (named in a Recording in "
            "deploy/stage_table.py)"
        )
    return getattr(manifest, name)


def record_stage(tracker: MlflowTracker, artifact: Artifact, recording: Recording) -> None:
    """Log a stage's manifest, chosen manifest numbers and files; replay curves if reused."""
    stage, manifest = artifact.stage, artifact.manifest
    # Fields are read strictly (`field` raises on a name the manifest lacks): a misspelled
    # recording fails here and in tests/test_stage_table.py instead of being skipped.
    tracker.log_metrics(
        {
            f"{stage}/{name}": value
            for name in recording.metrics
            if (value := field(manifest, name)) is not None
        }
        | {f"{stage}/seconds": artifact.seconds, f"{stage}/reused": float(artifact.reused)}
        | (
            {f"{stage}/peak_rss_mb": artifact.peak_rss_bytes / 2**20}
            if artifact.peak_rss_bytes is not None
            else {}
        )
    )
    if artifact.reused and recording.curves and (history := field(manifest, "history")):
        tracker.log_history(stage, history)
    tracker.set_tags(
        {f"stage.{stage}.key": artifact.key}
        | {
            tag: value
            for tag, name in recording.tags.items()
            if (value := field(manifest, name)) is not None
        }
    )
    for prefix, name in recording.comparisons.items():
        comparison = field(manifest, name)
        if comparison is not None:
            tracker.set_tags(comparison_tags(f"{prefix}.", comparison))
    resolved = {param: field(manifest, name) for param, name in recording.params.items()}
    tracker.log_params({param: value for param, value in resolved.items() if value is not None})
    tracker.log_artifact(artifact.file(MANIFEST), f"manifests/{stage}")
    for name in recording.files:
        file = field(manifest, "file") if "{file}" in name else ""
        tracker.log_artifact(artifact.file(name.format(file=file)), stage)


def _measured(run: Callable[[], Artifact]) -> Artifact:
    """The stage's wall time and the process's peak resident memory while it ran."""
    memory.keep_large_blocks_out_of_heap()  # process-wide and idempotent: first stage sets it
    measuring = memory.reset_peak()
    started = time.perf_counter()
    artifact = run()
    peak = memory.peak_bytes() if measuring else None
    memory.return_freed_memory()  # the next stage starts from what is live, not this peak
    return dataclasses.replace(artifact, seconds=time.perf_counter() - started, peak_rss_bytes=peak)


def _worth_retrying(task, task_run, state) -> bool:
    """Bad input or a failed check (ValueError: data, config, parity) fails the same way twice.
    An interrupt (Ctrl-C, SIGTERM: a crashed state) is the user's decision: retrying it would
    run the stage again and carry the run on to the end."""
    if state.is_crashed():
        return False
    error = state.result(raise_on_failure=False)
    return isinstance(error, Exception) and not isinstance(error, ValueError | StoreFullError)


# Stages and units: no Prefect result cache (the store is the cache); failures retried when
# `_worth_retrying` says so.
_retried_task = functools.partial(
    task,
    cache_policy=NONE,
    retries=STAGE_RETRIES,
    retry_delay_seconds=STAGE_RETRY_DELAY_SECONDS,
    retry_condition_fn=_worth_retrying,
)


@_retried_task(name="stage", task_run_name="{stage}")
def run_stage_task(
    stage: str, build: Callable[[MetricsLog | None], Artifact], tracker: MlflowTracker
) -> Artifact:
    recording = stage_table.stage(stage).recording or Recording()
    log = tracker.metrics_log(stage) if recording.curves else None
    artifact = _measured(lambda: build(log))
    record_stage(tracker, artifact, recording)
    return artifact


def prefect_runner(tracker: MlflowTracker) -> StageRunner:
    """A `deploy.chain` runner: each stage is a retried Prefect task recorded in MLflow."""

    def run(stage: str, build: Callable[[MetricsLog | None], Artifact]) -> Artifact:
        return run_stage_task(stage, build, tracker)

    return run


@_retried_task(name="unit", task_run_name="{name}")
def run_unit(name: str, work: Callable[[], Any]) -> Any:
    """One independent unit of work (a cache shard, a sweep cell); a retry rebuilds only what
    has no finished stage folder yet."""
    return work()


def prefect_fan_out(name: str, works: Sequence[Callable[[], Any]]) -> list[Any]:
    """A `distill.fan_out.FanOut`: every unit submitted as a Prefect task to the flow's task
    runner (a Dask cluster's workers under `compute.cluster`), results in the given order.
    Works are pickled to the workers: module-level functions and paths, no open handles."""
    futures = [run_unit.submit(f"{name}-{number}", work) for number, work in enumerate(works)]
    return [future.result() for future in futures]


@task(name="register-model", cache_policy=NONE)
def register_model(
    registered_model: str, artifacts: RunArtifacts, tracker: MlflowTracker
) -> Registration:
    from tasks.model_card import model_identities
    from tasks.registry import register_model as register

    quantized, teacher, data = artifacts.quantize, artifacts.teacher, artifacts.data
    return register(
        tracker,
        quantized.file(quantized.manifest.file),
        registered_model,
        num_labels=len(data.manifest.label_names),
        version_tags={
            "run_id": tracker.run_id,
            "data_fingerprint": data.manifest.fingerprint,
            "teacher_sha256": teacher.manifest.weights_sha256,
            "student_sha256": artifacts.student.manifest.weights_sha256,
            **model_identities(artifacts).tags(),
            "quantization": quantized.manifest.method,
            "int8_test_accuracy": quantized.manifest.test_accuracy,
        },
    )


# Measure the registered INT8 model, judge the gates, write its model card, and make it
# `champion` when every gate passed (it stays `challenger` otherwise).
promote = task(name="gate-and-promote", cache_policy=NONE)(gate_and_promote)


@task(name="bundle-for-edge", cache_policy=NONE)
def bundle(
    workdir: Path,
    artifacts: RunArtifacts,
    registration: Registration,
    tracker: MlflowTracker,
) -> Path:
    """Build the registered version's bundle in `<workdir>/.ungated-bundle/` and log it with
    the run; the flow moves it to `<workdir>/bundle/` once the gates have judged it."""
    from deploy.bundle import bundle_from_stages

    folder = bundle_from_stages(
        workdir,
        artifacts,
        run_id=tracker.run_id,
        model_version=registration.version,
        folder_name=UNGATED_BUNDLE,
        tarball=False,
    )
    tracker.log_artifacts(folder, "bundle")
    return folder
