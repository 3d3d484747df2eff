"""`distillery gc` on a tiny store with two student variants, against real SQLite MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from deploy.chain import run_pipeline_stages
from deploy.stage_table import COLLECTABLE
from distill.chain import run_student
from tasks.tracking import MlflowTracker, sqlite_uri
from tests.conftest import REPO


def _tag_stages(tracker: MlflowTracker, artifacts) -> str:
    """A run that used these stages, tagged as the flow tags it (tasks.stages.record_stage)."""
    run_id = tracker.start_run("run", {})
    tracker.set_tags({f"stage.{a.stage}.key": a.key for a in artifacts})
    tracker.end_run(True)
    return run_id


def _gc(workdir, *args):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "gc", "--workdir", str(workdir), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def two_variants(tiny_config, tiny_stages, tmp_path):
    """One full chain (variant A) and a second student (variant B) on the same cache."""
    # gc deletes folders: it works on a copy of the session's tiny stages, which the chain then
    # finds by their keys instead of training them again.
    for artifact in tiny_stages.by_stage().values():
        shutil.copytree(artifact.path, tmp_path / artifact.path.relative_to(tiny_config.store_dir))
    config = tiny_config.model_copy(update={"workdir": tmp_path, "store": None})
    first = run_pipeline_stages(config, tmp_path)
    assert all(artifact.reused for artifact in first.by_stage().values())
    other = config.student.model_copy(update={"temperature": 4.0})
    second = run_student(other, tmp_path, first)
    assert second.key != first.student.key
    tracker = MlflowTracker(sqlite_uri(tmp_path), "exp", tmp_path / "mlartifacts")
    return tmp_path, first, second, tracker


def test_gc_removes_what_no_kept_run_or_version_uses(two_variants):
    workdir, first, second, tracker = two_variants
    old_run = _tag_stages(tracker, first.by_stage().values())  # variant A, the older run
    _tag_stages(tracker, [first.data, first.teacher, first.cache, second])  # newest run: B
    tracker.client.create_registered_model("m")
    tracker.client.create_model_version("m", f"runs:/{old_run}/model", run_id=old_run)
    corrupt = workdir / "student" / ".corrupt-x-1"
    corrupt.mkdir()
    (corrupt / "w.bin").write_bytes(b"x" * 10)
    stale = workdir / "export" / ".tmp-abc-12345678"
    stale.mkdir()
    a_only = (first.student, first.evaluation, first.export, first.quantize)

    # A registered version keeps its run's stages whatever its age; debris always goes.
    kept = _gc(workdir, "--keep-runs", "1", "--keep-days", "0")
    assert kept.returncode == 0, kept.stderr
    assert all(artifact.path.exists() for artifact in a_only)
    assert not corrupt.exists() and not stale.exists()

    tracker.client.delete_model_version("m", "1")
    dry = _gc(workdir, "--keep-runs", "1", "--keep-days", "0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert str(first.student.path) in dry.stdout and first.student.path.exists()

    done = _gc(workdir, "--keep-runs", "1", "--keep-days", "0")
    assert done.returncode == 0, done.stderr
    # Variant A's student and what only its run used went; B and its upstream stayed.
    for gone in a_only:
        assert not gone.path.exists() and str(gone.path) in done.stdout
    for stays in (first.data, first.teacher, first.cache, second):
        assert stays.path.exists(), stays.stage
    freed = sum(
        int(line.split("(")[1].split(" ")[0].replace(",", ""))
        for line in done.stdout.splitlines()[:-1]
    )
    assert freed > 0 and f"{freed:,} bytes" in done.stdout.splitlines()[-1]

    # Recent runs are kept by default (the last 5, and a week).
    assert _gc(workdir, "--dry-run").stdout.splitlines()[-1].startswith("would remove 0 folders")


def test_gc_refuses_while_a_run_holds_the_workdir(tmp_path):
    from flows.workdir import workdir_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom flows.workdir import workdir_lock\n"
            "with workdir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        holder.stdout.readline()
        result = _gc(tmp_path)
        assert result.returncode == 2 and "in use" in result.stderr
        assert str(holder.pid) in result.stderr
    finally:
        holder.kill()
        holder.wait()
    with workdir_lock(tmp_path, timeout=0):
        pass


def test_every_stage_the_code_builds_is_a_folder_gc_knows():
    """A stage name passed to run_stage / fan_out / stage= that gc does not list would pile up
    in the store for ever (logit shards, student_data and student_augment once did)."""
    import re

    built = set()
    pattern = re.compile(
        r"run_stage\(\s*[^,]+,\s*\"(\w+)\"|fan_out\(\s*\"(\w+)\"|stage=\"(\w+)\"|"
        r"_STAGE = \"(\w+)\"|runner\(\s*\"(\w+)\""
    )
    for package in ("distill", "deploy", "tasks", "flows"):
        for path in (REPO / package).glob("*.py"):
            for match in pattern.finditer(path.read_text()):
                built.add(next(group for group in match.groups() if group))
    assert {"data", "logit_shard", "student_augment", "student_data", "quantize"} <= built
    assert {"logit_shard", "student_augment", "student_data"} <= set(COLLECTABLE)
    assert built <= set(COLLECTABLE), built - set(COLLECTABLE)


@pytest.mark.parametrize("stage", COLLECTABLE)
def test_gc_collects_unused_folders_of_every_stage(tmp_path, stage):
    """Every folder kind of the stage table, logit shards, student_data and student_augment
    included (they once piled up for ever)."""
    from flows.gc import plan

    folder = tmp_path / stage / "0123abcd"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "rows.npy").write_bytes(b"x" * 100)
    (removal,) = plan(tmp_path, keep=set())
    assert removal.path == folder and removal.bytes == 102
    assert plan(tmp_path, keep={(stage, "0123abcd")}) == []


def test_gc_keeps_the_stages_a_summary_names_and_skips_one_it_cannot_read(tmp_path):
    import json

    from flows.gc import keys_of_summaries

    use = {"seconds": 1.0, "reused": False, "key": "abc", "path": "/store/student/abc"}
    (tmp_path / "summary.json").write_text(json.dumps({"stages": {"student": use}, "alias": "x"}))
    (tmp_path / "summary.previous.json").write_text("{not json")
    assert keys_of_summaries(tmp_path) == {("student", "abc")}
