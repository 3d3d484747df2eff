"""MLflow runs of a killed pipeline: found and closed at the next run on the same workdir.

A pipeline run tags its MLflow run with its workdir, host and pid. A run killed with SIGKILL
cannot end its MLflow run, which stays RUNNING. The next run on that workdir holds the workdir
lock, so no other pipeline of that workdir is alive: a RUNNING run of the workdir whose process
is gone is marked KILLED, and a model version it registered without being gated is tagged so
(it stays `challenger`; the gates never judged it).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunStatus, ViewType

NOT_JUDGED = "not judged"  # the registry's word for a version no gate has judged yet

WORKDIR_TAG = "distillery.workdir"
HOST_TAG = "distillery.host"
PID_TAG = "distillery.pid"
KILLED_TAG = "distillery.killed"


def run_identity_tags(workdir: Path) -> dict[str, str]:
    """Tags that let a later run find this one if it is killed."""
    return {
        WORKDIR_TAG: str(Path(workdir).resolve()),
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
    }


def _alive_here(tags: dict[str, str]) -> bool:
    """Whether the process that started a run is still alive (only knowable on its host)."""
    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    import psutil

    return psutil.pid_exists(pid)


def close_abandoned_runs(client: MlflowClient, workdir: Path) -> list[str]:
    """Mark KILLED every RUNNING run of `workdir` whose process is gone; their run ids.

    Call with the workdir lock held, before this run's own MLflow run starts."""
    workdir_value = str(Path(workdir).resolve()).replace("'", "\\'")
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    runs = client.search_runs(
        experiments,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{WORKDIR_TAG}` = '{workdir_value}'",
        run_view_type=ViewType.ALL,
        max_results=1000,
    )
    closed = []
    for run in runs:
        if _alive_here(run.data.tags):
            continue
        client.set_tag(run.info.run_id, KILLED_TAG, "its process ended without closing the run")
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        _mark_ungated_versions(client, run.info.run_id)
        closed.append(run.info.run_id)
    return closed


def _mark_ungated_versions(client: MlflowClient, run_id: str) -> None:
    """A version registered by a killed run before its gates ran says so in its tags."""
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        tags = client.get_model_version(version.name, version.version).tags
        if "promotion.decision" in tags:
            continue
        client.set_model_version_tag(
            version.name, version.version, "promotion.decision", NOT_JUDGED
        )
        client.set_model_version_tag(
            version.name,
            version.version,
            "promotion.reason",
            f"run {run_id} was killed before its gates ran; the next run of the same model "
            "judges it",
        )
