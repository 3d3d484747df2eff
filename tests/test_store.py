"""Content-addressed stage folders: built once, reused after, never left half-written."""

import json

import pytest

from distill.store import MANIFEST, run_stage, stable_hash


def test_stage_is_built_once_then_reused(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("hello")
        return {"answer": 42}

    first = run_stage(tmp_path, "demo", "k1", build)
    second = run_stage(tmp_path, "demo", "k1", build)
    assert len(calls) == 1
    assert not first.reused and second.reused
    assert first.path == second.path == tmp_path / "demo" / "k1"
    assert second.manifest["answer"] == 42
    assert (second.path / "out.txt").read_text() == "hello"
    assert json.loads((first.path / MANIFEST).read_text())["stage"] == "demo"


def test_a_failing_stage_leaves_nothing_behind(tmp_path):
    def build(folder):
        (folder / "partial.bin").write_bytes(b"x" * 10)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_stage(tmp_path, "demo", "k1", build)
    assert list((tmp_path / "demo").iterdir()) == []


def test_a_folder_without_manifest_is_rebuilt(tmp_path):
    debris = tmp_path / "demo" / "k1"
    debris.mkdir(parents=True)
    (debris / "stale.txt").write_text("old")
    artifact = run_stage(tmp_path, "demo", "k1", lambda folder: {})
    assert not artifact.reused
    assert not (artifact.path / "stale.txt").exists()


def test_stable_hash_is_order_independent_for_mappings():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
