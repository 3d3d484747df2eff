"""Content-addressed stage folders: built once, reused after, never left half-written or misread."""

import json
import logging
import threading
import time

import pytest

from distill.store import MANIFEST, StageManifest, file_sha256, run_stage, stable_hash


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
    assert on_disk == {"stage": "demo", "key": "k1", "answer": 42}


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
