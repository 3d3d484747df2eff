"""`distillery` commands for the model registry and scheduled retraining.

promote / rollback / lineage act on the MLflow registry; schedule serves the retraining flow as a
Prefect deployment; retrain runs that flow once now. Heavy imports stay inside the commands so
`distillery --help` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from distill.config import ConfigError, load_config
from flows.errors import fail

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking/registry URI (default: the SQLite store in --workdir).",
    ),
]
Workdir = Annotated[
    Path | None, typer.Option("--workdir", help="Pipeline workdir holding mlflow.db.")
]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted key=value overrides, e.g. workdir=/tmp/x")
]


def _registry_uri(tracking_uri: str | None, workdir: Path | None) -> str:
    if not tracking_uri and workdir is None:
        fail("name the registry with --tracking-uri, --workdir or MLFLOW_TRACKING_URI")
    if not tracking_uri and not (Path(workdir) / "mlflow.db").is_file():
        # MLflow would create an empty store (and the folder) and then find no model in it.
        fail(f"--workdir {workdir} holds no MLflow store (mlflow.db): name the workdir of a run")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for errors
    from tasks.tracking import sqlite_uri

    return tracking_uri or sqlite_uri(workdir)


def _client(tracking_uri: str | None, workdir: Path | None):
    from tasks.tracking import mlflow_client

    return mlflow_client(_registry_uri(tracking_uri, workdir))


def _registry_errors() -> tuple[type[Exception], ...]:
    from mlflow.exceptions import MlflowException

    from tasks.registry import RegistryError

    return (RegistryError, MlflowException)


def _move_aliases(tracking_uri: str | None, workdir: Path | None, name: str, move):
    """`move(client)` under the registry lock of model `name`; a registry error ends the command."""
    uri = _registry_uri(tracking_uri, workdir)
    from tasks.registry import registry_lock
    from tasks.tracking import mlflow_client

    try:
        with registry_lock(uri, name):
            return move(mlflow_client(uri))
    except _registry_errors() as err:
        fail(err)


def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why the gates are overridden.")] = "",
    by: Annotated[str | None, typer.Option(help="Reviewer (default: current user).")] = None,
    tracking_uri: TrackingUri = None,
    workdir: Workdir = None,
) -> None:
    """Make VERSION the champion by hand, whatever its gates said (recorded as an override)."""

    def move(client):
        from tasks.registry import override_promote

        return override_promote(client, name, version, by=by, reason=reason)

    outcome = _move_aliases(tracking_uri, workdir, name, move)
    replaced = f"; v{outcome.replaced} is now previous" if outcome.replaced else ""
    typer.echo(f"{name} v{version} is champion (manual override){replaced}")


def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    by: Annotated[str | None, typer.Option(help="Reviewer (default: current user).")] = None,
    tracking_uri: TrackingUri = None,
    workdir: Workdir = None,
) -> None:
    """Make the previous champion the champion again."""

    def move(client):
        from tasks.registry import rollback as roll_back

        return roll_back(client, name, by=by)

    outcome = _move_aliases(tracking_uri, workdir, name, move)
    typer.echo(f"{name} v{outcome.version} is champion again ({outcome.reason})")


def lineage(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION")],
    tracking_uri: TrackingUri = None,
    workdir: Workdir = None,
) -> None:
    """Print (JSON) where a registered version came from: run, config, data, teacher, code."""
    client = _client(tracking_uri, workdir)
    from tasks.registry import lineage as trace

    try:
        info = trace(client, model_uri)
    except _registry_errors() as err:
        fail(err)
    typer.echo(json.dumps(info, indent=2, sort_keys=True, default=str))


def _checked_settings(config: Path, overrides: list[str]):
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        fail(err)


def schedule(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML).")],
    cron: Annotated[str, typer.Option(help='Cron schedule, e.g. "0 3 * * 1".')],
    overrides: Overrides = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "scheduled-retrain",
) -> None:
    """Serve the retraining flow as a Prefect deployment on a cron schedule (blocks)."""
    overrides = overrides or []
    settings = _checked_settings(config, overrides)
    # An embedded temporary server runs no scheduler service: the cron would never fire.
    if not os.environ.get("PREFECT_API_URL"):
        fail(
            "schedules need a running Prefect server: start `prefect server start` and set "
            "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError as err:
        fail(f"--cron {cron!r} is not a valid cron expression ({err})")

    from flows.runtime_env import configure_environment

    configure_environment(settings.workdir)
    from flows.retrain import retrain_flow

    retrain_flow.serve(
        name=name,
        cron=cron,
        parameters={"config_path": str(config.resolve()), "overrides": overrides},
        description="Retrain and gate when the data changed since the champion.",
    )


def retrain(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML).")],
    overrides: Overrides = None,
) -> None:
    """Run the retraining flow once now: skip when the champion saw this data."""
    overrides = overrides or []
    settings = _checked_settings(config, overrides)
    from flows.runtime_env import configure_environment

    configure_environment(settings.workdir)
    from flows.retrain import retrain_flow

    result = retrain_flow(str(config.resolve()), overrides)
    brief = {key: value for key, value in result.items() if key != "summary"}
    if result.get("summary"):  # a retrain ran: its summary.json content
        from tasks.summary import RunSummary

        summary = RunSummary.model_validate(result["summary"])
        brief |= {"model_version": summary.model_version, "alias": summary.alias}
    typer.echo(json.dumps(brief, sort_keys=True))


def register(app: typer.Typer) -> None:
    for command in (promote, rollback, lineage, schedule, retrain):
        app.command()(command)
