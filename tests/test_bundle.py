"""The edge bundle: the files it holds, a manifest that tells the truth about them, golden
examples that match the INT8 model, atomic placement, and `distillery bundle` fetching it back
from the MLflow registry."""

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import replace

import onnxruntime as ort
import pytest

from deploy.bundle import (
    BundleInputs,
    build_bundle,
    bundle_from_stages,
    min_onnxruntime,
    tarball_path,
)
from deploy.onnx_eval import onnx_logits, open_session
from deploy.quantize import model_split
from deploy.runtime import (
    FORMAT_VERSION,
    BundleError,
    load_bundle,
    manifest_signature,
    softmax,
)
from distill.store import file_sha256
from tests.conftest import REPO

CONTENT = {"model.onnx", "tokenizer.json", "labels.json", "golden.json"}


def read_json(path):
    return json.loads(path.read_text())


def build(stages, workdir, run_id="run-tiny", model_version="3"):
    return bundle_from_stages(workdir, stages, run_id=run_id, model_version=model_version)


def test_bundle_holds_the_content_files_and_a_manifest_hashing_each(tiny_bundle):
    assert {path.name for path in tiny_bundle.iterdir()} == CONTENT | {"manifest.json"}
    files = read_json(tiny_bundle / "manifest.json")["files"]
    assert set(files) == CONTENT
    for name, digest in files.items():
        assert file_sha256(tiny_bundle / name) == digest, name


def test_bundle_ships_the_quantized_model_its_tokenizer_and_the_data_labels(
    tiny_bundle, tiny_stages
):
    quantized = tiny_stages.quantize
    assert file_sha256(tiny_bundle / "model.onnx") == quantized.manifest.sha256
    tokenizer = quantized.file(quantized.manifest.tokenizer)
    assert (tiny_bundle / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    assert read_json(tiny_bundle / "labels.json") == tiny_stages.data.manifest.label_names


def test_manifest_describes_what_the_runtime_needs(tiny_bundle, tiny_config):
    manifest = read_json(tiny_bundle / "manifest.json")
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert manifest["opset"] == tiny_config.export.opset
    assert manifest["max_length"] == tiny_config.data.max_length == 32
    dynamic = {"0": "batch", "1": "sequence"}
    assert manifest["inputs"] == [
        {"name": name, "dtype": "int64", "shape": ["batch", "sequence"], "dynamic_axes": dynamic}
        for name in ("input_ids", "attention_mask")
    ]
    assert manifest["min_onnxruntime"] == min_onnxruntime(manifest["opset"], manifest["ir_version"])


def test_manifest_is_signed_over_its_file_hashes_and_content(tiny_bundle):
    manifest = read_json(tiny_bundle / "manifest.json")
    assert manifest["signature"] == manifest_signature(manifest)
    assert len(manifest["signature"]) == 64
    for field, value in [("max_length", 4), ("files", {}), ("model_version", "x")]:
        assert manifest_signature({**manifest, field: value}) != manifest["signature"], field


def test_min_onnxruntime_follows_opset_and_ir_version():
    assert min_onnxruntime(20, 9) == "1.17"
    assert min_onnxruntime(20, 10) == "1.18"  # the IR version can be the stricter need
    assert min_onnxruntime(17, 8) == "1.12"
    # Beyond the known table, the onnxruntime that built (and ran) the bundle is the floor.
    assert min_onnxruntime(99, 10) == ort.__version__


def test_manifest_records_metrics_and_provenance(tiny_bundle, tiny_stages):
    manifest = read_json(tiny_bundle / "manifest.json")
    quantized, evaluation = tiny_stages.quantize, tiny_stages.evaluation
    # configs/tiny.yaml ships INT8 even when too small to time: the calibrated static candidate.
    assert manifest["quantization"]["method"] == quantized.manifest.method == "static"
    metrics = manifest["test_metrics"]
    assert metrics["int8_accuracy"] == quantized.manifest.test_accuracy
    assert metrics["onnx_fp32_accuracy"] == quantized.manifest.fp32_test_accuracy
    assert metrics["student_accuracy"] == evaluation.manifest.student_accuracy
    assert metrics["teacher_accuracy"] == evaluation.manifest.teacher_accuracy
    assert metrics["retention"] == evaluation.manifest.retention
    assert manifest["mlflow_run_id"] == "run-tiny"
    assert manifest["model_version"] == "3"
    assert manifest["teacher_sha256"] == tiny_stages.teacher.manifest.weights_sha256
    assert manifest["data_fingerprint"] == tiny_stages.data.manifest.fingerprint


def test_golden_examples_are_test_texts_scored_like_the_quantize_stage_scores_them(
    tiny_bundle, tiny_stages
):
    """The runtime's own tokenizer must give the ids the quantize stage scored: same
    probabilities (with the vocabulary trimmed, those are the export tokenizer's ids)."""
    test = model_split(tiny_stages.export, tiny_stages.data, "test")
    texts = list(test["text"])
    labels = read_json(tiny_bundle / "labels.json")
    golden = read_json(tiny_bundle / "golden.json")["examples"]
    assert 3 <= len(golden) <= 8
    assert any(example["truncated"] for example in golden), "the longest test text is included"
    quantized = tiny_stages.quantize
    session = open_session(quantized.file(quantized.manifest.file), threads=1)
    for example in golden:
        row = texts.index(example["text"])
        logits = onnx_logits(session, [test["input_ids"][row]], [test["attention_mask"][row]])
        expected = softmax(logits)[0]
        assert [example["probabilities"][label] for label in labels] == pytest.approx(
            expected, abs=1e-6
        )
        assert example["label"] == labels[int(expected.argmax())]


def test_tarball_holds_the_same_files_at_its_top_level(tiny_bundle):
    with tarfile.open(tarball_path(tiny_bundle)) as tar:
        unpacked = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
    assert unpacked == {path.name: path.read_bytes() for path in tiny_bundle.iterdir()}


def test_rebuilding_replaces_the_whole_folder_and_leaves_no_debris(tiny_stages, tmp_path):
    first = build(tiny_stages, tmp_path, run_id="run-a")
    (first / "stray.txt").write_text("from an older bundle")
    second = build(tiny_stages, tmp_path, run_id="run-b")
    assert second == first == tmp_path / "bundle"
    assert not (second / "stray.txt").exists()
    assert read_json(second / "manifest.json")["mlflow_run_id"] == "run-b"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle", "bundle.tar.gz"]
    assert load_bundle(tarball_path(second)).manifest["mlflow_run_id"] == "run-b"


def test_a_failed_build_leaves_the_previous_bundle_as_it_was(tiny_bundle, tmp_path):
    good = BundleInputs(
        onnx_path=tiny_bundle / "model.onnx",
        tokenizer_path=tiny_bundle / "tokenizer.json",
        label_names=("negative", "positive"),
        max_length=32,
        quantization={"method": "dynamic"},
        test_metrics={},
        provenance={"mlflow_run_id": "run-good"},
        golden_texts=("a fine film",),
    )
    target = build_bundle(good, tmp_path / "bundle")
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    three_labels = replace(good, label_names=("a", "b", "c"), provenance={"mlflow_run_id": "x"})
    with pytest.raises(BundleError, match="2 scores for 3 labels"):
        build_bundle(three_labels, target)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]


NAME = "distillery-edge-test"


@pytest.fixture(scope="module")
def registry(tiny_stages, tmp_path_factory):
    """A SQLite MLflow store whose challenger's run holds a bundle, logged as the flow logs it."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("edge", artifact_location=(root / "art").as_uri())
    run = client.create_run(experiment)
    run_id = run.info.run_id
    bundle = build(tiny_stages, root / "workdir", run_id=run_id, model_version="1")
    client.log_artifacts(run_id, str(bundle), "bundle")
    client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME, source=f"{run.info.artifact_uri}/bundle/model.onnx", run_id=run_id
    )
    client.set_registered_model_alias(NAME, "challenger", version.version)
    return uri, run_id, bundle


def distillery(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_distillery_bundle_fetches_the_challengers_bundle(registry, tmp_path):
    uri, run_id, logged = registry
    out = tmp_path / "edge" / "current"
    result = distillery(
        "bundle", "--model", f"models:/{NAME}@challenger", out, "--tracking-uri", uri
    )
    assert result.returncode == 0, result.stderr
    assert load_bundle(out).manifest["mlflow_run_id"] == run_id
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        p.name: p.read_bytes() for p in logged.iterdir()
    }
    assert load_bundle(tmp_path / "edge" / "current.tar.gz").manifest["mlflow_run_id"] == run_id


def in_process(*args, env=None):
    """The same CLI in this process: mlflow is imported once, not per command."""
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


def test_distillery_bundle_reads_the_tracking_uri_from_the_environment(registry, tmp_path):
    uri, run_id, _ = registry
    out = tmp_path / "fetched"
    model = f"models:/{NAME}@challenger"
    result = in_process("bundle", "--model", model, out, env={"MLFLOW_TRACKING_URI": uri})
    assert result.exit_code == 0, result.stderr
    assert load_bundle(out).manifest["mlflow_run_id"] == run_id
    missing = in_process("bundle", "--model", model, out, env={"MLFLOW_TRACKING_URI": ""})
    assert missing.exit_code == 2
    assert "MLFLOW_TRACKING_URI" in missing.stderr


def test_distillery_bundle_names_an_unknown_alias(registry, tmp_path):
    uri, _, _ = registry
    out = tmp_path / "never"
    result = in_process("bundle", "--model", f"models:/{NAME}@champion", out, "--tracking-uri", uri)
    assert result.exit_code == 2
    assert "champion" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/", "models:/name", "models:/@alias"])
def test_a_malformed_model_uri_is_refused(uri):
    from tasks.bundles import BundleFetchError, resolve_run
    from tasks.tracking import mlflow_client

    with pytest.raises(BundleFetchError, match="models:/NAME@ALIAS"):
        resolve_run(mlflow_client("sqlite:///:memory:"), uri)
