"""The `distillery` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from distill.config import ConfigError, load_config
from distill.data import DataError
from flows.edge_cli import register as register_edge_commands
from flows.errors import fail
from flows.registry_cli import register as register_registry_commands

if TYPE_CHECKING:
    from flows.sweep_grid import SweepSummary

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

# Mistakes a user can fix: reported as one line naming the file, key or version, no traceback.
USER_ERRORS = (ConfigError, DataError, FileNotFoundError)


def pipeline_errors() -> tuple[type[Exception], ...]:
    """USER_ERRORS plus what only a running pipeline raises (imported late: they pull in mlflow)."""
    from distill.logit_cache import CacheError
    from distill.store import StoreFullError
    from flows.cluster import ClusterUnreachable
    from tasks.registry import RegistryError
    from tasks.tracking import TrackingUnavailable

    return (
        *USER_ERRORS,
        RegistryError,
        TrackingUnavailable,
        CacheError,
        ClusterUnreachable,
        StoreFullError,
    )


@app.callback()
def main() -> None:
    """Distil a BERT-family text classifier into a small ONNX student for edge devices."""


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted key=value overrides, e.g. workdir=/tmp/x")
    ] = None,
    lock_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait when another run holds the workdir (0: refuse at once; "
            "-1: wait until it finishes)."
        ),
    ] = -1,
) -> None:
    """Run the whole pipeline; finished stages are reused. One run per workdir at a time."""
    overrides = overrides or []
    try:
        settings = load_config(config, overrides)
    except USER_ERRORS as err:
        fail(err)
    from flows.runtime_env import configure_environment, quiet_weight_loading
    from flows.workdir import WorkdirError, recover_workdir, workdir_lock

    # Before anything imports transformers, datasets or prefect: they read it at import.
    configure_environment(settings.workdir)
    quiet_weight_loading()
    workdir = Path(settings.workdir).resolve()
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    try:
        # Before the embedded Prefect server starts: its database lives in the workdir.
        with workdir_lock(workdir, timeout=lock_timeout, say=say):
            recover_workdir(workdir, settings.store_dir.resolve(), say)
            summary = _checked_run(config, overrides, settings)
    except WorkdirError as err:
        fail(err)
    print_summary(summary, workdir)


def _checked_run(config: Path, overrides: list[str], settings) -> dict[str, Any]:
    """Pre-flight checks, then the flow; a user's mistake ends as one line, no traceback."""
    try:
        from distill.preflight import check_inputs

        check_inputs(settings)
    except USER_ERRORS as err:
        fail(err)

    from flows.cluster import check_scheduler_listens, prefect_api_for_workers, with_compute
    from flows.pipeline import check_tracking, distill_pipeline
    from flows.runtime_env import quiet_tracebacks_of

    quiet_tracebacks_of(pipeline_errors())  # they end as one `error:` line below
    try:
        check_scheduler_listens(settings.compute)  # before a Prefect server starts for workers
        check_tracking(settings, Path(settings.workdir).resolve())
        # compute.cluster: the logit cache's shards run on it (one shard for small data).
        with prefect_api_for_workers(settings.compute):
            return with_compute(distill_pipeline, settings.compute)(str(config), overrides)
    except pipeline_errors() as err:
        fail(err)


def print_summary(written: dict[str, Any], workdir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from tasks.summary import RunSummary

    summary = RunSummary.model_validate(written)  # summary.json's content, typed
    console = Console()
    metrics = Table(title="distillery run", show_header=False)
    rows = [
        ("teacher accuracy", f"{summary.teacher_accuracy:.4f}"),
        ("student accuracy", f"{summary.student_accuracy:.4f}"),
        ("retention", f"{summary.retention:.4f}"),
        (
            "teacher gap (validation)",
            f"{summary.teacher_gap:+.4f}"
            + ("" if summary.teacher_clearly_stronger else " (not significant: see warning)"),
        ),
        ("INT8 accuracy", f"{summary.int8_accuracy:.4f}"),
        (
            "params teacher / student",
            f"{summary.teacher_params:,} / {summary.student_params:,}",
        ),
        (
            "ONNX fp32 / INT8 bytes",
            f"{summary.onnx_fp32_bytes:,} / {summary.onnx_int8_bytes:,}",
        ),
        ("registered", f"{summary.registered_model} v{summary.model_version}"),
        ("alias", summary.alias),
        ("MLflow run", summary.mlflow_run_id),
        ("wall seconds", f"{summary.wall_seconds:.1f}"),
    ]
    for name, value in rows:
        metrics.add_row(name, value)
    stages = Table(title="stages")
    for column in ("stage", "seconds", "reused"):
        stages.add_column(column)
    for name, stage in summary.stages.items():
        stages.add_row(name, f"{stage.seconds:.1f}", "yes" if stage.reused else "no")
    console.print(metrics)
    console.print(stages)
    console.print(f"summary: {workdir / 'summary.json'}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def sweep(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML).")],
    register_best: Annotated[
        bool,
        typer.Option(
            "--register-best",
            help=(
                "Register a best cell as challenger and gate it: among cells not significantly "
                "worse than the most accurate one (paired on validation), the smallest shipped "
                "model, then the fastest."
            ),
        ),
    ] = False,
) -> None:
    """Train a grid of students from one teacher cache, e.g.
    `distillery sweep CONFIG [key=value ...] --grid student.alpha=0.3,0.5 student.temperature=1,2`.
    Cells run on `compute.cluster`; finished cells are reused."""
    try:
        from flows.sweep_grid import cell_configs, grid_cells, parse_grid, split_sweep_args

        overrides, grid_items = split_sweep_args(ctx.args)
        settings = load_config(config, overrides)

        cell_configs(config, overrides, grid_cells(parse_grid(grid_items)))
    except USER_ERRORS as err:
        fail(err)
    from flows.runtime_env import configure_environment, quiet_weight_loading

    configure_environment(settings.workdir)
    quiet_weight_loading()
    try:
        from distill.preflight import check_inputs

        check_inputs(settings)
    except USER_ERRORS as err:
        fail(err)
    from flows.sweep import run_sweep

    try:
        summary = run_sweep(str(config), overrides, grid_items, register_best)
    except pipeline_errors() as err:
        fail(err)
    print_sweep(summary)


def print_sweep(summary: SweepSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [row.model_dump() for row in summary.rows]  # as the results table: settings as columns
    table = Table(title=f"distillery sweep (MLflow run {summary.mlflow_run_id})")
    hidden = ("student_key", "train_seconds", "fp32_p50_ms", "vs_best_low", "vs_best_high")
    columns = [c for c in rows[0] if c not in hidden]
    for column in columns:
        table.add_column(column)

    def cell(row: dict[str, Any], column: str) -> str:
        value = row[column]
        if column == "vs_best":  # the difference with its 95% interval
            return f"{value:+.4f} [{row['vs_best_low']:+.4f}, {row['vs_best_high']:+.4f}]"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    for row in rows:
        marked = row["cell"] == summary.register_cell
        table.add_row(*[cell(row, c) for c in columns], style="bold" if marked else None)
    console = Console()
    console.print(table)
    registered = summary.registered
    if registered is not None:
        console.print(
            f"cell {summary.register_cell} (most accurate: {summary.best_cell}) registered "
            f"as {registered.registered_model} v{registered.model_version} "
            f"({registered.promotion.alias or 'no alias'})"
        )
    console.print(f"results: {', '.join(summary.results)}")


@app.command()
def gc(
    workdir: Annotated[
        list[Path],
        typer.Option(help="A workdir whose registry and runs say what to keep (repeatable)."),
    ],
    store: Annotated[
        Path | None, typer.Option(help="The stage store (default: the single workdir).")
    ] = None,
    keep_runs: Annotated[int, typer.Option(help="Keep what the newest N runs used.")] = 5,
    keep_days: Annotated[float, typer.Option(help="Keep what runs younger than this used.")] = 7,
    dry_run: Annotated[bool, typer.Option(help="List what would go; remove nothing.")] = False,
) -> None:
    """Remove stage folders no registered version and no recent run uses, and stale debris."""
    from contextlib import ExitStack

    from flows.gc import collect
    from flows.workdir import WorkdirError, workdir_lock

    if store is None and len(workdir) != 1:
        fail("--store is needed when several workdirs are named")
    for folder in workdir:
        if not folder.is_dir():
            fail(f"workdir {folder} does not exist")
    root = (store or workdir[0]).resolve()
    if not root.is_dir():
        fail(f"store {root} does not exist")
    try:
        with ExitStack() as locks:
            for folder in workdir:  # no run may start or finish while its stages are judged
                locks.enter_context(workdir_lock(folder, timeout=0))
            removals = collect(workdir, root, keep_runs, keep_days, dry_run)
    except WorkdirError as err:
        fail(err)
    verb = "would remove" if dry_run else "removed"
    for removal in removals:
        typer.echo(f"{verb} {removal.path} ({removal.bytes:,} bytes: {removal.reason})")
    total = sum(removal.bytes for removal in removals)
    typer.echo(f"{verb} {len(removals)} folders, {total:,} bytes ({total / 1e6:.1f} MB) freed")


@app.command("show-config")
def show_config(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML).")],
    overrides: Annotated[list[str] | None, typer.Argument()] = None,
) -> None:
    """Print the fully resolved config (defaults filled in, overrides applied)."""
    from distill.config import config_to_yaml

    try:
        typer.echo(config_to_yaml(load_config(config, overrides or [])))
    except ConfigError as err:
        fail(err)


register_edge_commands(app)  # bundle, predict, selftest, serve
register_registry_commands(app)  # promote, rollback, lineage, schedule, retrain


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
