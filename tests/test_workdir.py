"""One run per workdir, and recovery after a killed one: real processes, real SIGKILL, real
SQLite MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.store import sweep_stale_builds
from flows.workdir import (
    HOLDER_FILE,
    WorkdirBusy,
    recover_workdir,
    stop_orphaned_prefect_servers,
    workdir_lock,
)
from tests.conftest import REPO

SERVER_APP = "prefect.server.api.server:create_app"  # what identifies Prefect's embedded server

HOLD = """
import sys, time
from flows.workdir import workdir_lock
with workdir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

BUILD_FOREVER = """
import sys, time
from distill.store import StageManifest, run_stage

class M(StageManifest):
    n: int

def build(folder):
    (folder / "half.bin").write_bytes(b"x" * 1000)
    print("building", flush=True)
    time.sleep(600)
    return M(n=1)

run_stage(sys.argv[1], "teacher", "k1", build, M)
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    process.stdout.readline()  # "held" / "building": the child is where we want it
    return process


def test_a_second_run_is_refused_or_waits_naming_the_holder(tmp_path):
    holder = _python(HOLD, str(tmp_path), "3")
    held_at = time.monotonic()
    try:
        with pytest.raises(WorkdirBusy, match=f"pid {holder.pid}"), workdir_lock(tmp_path, 0):
            pass
        said = []
        with workdir_lock(tmp_path, say=said.append) as taken:
            assert taken
            assert time.monotonic() - held_at > 2.5, "taken only once the holder let go"
        assert len(said) == 1 and "waiting" in said[0] and str(holder.pid) in said[0]
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_one_process_and_freed_by_sigkill(tmp_path):
    with workdir_lock(tmp_path) as outer:
        with workdir_lock(tmp_path, timeout=0) as inner:
            assert outer and not inner
        assert (tmp_path / HOLDER_FILE).is_file()
    holder = _python(HOLD, str(tmp_path), "600")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with workdir_lock(tmp_path, timeout=0) as taken:  # the OS released the killed holder's lock
        assert taken


def test_a_stage_killed_mid_build_leaves_a_tmp_folder_the_next_run_removes(tmp_path):
    builder = _python(BUILD_FOREVER, str(tmp_path))
    tmp = list((tmp_path / "teacher").glob(".tmp-k1-*"))
    assert len(tmp) == 1 and (tmp[0] / "half.bin").is_file()
    # While the build runs, its folder is not debris.
    assert sweep_stale_builds(tmp_path) == []
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait()
    said = []
    with workdir_lock(tmp_path):
        recover_workdir(tmp_path, tmp_path, said.append)
    assert not tmp[0].exists()
    assert any(str(tmp[0]) in line for line in said)
    assert not (tmp_path / "teacher" / "k1").exists(), "a killed build never looks finished"


def test_an_orphaned_embedded_prefect_server_is_stopped(tmp_path):
    home = tmp_path / ".prefect"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT__SERVER_EPHEMERAL": "1"}
    # A stand-in with the server's command line, started through a shell that exits at once:
    # its parent is gone, as after `kill -9` of the CLI.
    stand_in = (
        f"{sys.executable} -c 'import time; time.sleep(120)' "
        f"{SERVER_APP} > /dev/null 2>&1 & echo $!"
    )
    pid = int(subprocess.run(["sh", "-c", stand_in], env=env, capture_output=True).stdout)
    other = subprocess.Popen(  # another workdir's server: never touched
        [
            sys.executable,
            "-c",
            "import time; time.sleep(120)",
            "prefect.server.api.server:create_app",
        ],
        env={**env, "PREFECT_HOME": str(tmp_path / "elsewhere")},
    )
    try:
        time.sleep(0.5)
        assert stop_orphaned_prefect_servers(home) == [pid]
        import psutil

        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def test_a_killed_runs_mlflow_run_is_marked_killed_and_its_version_not_judged(tmp_path):
    from mlflow.entities import RunStatus

    from tasks.recovery import KILLED_TAG, close_abandoned_runs, run_identity_tags
    from tasks.tracking import MlflowTracker, sqlite_uri

    workdir = tmp_path / "w"
    workdir.mkdir()
    tracker = MlflowTracker(sqlite_uri(workdir), "exp", workdir / "mlartifacts")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed_tags = run_identity_tags(workdir) | {"distillery.pid": str(dead.pid)}
    killed = tracker.start_run("killed", killed_tags)
    tracker.client.create_registered_model("m")
    tracker.client.create_model_version("m", f"runs:/{killed}/model", run_id=killed)
    live = MlflowTracker(sqlite_uri(workdir), "exp", workdir / "mlartifacts")
    alive = live.start_run("alive", run_identity_tags(workdir))  # this process: alive
    elsewhere = live.client.create_run(
        tracker.experiment_id, tags=killed_tags | {"distillery.workdir": str(tmp_path / "other")}
    ).info.run_id  # another workdir's run: not ours to close

    assert close_abandoned_runs(tracker.client, workdir) == [killed]
    client = tracker.client
    assert client.get_run(killed).info.status == RunStatus.to_string(RunStatus.KILLED)
    assert KILLED_TAG in client.get_run(killed).data.tags
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    tags = client.get_model_version("m", "1").tags
    assert tags["promotion.decision"] == "not judged" and killed in tags["promotion.reason"]
    assert close_abandoned_runs(client, workdir) == []  # idempotent


def test_workdir_debris_is_removed_but_the_bundle_is_kept(tmp_path):
    for name in (".ungated-bundle", ".tmp-bundle-1234", ".old-bundle-99", "bundle"):
        (tmp_path / name).mkdir()
    (tmp_path / ".summary.json.abc.tmp").write_text("{")
    said = []
    with workdir_lock(tmp_path):
        recover_workdir(tmp_path, tmp_path, said.append)
    assert sorted(
        p.name for p in Path(tmp_path).iterdir() if not p.name.startswith(".distillery")
    ) == ["bundle"]
    assert len(said) == 4


def test_a_workdir_that_cannot_be_created_is_named(tmp_path):
    from flows.workdir import WorkdirError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    wanted = f"workdir {blocker / 'w'} cannot be used"
    with pytest.raises(WorkdirError, match=wanted), workdir_lock(blocker / "w"):
        pass
