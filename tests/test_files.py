"""The one file sha256 and the one atomic writer (distill/files.py)."""

import hashlib

import pytest

from distill.files import atomic_path, file_sha256, write_json_atomic, write_text_atomic


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "weights.bin"
    content = bytes(range(256)) * 5000  # larger than one read chunk
    path.write_bytes(content)
    assert file_sha256(path) == hashlib.sha256(content).hexdigest()


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
