"""Content-addressed stage folders: built once, reused after, never left half-written or misread."""

import json
import logging
import threading
import time

import pytest

from distill.store import (
    MANIFEST,
    StageManifest,
    file_sha256,
    run_stage,
    stable_hash,
    sweep_stale_builds,
)


class DemoManifest(StageManifest):
    answer: int


class OtherManifest(StageManifest):
    answer: int
    unit: str


def test_stage_is_built_once_then_reused(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("hello")
        return DemoManifest(answer=42)

    first = run_stage(tmp_path, "demo", "k1", build, DemoManifest)
    second = run_stage(tmp_path, "demo", "k1", build, DemoManifest)
    assert len(calls) == 1
    assert not first.reused and second.reused
    assert first.path == second.path == tmp_path / "demo" / "k1"
    assert second.manifest == DemoManifest(answer=42)
    assert (second.path / "out.txt").read_text() == "hello"
    on_disk = json.loads((first.path / MANIFEST).read_text())
    assert on_disk == {
        "stage": "demo",
        "key": "k1",
        "answer": 42,
        "_files": {"out.txt": {"bytes": 5, "sha256": file_sha256(first.path / "out.txt")}},
    }


def test_a_failing_stage_leaves_nothing_behind(tmp_path):
    def build(folder):
        (folder / "partial.bin").write_bytes(b"x" * 10)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_stage(tmp_path, "demo", "k1", build, DemoManifest)
    assert [p.name for p in (tmp_path / "demo").iterdir() if not p.name.endswith(".lock")] == []


def test_a_folder_without_manifest_is_rebuilt(tmp_path):
    debris = tmp_path / "demo" / "k1"
    debris.mkdir(parents=True)
    (debris / "stale.txt").write_text("old")
    artifact = run_stage(
        tmp_path, "demo", "k1", lambda folder: DemoManifest(answer=1), DemoManifest
    )
    assert not artifact.reused
    assert not (artifact.path / "stale.txt").exists()


def test_a_manifest_that_does_not_validate_is_rebuilt_with_a_warning(tmp_path, caplog):
    run_stage(tmp_path, "demo", "k1", lambda folder: DemoManifest(answer=1), DemoManifest)
    # The same folder read by a newer manifest model that needs a field the old one lacks.
    with caplog.at_level(logging.WARNING, logger="distill.store"):
        artifact = run_stage(
            tmp_path, "demo", "k1", lambda f: OtherManifest(answer=2, unit="s"), OtherManifest
        )
    assert not artifact.reused
    assert artifact.manifest == OtherManifest(answer=2, unit="s")
    assert str(tmp_path / "demo" / "k1") in caplog.text
    assert "OtherManifest" in caplog.text
    # ... and the rebuilt folder is reused from then on.
    again = run_stage(
        tmp_path, "demo", "k1", lambda f: OtherManifest(answer=3, unit="s"), OtherManifest
    )
    assert again.reused and again.manifest.answer == 2


def test_a_manifest_of_another_key_is_not_taken(tmp_path):
    first = run_stage(tmp_path, "demo", "k1", lambda folder: DemoManifest(answer=1), DemoManifest)
    moved = tmp_path / "demo" / "k2"
    first.path.rename(moved)
    artifact = run_stage(
        tmp_path, "demo", "k2", lambda folder: DemoManifest(answer=2), DemoManifest
    )
    assert not artifact.reused and artifact.manifest.answer == 2


def test_a_build_returning_the_wrong_manifest_type_fails(tmp_path):
    with pytest.raises(TypeError, match="DemoManifest"):
        run_stage(tmp_path, "demo", "k1", lambda folder: {"answer": 1}, DemoManifest)
    assert not (tmp_path / "demo" / "k1").exists()


def test_two_runs_building_one_key_at_once_build_it_once(tmp_path):
    calls = []

    def slow_build(folder):
        calls.append(folder)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one builds
        (folder / "out.txt").write_text("done")
        return DemoManifest(answer=len(calls))

    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                run_stage(tmp_path, "demo", "k1", slow_build, DemoManifest)
            )
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(artifact.reused for artifact in results) == [False, True]
    assert {artifact.manifest.answer for artifact in results} == {1}


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc" * 100_000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 100_000).hexdigest()


def test_stable_hash_is_order_independent_for_mappings():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def _weights_stage(tmp_path, payload: bytes):
    def build(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "weights.bin").write_bytes(payload)
        return DemoManifest(answer=len(payload))

    return run_stage(tmp_path, "demo", "k1", build, DemoManifest)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"B" * 100),  # same size, other bytes: only sha256 sees it
        lambda path: path.write_bytes(b"A" * 50),  # truncated
        lambda path: path.unlink(),  # deleted
    ],
    ids=["overwritten", "truncated", "deleted"],
)
def test_a_folder_whose_files_changed_is_moved_aside_and_rebuilt(tmp_path, caplog, damage):
    first = _weights_stage(tmp_path, b"A" * 100)
    damage(first.path / "sub" / "weights.bin")
    with caplog.at_level(logging.WARNING, logger="distill.store"):
        second = _weights_stage(tmp_path, b"A" * 100)
    assert not second.reused
    assert (second.path / "sub" / "weights.bin").read_bytes() == b"A" * 100
    assert str(first.path) in caplog.text and "sub/weights.bin" in caplog.text
    aside = list((tmp_path / "demo").glob(".corrupt-k1-*"))
    assert len(aside) == 1, "the damaged folder is kept aside, not silently deleted"
    assert _weights_stage(tmp_path, b"A" * 100).reused


def test_accept_can_reject_a_finished_folder(tmp_path, caplog):
    run_stage(tmp_path, "demo", "k1", lambda f: DemoManifest(answer=1), DemoManifest)
    with caplog.at_level(logging.WARNING, logger="distill.store"):
        again = run_stage(
            tmp_path,
            "demo",
            "k1",
            lambda f: DemoManifest(answer=2),
            DemoManifest,
            accept=lambda m: None if m.answer == 2 else "built from another upstream",
        )
    assert not again.reused and again.manifest.answer == 2
    assert "built from another upstream" in caplog.text


def test_a_killed_build_folder_is_removed_by_the_sweep_and_by_the_next_build(tmp_path):
    run_stage(tmp_path, "demo", "k1", lambda f: DemoManifest(answer=1), DemoManifest)
    stale_other = tmp_path / "demo" / ".tmp-k9-deadbeef"
    stale_other.mkdir()
    (stale_other / "half.bin").write_bytes(b"x")
    stale_same = tmp_path / "demo" / ".tmp-k2-deadbeef"
    stale_same.mkdir()
    # A build in progress holds its key's lock: its folder must survive the sweep.
    from filelock import FileLock

    live = tmp_path / "demo" / ".tmp-k3-cafecafe"
    live.mkdir()
    with FileLock(tmp_path / "demo" / ".k3.lock"):
        removed = sweep_stale_builds(tmp_path)
    assert sorted(p.name for p in removed) == [".tmp-k2-deadbeef", ".tmp-k9-deadbeef"]
    assert live.exists() and not stale_other.exists()
    live.rename(tmp_path / "demo" / ".tmp-k1-cafecafe")  # debris of the key about to be built
    (tmp_path / "demo" / "k1" / MANIFEST).unlink()
    run_stage(tmp_path, "demo", "k1", lambda f: DemoManifest(answer=1), DemoManifest)
    assert not list((tmp_path / "demo").glob(".tmp-*"))


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        OSError("1000000 requested and 131056 written"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
    ids=["errno", "numpy-style", "safetensors-style"],
)
def test_a_full_disk_is_named_and_leaves_nothing_half_written(tmp_path, monkeypatch, error):
    import shutil as shell

    from distill import store as store_module
    from distill.store import StoreFullError

    if getattr(error, "errno", 28) is None:  # a writer that does not say why: free space tells
        usage = shell.disk_usage(tmp_path)._replace(free=1000)
        monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: usage)

    def build(folder):
        (folder / "weights.bin").write_bytes(b"x" * 100)
        raise error

    with pytest.raises(
        StoreFullError, match=rf"no space left on the disk of {tmp_path / 'teacher'}"
    ):
        run_stage(tmp_path, "teacher", "k1", build, DemoManifest)
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir() if p.is_dir()) == []


def test_bad_data_on_a_nearly_full_disk_is_still_bad_data(tmp_path, monkeypatch):
    import shutil as shell

    from distill import store as store_module

    usage = shell.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: usage)

    def build(folder):
        raise ValueError("column 'text' is empty")

    with pytest.raises(ValueError, match="column 'text' is empty"):
        run_stage(tmp_path, "data", "k1", build, DemoManifest)


def test_an_error_that_is_not_a_full_disk_is_raised_as_it_is(tmp_path):
    def build(folder):
        raise OSError("permission denied somewhere")

    with pytest.raises(OSError, match="permission denied somewhere") as raised:
        run_stage(tmp_path, "teacher", "k1", build, DemoManifest)
    assert type(raised.value) is OSError
