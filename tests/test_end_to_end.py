"""The whole pipeline on the tiny config, as a user runs it: real embedded Prefect, real SQLite
MLflow, real ONNX Runtime. Slow (a minute or two): three runs of `distillery run`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.conftest import REPO, TINY_CONFIG

STAGES = ["data", "teacher", "logit_cache", "student", "evaluation", "export", "quantize"]
MODEL = "distillery-tiny-student"

pytestmark = pytest.mark.slow


def run_pipeline(workdir, *overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            str(TINY_CONFIG),
            f"workdir={workdir}",
            *overrides,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((workdir / "summary.json").read_text()), result.stdout + result.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    first, first_out = run_pipeline(workdir)
    second, _ = run_pipeline(workdir)
    third, _ = run_pipeline(workdir, "student.temperature=3.0")
    return workdir, first, first_out, second, third


def test_every_stage_leaves_a_manifest(runs):
    workdir, first, *_ = runs
    for stage in STAGES:
        info = first["stages"][stage]
        assert info["reused"] is False
        assert (workdir / stage / info["key"] / "manifest.json").is_file()
        assert info["peak_rss_mb"] > 100  # the process's peak in the stage: torch alone is more
    assert not list(workdir.glob("*/.tmp-*")), "no half-written stage folder may remain"


def test_the_run_log_shows_no_weight_loading_bars(runs):
    _, _, first_out, *_ = runs
    assert "Loading weights" not in first_out  # models load often; the stages log themselves
    assert "Writing model shards" not in first_out


def test_summary_has_the_promised_numbers(runs):
    _, first, first_out, *_ = runs
    for key in (
        "teacher_accuracy",
        "student_accuracy",
        "retention",
        "teacher_gap",
        "teacher_clearly_stronger",
        "int8_accuracy",
        "teacher_params",
        "student_params",
        "onnx_fp32_bytes",
        "onnx_int8_bytes",
        "mlflow_run_id",
        "registered_model",
        "model_version",
    ):
        assert key in first, key
    assert first["student_params"] < first["teacher_params"]
    assert first["onnx_int8_bytes"] < first["onnx_fp32_bytes"]
    assert first["retention"] == pytest.approx(
        first["student_accuracy"] / first["teacher_accuracy"]
    )
    assert "retention" in first_out and first["alias"] in first_out


def test_unchanged_rerun_reuses_every_stage(runs):
    _, first, _, second, _ = runs
    assert all(second["stages"][stage]["reused"] for stage in STAGES)
    assert {s: i["key"] for s, i in second["stages"].items()} == {
        s: i["key"] for s, i in first["stages"].items()
    }
    assert second["mlflow_run_id"] != first["mlflow_run_id"]


def test_student_only_change_reuses_data_teacher_and_cache(runs):
    _, first, _, _, third = runs
    for stage in ("data", "teacher", "logit_cache"):
        assert third["stages"][stage]["reused"], stage
        assert third["stages"][stage]["key"] == first["stages"][stage]["key"]
    assert not third["stages"]["student"]["reused"]


def test_registry_has_a_challenger_that_loads_and_predicts(runs):
    import mlflow
    from mlflow import MlflowClient

    workdir, first, *_, third = runs
    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert str(challenger.version) == third["model_version"]
    assert challenger.tags["data_fingerprint"] == first["data_fingerprint"]
    assert challenger.tags["teacher_sha256"] == first["teacher_sha256"]
    assert challenger.tags["run_id"] == third["mlflow_run_id"]

    mlflow.set_tracking_uri(uri)  # also exports MLFLOW_TRACKING_URI (conftest restores it)
    mlflow.set_registry_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@challenger")
    finally:  # no later test may inherit this store through mlflow's globals
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    # The graph reads the ids of the (trimmed) tokenizer in its run's bundle, not the hub one's.
    tokenizer = Tokenizer.from_file(
        mlflow.artifacts.download_artifacts(
            run_id=challenger.run_id, artifact_path="bundle/tokenizer.json", tracking_uri=uri
        )
    )
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(["a gorgeous, witty film", "tedious"])
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    assert feeds["input_ids"].max() < tokenizer.get_vocab_size() < 30522
    logits = model.predict(feeds)["logits"]
    assert logits.shape == (2, 2) and np.isfinite(logits).all()


def test_mlflow_run_has_config_curves_metrics_and_artifacts(runs):
    from mlflow import MlflowClient

    workdir, first, *_ = runs
    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["student.alpha"] == "0.5"
    assert run.data.metrics["evaluation/retention"] == pytest.approx(first["retention"])
    curve = client.get_metric_history(run.info.run_id, "student/train_loss")
    assert len(curve) >= 2 and len({m.step for m in curve}) == len(curve)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "manifests", "evaluation", "export", "quantize", "summary.json"} <= names
