"""Damaged stage folders in a copy of the prepared store, then a rerun on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.files import file_sha256
from tests.faults.suite import output

pytestmark = pytest.mark.faults


def zero_tail(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-8:] = bytes(8)
    path.write_bytes(bytes(blob))


def halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def max_int_tail(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-4:] = b"\xff\xff\xff\x7f"
    path.write_bytes(bytes(blob))


def fault(name: str, item: str, stage: str, file: str, damage):
    return pytest.param(stage, file, damage, id=name, marks=pytest.mark.fault_report(name, item))


@pytest.mark.parametrize(
    ("stage", "file", "damage"),
    [
        fault("teacher_weights_overwritten", "6", "teacher", "model.safetensors", zero_tail),
        fault("teacher_weights_truncated", "6, 13", "teacher", "model.safetensors", halve),
        fault("logit_cache_corrupt", "6, 13", "logit_cache", "train_logits.npy", max_int_tail),
        fault("stage_file_deleted", "6", "export", "model.onnx", Path.unlink),
    ],
)
def test_a_damaged_stage_is_named_set_aside_and_rebuilt(
    suite, verdict, request, stage, file, damage
):
    workdir, store = suite.fresh(request.node.callspec.id, copy_store=True)
    damage(suite.stage_dir(store, stage) / file)
    what = f"{stage}/{file}: {damage.__name__}"
    result = suite.run(workdir, store=store)
    text = output(result)
    if result.returncode != 0:
        verdict(
            detected="does not match" in text,
            recovered=False,
            message=f"{what}; run failed: {text[-300:]}",
        )
    summary = json.loads((workdir / "summary.json").read_text())
    rebuilt = summary["stages"][stage]["reused"] is False
    weights = suite.stage_dir(store, "teacher") / "model.safetensors"
    weights_ok = file_sha256(weights) == summary["teacher_sha256"]
    aside = list((store / stage).glob(".corrupt-*"))
    warned = "does not match its manifest" in text
    verdict(
        detected=warned,
        recovered=rebuilt and weights_ok,
        data_lost=not aside,
        message=f"{what}; warning: {warned}; {stage} rebuilt: {rebuilt}; teacher_sha256 matches "
        f"the weights on disk: {weights_ok}; damaged folder kept aside: {bool(aside)}",
    )


@pytest.mark.fault_report("stage_manifest_garbage", "6")
def test_stage_manifest_garbage(suite, verdict):
    workdir, store = suite.fresh("stage_manifest_garbage", copy_store=True)
    (suite.stage_dir(store, "student") / "manifest.json").write_text("{not json")
    result = suite.run(workdir, store=store)
    ok = result.returncode == 0
    summary = json.loads((workdir / "summary.json").read_text()) if ok else {}
    rebuilt = ok and summary["stages"]["student"]["reused"] is False
    verdict(
        detected="unreadable manifest" in output(result) or rebuilt,
        recovered=rebuilt,
        message=f"student manifest.json is not JSON; rebuilt: {rebuilt}",
    )
