"""`distillery sweep`: one teacher-target cache, a grid of students on the cluster, one MLflow
parent run with a nested run per cell, and optionally the best cell registered and gated.

Data, teacher and cache run once in the flow (the cache's shards on the cluster); every cell is a
Prefect task on the flow's task runner (`compute.cluster`). MLflow is written from the flow's
process only: cells return their artifacts, and the flow logs each cell's nested run, so worker
processes never write the tracking store.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from prefect import flow, get_run_logger

from deploy.chain import RunArtifacts, run_until_cache
from deploy.stage_table import CELL_STAGES
from distill.config import PipelineConfig, config_to_yaml, flatten, load_config
from distill.files import write_json_atomic
from flows import sweep_grid
from flows.pipeline import check_registry, open_tracker, register_bundle_and_gate
from flows.sweep_grid import RegisteredCell, SweepRow, SweepSummary
from tasks import stages
from tasks.tracking import MlflowTracker, git_commit

SWEEP_FOLDER = "sweep"
SWEEP_SUMMARY = "sweep_summary.json"


def record_cell(parent: MlflowTracker, row: SweepRow, artifacts: RunArtifacts) -> MlflowTracker:
    """A nested run under `parent` for one cell: its overrides as params, its numbers as
    metrics, its stages' manifests and files as for a pipeline run. Returns its tracker (open)."""
    cell = copy.copy(parent)  # same client and experiment, its own run id
    cell.start_run(
        run_name=f"cell-{row.cell}",
        tags={MLFLOW_PARENT_RUN_ID: parent.run_id, "sweep.cell": str(row.cell)},
    )
    cell.log_params(row.values)
    cell.log_metrics(
        row.model_dump(
            include={"val_accuracy", "test_accuracy", "int8_accuracy", "int8_p50_ms", "fp32_p50_ms"}
        )
    )
    by_stage = artifacts.by_stage()
    for stage in CELL_STAGES:
        stages.record_stage(cell, by_stage[stage], stages.RECORDINGS[stage])
    return cell


@flow(name="distillery-sweep")
def distill_sweep(
    config_path: str,
    overrides: list[str] | None = None,
    grid_items: list[str] | None = None,
    register_best: bool = False,
) -> SweepSummary:
    """data -> teacher -> [augment] -> logit cache once, then every grid cell (student ->
    evaluation -> ONNX -> INT8) as a task; results table and grid PNG on the parent run."""
    started = time.perf_counter()
    overrides = overrides or []
    config = load_config(config_path, overrides)
    grid = sweep_grid.parse_grid(grid_items or [])
    cells = sweep_grid.grid_cells(grid)
    # Bad values fail here, before any work.
    configs = sweep_grid.cell_configs(config_path, overrides, cells)
    workdir = config.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = config.store_dir.resolve()
    logger = get_run_logger()
    tracker = open_tracker(config, workdir)
    if register_best:
        check_registry(tracker, config, workdir)
    parent_id = tracker.start_run(
        run_name=f"{config.name}-sweep",
        tags={
            "config_path": str(config_path),
            "git_commit": git_commit() or "unknown",
            "sweep.cells": str(len(cells)),
        },
    )
    logger.info("MLflow parent run %s: %d cells", parent_id, len(cells))
    tracker.log_params(flatten(config) | {f"sweep.grid.{k}": ",".join(v) for k, v in grid.items()})
    config_file = workdir / SWEEP_FOLDER / "config.resolved.yaml"  # not the pipeline run's
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config_to_yaml(config))
    tracker.log_artifact(config_file, "config")
    cell_trackers: list[MlflowTracker] = []
    succeeded = False
    try:
        upstream = run_until_cache(
            config,
            store,
            stages.prefect_runner(tracker),
            stages.prefect_fan_out,
        )
        results = sweep_grid.run_cells(configs, store, upstream, stages.prefect_fan_out)
        rows = sweep_grid.compare_with_best(
            [
                sweep_grid.cell_row(cell, artifacts)
                for cell, artifacts in zip(cells, results, strict=True)
            ],
            [sweep_grid.validation_predictions(artifacts) for artifacts in results],
            sweep_grid.validation_labels(results[0]),
        )
        for row, artifacts in zip(rows, results, strict=True):
            cell_trackers.append(record_cell(tracker, row, artifacts))
        files = sweep_grid.write_results(workdir / SWEEP_FOLDER, grid, rows)
        for path in files:
            tracker.log_artifact(path, SWEEP_FOLDER)
        best, chosen = sweep_grid.best_row(rows), sweep_grid.register_row(rows)
        tracker.log_metrics(
            {
                "best/val_accuracy": best.val_accuracy,
                "best/cell": float(best.cell),
                "register/cell": float(chosen.cell),
            }
        )
        tracker.set_tags({"sweep.best_cell_run": cell_trackers[best.cell].run_id})
        registered = None
        if register_best:
            registered = register_and_gate(
                configs[chosen.cell], results[chosen.cell], cell_trackers[chosen.cell]
            )
        summary = SweepSummary(
            mlflow_run_id=parent_id,
            cell_run_ids=[cell.run_id for cell in cell_trackers],
            cache_key=upstream.cache.key,
            best_cell=best.cell,
            register_cell=chosen.cell,
            rows=rows,
            results=[str(path) for path in files],
            registered=registered,
            wall_seconds=time.perf_counter() - started,
        )
        unset = {"registered"} if registered is None else set()
        write_json_atomic(
            workdir / SWEEP_FOLDER / SWEEP_SUMMARY, summary.model_dump(mode="json", exclude=unset)
        )
        tracker.log_artifact(workdir / SWEEP_FOLDER / SWEEP_SUMMARY, SWEEP_FOLDER)
        succeeded = True
        return summary
    finally:
        for cell in cell_trackers:
            cell.end_run(succeeded)
        tracker.end_run(succeeded)


def register_and_gate(
    config: PipelineConfig, artifacts: RunArtifacts, tracker: MlflowTracker
) -> RegisteredCell:
    """The best cell as the pipeline's last steps treat a run: registered (`challenger`),
    bundled, then through the promotion gates (`champion` only when every gate passes)."""
    registration, bundle, promotion = register_bundle_and_gate(
        config, artifacts, tracker, config.workdir.resolve()
    )
    return RegisteredCell(
        registered_model=registration.name,
        model_version=registration.version,
        reused=registration.reused,
        bundle=str(bundle),
        promotion=promotion,
    )


def run_sweep(
    config_path: str,
    overrides: Sequence[str],
    grid_items: Sequence[str],
    register_best: bool = False,
) -> SweepSummary:
    """The sweep flow on the task runner `compute.cluster` asks for (the CLI's entry point)."""
    from flows.cluster import prefect_api_for_workers, with_compute

    compute = load_config(config_path, list(overrides)).compute
    with prefect_api_for_workers(compute):
        return with_compute(distill_sweep, compute)(
            config_path, list(overrides), list(grid_items), register_best
        )
