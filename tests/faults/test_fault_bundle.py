"""The edge bundle of the base run, tampered with or packed into hostile archives, and bad input
files for `distillery predict`. The server's faults are rows of tests/test_serve.py."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.faults.suite import clean_error, output

pytestmark = pytest.mark.faults

BOMB_BYTES = 200 << 20  # 200 MB of zeros: about 1 MB packed


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def member(name: str, size: int = 5, link: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    if link is not None:
        info.type, info.linkname, info.size = tarfile.SYMTYPE, link, 0
    return info


def fault(name: str, item: str, info: tarfile.TarInfo, words: tuple[str, ...]):
    return pytest.param(info, words, id=name, marks=pytest.mark.fault_report(name, item))


@pytest.mark.parametrize(
    ("info", "words"),
    [
        fault("tar_bomb", "16", member("bundle/model.onnx", BOMB_BYTES), ("unpacks to more than",)),
        fault("path_traversal_member", "-", member("bundle/../../escaped.txt"), ("escapes",)),
        fault("symlink_member", "-", member("bundle/model.onnx", link="/etc/passwd"), ("link",)),
    ],
)
def test_a_hostile_archive_is_refused_before_anything_is_written(
    suite, verdict, request, info, words
):
    workdir, _ = suite.fresh(request.node.callspec.id)
    archive = workdir / "bundle.tar.gz"
    data = Zeros(info.size) if info.isfile() else None
    with (
        gzip.open(archive, "wb", compresslevel=1) as raw,
        tarfile.open(fileobj=raw, mode="w") as tar,
    ):
        tar.addfile(info, data)
    free_before = shutil.disk_usage(workdir).free
    ok, line = clean_error(suite.cli("selftest", archive, timeout=180), *words)
    written = (workdir / "escaped.txt").exists() or (
        shutil.disk_usage(workdir).free < free_before - (100 << 20)
    )
    verdict(
        detected=ok,
        recovered=ok and not written,
        data_lost=written,
        message=f"{line} (archive {archive.stat().st_size:,} bytes, member {info.size:,} bytes)",
    )


@pytest.mark.fault_report("tampered_model_file", "-")
def test_tampered_model_file(suite, verdict):
    workdir, _ = suite.fresh("tampered_model_file")
    bundle = shutil.copytree(suite.base / "bundle", workdir / "bundle")
    model = bundle / "onnx" / "model_quantized.onnx"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    model.write_bytes(bytes(blob))
    ok, line = clean_error(suite.cli("selftest", bundle, timeout=120), "model_quantized.onnx")
    verdict(detected=ok, recovered=ok, message=line)


@pytest.mark.fault_report("predict_latin1_input", "13")
def test_predict_latin1_input(suite, verdict):
    workdir, _ = suite.fresh("predict_latin1_input")
    path = workdir / "in.jsonl"
    path.write_bytes('{"text": "un film très réussi"}\n'.encode("latin-1"))
    bundle = suite.base / "bundle"
    ok, line = clean_error(suite.cli("predict", bundle, "--input", path, timeout=120), "encoding")
    fixed = suite.cli("predict", bundle, "--input", path, "--encoding", "latin-1", timeout=120)
    verdict(detected=ok, recovered=fixed.returncode == 0, message=line)


@pytest.mark.fault_report("lone_surrogate_predict", "25.4")
def test_lone_surrogate_predict(suite, verdict):
    workdir, _ = suite.fresh("lone_surrogate_predict")
    path: Path = workdir / "s.jsonl"
    path.write_text('{"text":"ok"}\n{"text":"\\ud800"}\n')
    result = suite.cli("predict", suite.base / "bundle", "--input", path, timeout=120)
    try:
        first, second = (json.loads(line) for line in result.stdout.splitlines())
    except ValueError:
        first, second = {}, {"error": f"exit {result.returncode}: {output(result)[-200:]}"}
    verdict(
        detected="surrogate" in second.get("error", ""),
        recovered=result.returncode == 0 and "label" in first,
        message=f"exit {result.returncode}; line 1 {first.get('label')}, line 2 {second}"[:300],
    )
