"""The edge bundle: the files it holds, a manifest that tells the truth about them, golden
examples that match the INT8 model, atomic placement, and `distillery bundle` fetching it back
from the MLflow registry."""

import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest

from deploy.bundle import (
    BundleInputs,
    build_bundle,
    bundle_from_stages,
    min_onnxruntime,
    tarball_path,
)
from deploy.bundle_format import BundleQuantization
from deploy.onnx_eval import onnx_logits, open_session
from deploy.quantize import model_split
from deploy.runtime import (
    FORMAT_VERSION,
    BundleError,
    load_bundle,
    manifest_signature,
    softmax,
)
from distill.files import file_sha256
from tests.conftest import run_cli

CONTENT = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "onnx/model_quantized.onnx",
    "onnx/model_quantized.ort",
    "onnx/model_quantized.required_operators.config",
    "golden.json",
}


def files_of(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def read_json(path):
    return json.loads(path.read_text())


def build(stages, workdir, run_id="run-tiny", model_version="3"):
    return bundle_from_stages(workdir, stages, run_id=run_id, model_version=model_version)


def test_bundle_holds_the_content_files_and_a_manifest_hashing_each(tiny_bundle):
    assert files_of(tiny_bundle) == CONTENT | {"manifest.json"}
    files = read_json(tiny_bundle / "manifest.json")["files"]
    assert set(files) == CONTENT
    for name, digest in files.items():
        assert file_sha256(tiny_bundle / name) == digest, name


def test_bundle_ships_the_quantized_model_its_tokenizer_and_the_data_labels(
    tiny_bundle, tiny_stages
):
    quantized = tiny_stages.quantize
    assert file_sha256(tiny_bundle / "onnx/model_quantized.onnx") == quantized.manifest.sha256
    tokenizer = quantized.file(quantized.manifest.tokenizer)
    assert (tiny_bundle / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    id2label = read_json(tiny_bundle / "config.json")["id2label"]
    assert list(id2label.values()) == tiny_stages.data.manifest.label_names
    assert list(id2label) == ["0", "1"]


def test_config_is_the_students_with_the_shipped_vocabulary_size(tiny_bundle, tiny_stages):
    """configs/tiny.yaml trims the vocabulary: config.json must say the trimmed size, which is
    the graph's embedding and the tokenizer's vocabulary."""
    from tokenizers import Tokenizer

    from deploy.bundle import embedding_rows

    config = read_json(tiny_bundle / "config.json")
    student = read_json(tiny_stages.student.file("config.json"))
    assert tiny_stages.quantize.manifest.trimmed
    kept = tiny_stages.export.manifest.vocabulary.kept_size
    assert config["vocab_size"] == kept < student["vocab_size"]
    assert embedding_rows(tiny_bundle / "onnx/model_quantized.onnx") == kept
    assert Tokenizer.from_file(str(tiny_bundle / "tokenizer.json")).get_vocab_size() == kept
    for key in ("model_type", "hidden_size", "num_hidden_layers", "max_position_embeddings"):
        assert config[key] == student[key], key
    assert config["label2id"] == {"negative": 0, "positive": 1}


def test_tokenizer_config_truncates_at_the_bundles_max_length(tiny_bundle, tiny_config):
    tokenizer_config = read_json(tiny_bundle / "tokenizer_config.json")
    assert tokenizer_config["model_max_length"] == tiny_config.data.max_length == 32
    assert tokenizer_config["tokenizer_class"] == "BertTokenizer"
    assert not {"is_local", "local_files_only", "max_length"} & set(tokenizer_config)
    special = read_json(tiny_bundle / "special_tokens_map.json")
    assert special == {
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    }


def test_a_config_that_disagrees_with_the_graphs_vocabulary_is_refused(tiny_bundle):
    from deploy.bundle import model_config

    with pytest.raises(BundleError, match="vocab_size 30522, but the graph's word embedding"):
        model_config({"vocab_size": 30522}, ["negative", "positive"], vocab_rows=2259)


def test_manifest_describes_what_the_runtime_needs(tiny_bundle, tiny_config):
    manifest = read_json(tiny_bundle / "manifest.json")
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert manifest["model"] == "onnx/model_quantized.onnx"
    assert manifest["mobile_model"] == "onnx/model_quantized.ort"
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
    labels = list(read_json(tiny_bundle / "config.json")["id2label"].values())
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
        members = tar.getmembers()
        unpacked = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
    assert unpacked == {name: (tiny_bundle / name).read_bytes() for name in files_of(tiny_bundle)}
    assert [m.name for m in members if m.isdir()] == ["onnx"]


def test_rebuilding_replaces_the_whole_folder_and_leaves_no_debris(tiny_stages, tmp_path):
    first = build(tiny_stages, tmp_path, run_id="run-a")
    (first / "stray.txt").write_text("from an older bundle")
    second = build(tiny_stages, tmp_path, run_id="run-b")
    assert second == first == tmp_path / "bundle"
    assert not (second / "stray.txt").exists()
    assert read_json(second / "manifest.json")["mlflow_run_id"] == "run-b"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle", "bundle.tar.gz"]
    assert load_bundle(tarball_path(second)).manifest.mlflow_run_id == "run-b"


def inputs_from(tiny_bundle: Path, method: str, run_id: str) -> BundleInputs:
    """Bundle inputs read back from the tiny bundle's own files."""
    return BundleInputs(
        onnx_path=tiny_bundle / "onnx/model_quantized.onnx",
        tokenizer_path=tiny_bundle / "tokenizer.json",
        label_names=("negative", "positive"),
        max_length=32,
        quantization=BundleQuantization(method=method),
        test_metrics={},
        provenance={"mlflow_run_id": run_id},
        golden_texts=("a fine film",),
        model_config=read_json(tiny_bundle / "config.json"),
        tokenizer_config=read_json(tiny_bundle / "tokenizer_config.json"),
    )


def test_a_failed_build_leaves_the_previous_bundle_as_it_was(tiny_bundle, tmp_path):
    good = inputs_from(tiny_bundle, "dynamic", "run-good")
    target = build_bundle(good, tmp_path / "bundle")
    before = {name: (target / name).read_bytes() for name in files_of(target)}
    three_labels = replace(good, label_names=("a", "b", "c"), provenance={"mlflow_run_id": "x"})
    with pytest.raises(BundleError, match="2 scores for 3 labels"):
        build_bundle(three_labels, target)
    assert {name: (target / name).read_bytes() for name in files_of(target)} == before
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]


def test_an_fp32_bundle_ships_onnx_model_onnx_and_mobile_is_optional(tiny_bundle, tmp_path):
    inputs = replace(inputs_from(tiny_bundle, "fp32", "run-fp32"), mobile=False)
    folder = build_bundle(inputs, tmp_path / "bundle")
    manifest = read_json(folder / "manifest.json")
    assert manifest["model"] == "onnx/model.onnx"
    assert manifest["mobile_model"] is None and manifest["mobile_operators"] is None
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["model.onnx"]
    assert load_bundle(folder).golden[0]["text"] == "a fine film"


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
        NAME, source=f"{run.info.artifact_uri}/bundle/onnx/model_quantized.onnx", run_id=run_id
    )
    client.set_registered_model_alias(NAME, "challenger", version.version)
    return uri, run_id, bundle


def distillery(*args):
    return run_cli(*args, env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})


def test_distillery_bundle_fetches_the_challengers_bundle(registry, tmp_path):
    uri, run_id, logged = registry
    out = tmp_path / "edge" / "current"
    result = distillery(
        "bundle", "--model", f"models:/{NAME}@challenger", out, "--tracking-uri", uri
    )
    assert result.returncode == 0, result.stderr
    assert load_bundle(out).manifest.mlflow_run_id == run_id
    assert {name: (out / name).read_bytes() for name in files_of(out)} == {
        name: (logged / name).read_bytes() for name in files_of(logged)
    }
    assert load_bundle(tmp_path / "edge" / "current.tar.gz").manifest.mlflow_run_id == run_id


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
    assert load_bundle(out).manifest.mlflow_run_id == run_id
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


def test_distillery_bundle_can_also_write_the_web_page(registry, tmp_path):
    from tests.edge_js import require_node_packages

    require_node_packages()
    uri, _, _ = registry
    out, web = tmp_path / "fetched", tmp_path / "web"
    model = f"models:/{NAME}@challenger"
    result = in_process("bundle", "--model", model, out, "--tracking-uri", uri, "--web", web)
    assert result.exit_code == 0, result.output
    assert (web / "index.html").is_file()
    assert (web / "model" / "config.json").read_bytes() == (out / "config.json").read_bytes()


def test_bundle_size_counts_the_graphs_under_onnx(tmp_path):
    """The Hugging Face layout keeps the graphs in onnx/: a size summed over the top level only
    reported a 36 MB default bundle as 0.7 MB."""
    from deploy.bundle import bundle_bytes

    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model_quantized.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "tokenizer.json").write_bytes(b"y" * 10)
    assert bundle_bytes(tmp_path) == 1010
