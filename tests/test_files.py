"""The one atomic writer (distill/files.py; its file_sha256 is checked in test_store.py)."""

import pytest

from distill.files import atomic_path, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"run": 1})
    with pytest.raises(RuntimeError, match="killed"), atomic_path(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "run": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "config.resolved.yaml"
    write_text_atomic(path, "old: 1\n")
    write_text_atomic(path, "name: tiny é\n")
    assert path.read_text(encoding="utf-8") == "name: tiny é\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.resolved.yaml"]
