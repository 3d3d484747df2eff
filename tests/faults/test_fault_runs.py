"""Runs that overlap or are killed: real CLI processes, real signals, then the next run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.suite import (
    MODEL,
    RUN_TIMEOUT,
    TINY,
    Suite,
    client,
    orphans,
    output,
    run_statuses,
    versions,
    wait_for,
)

pytestmark = pytest.mark.faults


@pytest.mark.fault_report("concurrent_runs_same_workdir", "7")
def test_concurrent_runs_same_workdir(suite, verdict):
    workdir, _ = suite.fresh("concurrent_runs_same_workdir")
    store = workdir / "store"  # a fresh store: the teacher must be trained once, not twice
    args = ("run", str(TINY), f"workdir={workdir}", f"store={store}")
    logs = [workdir.parent / f"{workdir.name}-{i}.log" for i in (1, 2)]
    processes = [suite.popen(log, *args, own_prefect=True) for log in logs]
    codes = [process.wait(timeout=2 * RUN_TIMEOUT) for process in processes]
    text = "\n".join(log.read_text() for log in logs)
    teachers = [
        p for p in (store / "teacher").iterdir() if p.is_dir() and not p.name.startswith(".")
    ]
    waited = "in use by" in text
    registered = versions(workdir)
    migration = "database is locked" in text.lower() or (
        "migration" in text.lower() and "error" in text.lower()
    )
    verdict(
        detected=waited,
        recovered=codes == [0, 0] and len(teachers) == 1 and len(registered) == 1 and not migration,
        message=f"exit codes {codes}; second waited: {waited}; teacher folders {len(teachers)}; "
        f"versions {len(registered)}; Prefect database errors: {migration}",
    )


def kill_when(suite: Suite, name: str, ready: Callable[[Path, Path], bool], sig: int, copy: bool):
    """A run on a fresh workdir, sent `sig` once `ready(workdir, store)`; whether it was."""
    workdir, store = suite.fresh(name, copy_store=copy)
    if copy:  # the student (and what follows) must be built, so there is a stage to kill
        for stage in ("student", "evaluation", "export", "quantize"):
            shutil.rmtree(store / stage, ignore_errors=True)
    args = ("run", str(TINY), f"workdir={workdir}", f"store={store}")
    process = suite.popen(workdir.parent / f"{name}.log", *args)
    reached = wait_for(lambda: ready(workdir, store) or process.poll() is not None, RUN_TIMEOUT)
    alive = process.poll() is None
    os.kill(process.pid, sig)
    process.wait(timeout=120)
    assert reached and alive, "the run ended before the moment to kill it"
    time.sleep(1)
    return workdir, store


def building_student(workdir: Path, store: Path) -> bool:
    return any((store / "student").glob(".tmp-*"))


@pytest.mark.fault_report("kill9_mid_stage", "8")
def test_kill9_mid_stage(suite, verdict):
    workdir, store = kill_when(suite, "kill9_mid_stage", building_student, signal.SIGKILL, True)
    left_tmp = list((store / "student").glob(".tmp-*"))
    servers = orphans(suite.prefect_home)
    stuck = [rid for rid, status in run_statuses(workdir).items() if status == "RUNNING"]
    result = suite.run(workdir, store=store)
    text = output(result)
    statuses = run_statuses(workdir)
    after = dict(
        tmp_gone=not list((store / "student").glob(".tmp-*")),
        server_gone=not orphans(suite.prefect_home),
        run_killed=all(statuses.get(rid) == "KILLED" for rid in stuck),
        rerun_ok=result.returncode == 0,
    )
    verdict(
        detected=bool(left_tmp or servers or stuck) and "KILLED" in text and "removed" in text,
        recovered=all(after.values()),
        message=f"after kill -9: {len(left_tmp)} tmp folders, orphaned Prefect servers "
        f"{servers}, RUNNING runs {len(stuck)}; next run: {after}",
    )


@pytest.mark.fault_report("kill9_after_registration", "8, 25.3")
def test_kill9_after_registration(suite, verdict):
    def registered(workdir: Path, store: Path) -> bool:
        return (workdir / ".ungated-bundle" / "manifest.json").is_file()

    workdir, _ = kill_when(suite, "kill9_after_registration", registered, signal.SIGKILL, False)
    ungated_current = (workdir / "bundle").exists() or (workdir / "summary.json").exists()
    killed_versions = [v.version for v in versions(workdir)]
    result = suite.run(workdir)
    statuses = run_statuses(workdir)
    ok = result.returncode == 0
    summary = json.loads((workdir / "summary.json").read_text()) if ok else {}
    bundle = json.loads((workdir / "bundle" / "manifest.json").read_text()) if ok else {}
    after = dict(
        rerun_ok=ok,
        no_running=all(status != "RUNNING" for status in statuses.values()),
        killed_marked="KILLED" in statuses.values(),
        bundle_current=bundle.get("mlflow_run_id") == summary.get("mlflow_run_id"),
        same_version=[v.version for v in versions(workdir)] == killed_versions,
        # The version the killed run registered is judged by the rerun, not left "not judged".
        judged=all(
            client(workdir).get_model_version(MODEL, v.version).tags.get("promotion.decision")
            in ("promoted", "rejected")
            for v in versions(workdir)
        ),
    )
    verdict(
        detected=not ungated_current and "KILLED" in output(result),
        recovered=all(after.values()),
        message=f"after kill -9: bundle/summary present: {ungated_current}, versions "
        f"{killed_versions}; next run: {after}",
    )


@pytest.mark.fault_report("sigint_mid_run", "8")
def test_sigint_mid_run(suite, verdict):
    workdir, store = kill_when(suite, "sigint_mid_run", building_student, signal.SIGINT, True)
    time.sleep(1)
    statuses = run_statuses(workdir)
    verdict(
        detected=bool(statuses) and all(s in ("KILLED", "FAILED") for s in statuses.values()),
        recovered=not list((store / "student").glob(".tmp-*")) and not orphans(suite.prefect_home),
        message=f"MLflow runs after Ctrl-C: {sorted(statuses.values())}",
    )
