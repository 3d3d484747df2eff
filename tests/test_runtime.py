"""The torch-free edge runtime: it verifies a bundle before running it, extracts archives
safely, and classifies a batch item by item; `distillery predict` and `selftest` on top."""

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from deploy.bundle import tarball_path
from deploy.runtime import (
    MAX_ARCHIVE_MEMBERS,
    BundleError,
    extract_archive,
    load_bundle,
    manifest_signature,
    predict,
)
from distill.files import file_sha256
from tests.conftest import REPO

CONTENT = [
    "onnx/model_quantized.onnx",
    "onnx/model_quantized.ort",
    "onnx/model_quantized.required_operators.config",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "golden.json",
]


@pytest.fixture(scope="module")
def loaded(tiny_bundle):
    return load_bundle(tiny_bundle, threads=1)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def edit_manifest(folder, resign=True, **changes):
    """Change manifest fields; `resign` recomputes the signature, as an editor who knows the
    (keyless) algorithm could, so that the checks behind the signature are reached."""
    path = folder / "manifest.json"
    manifest = {**json.loads(path.read_text()), **changes}
    if resign:
        manifest["signature"] = manifest_signature(manifest)
    path.write_text(json.dumps(manifest))


def rehash(folder):
    """Make the manifest match the files again, as a careless (or malicious) editor would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    edit_manifest(folder, files={name: file_sha256(folder / name) for name in manifest["files"]})


def distillery(*args):
    """The real CLI, in this process (serve and bundle tests also run it as a subprocess)."""
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_loading_and_predicting_never_imports_torch_or_transformers(tiny_bundle):
    code = textwrap.dedent(
        f"""
        import json, sys
        import deploy.selftest, deploy.server, deploy.web
        from deploy.runtime import load_bundle, predict
        bundle = load_bundle({str(tiny_bundle)!r}, threads=1)
        results = predict(bundle, ["a moving, funny film", ""])
        heavy = ("torch", "transformers", "prefect", "mlflow", "datasets")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        print(json.dumps({{"loaded": loaded, "results": results}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout)
    assert report["loaded"] == []
    assert report["results"][0]["label"] in ("negative", "positive")
    assert "error" in report["results"][1]


def test_a_result_has_a_label_and_a_probability_per_label(loaded):
    (result,) = predict(loaded, ["an utterly charming and clever comedy"])
    assert set(result) == {"label", "probabilities", "truncated"}
    assert list(result["probabilities"]) == ["negative", "positive"]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert result["truncated"] is False
    assert loaded.session.get_session_options().intra_op_num_threads == 1


def test_folder_and_tarball_give_the_same_predictions(tiny_bundle, loaded):
    texts = ["a fine film", "dull, dull, dull"]
    from_tar = load_bundle(tarball_path(tiny_bundle), threads=1)
    assert predict(from_tar, texts) == predict(loaded, texts)


def test_an_input_longer_than_max_length_is_truncated_and_flagged(loaded):
    words = loaded.max_length - 2  # [CLS] and [SEP] take two of the max_length tokens
    fits, too_long = predict(loaded, ["word " * words, "word " * (words + 1)])
    assert fits["truncated"] is False
    assert too_long["truncated"] is True
    assert too_long["label"] in loaded.labels


def test_bad_items_get_an_error_each_and_the_rest_still_get_results(loaded):
    results = predict(loaded, ["a fine film", "", "   ", None, 7, "a dull film"])
    assert len(results) == 6
    assert results[0]["label"] in loaded.labels and results[5]["label"] in loaded.labels
    assert results[1] == results[2] == {"error": "text is empty"}
    assert results[3] == {"error": "text must be a string, got NoneType"}
    assert results[4] == {"error": "text must be a string, got int"}
    assert predict(loaded, []) == []


def test_a_lone_surrogate_is_an_error_for_its_item_only(loaded):
    """JSON's "\\ud800" decodes to a str that no tokenizer (or UTF-8) can take."""
    good, bad = predict(loaded, ["a fine film", "broken \ud800 text"])
    assert good["label"] in loaded.labels
    assert bad == {"error": "text is not valid Unicode (a lone surrogate U+D800 at character 7)"}


def test_batching_keeps_order_and_barely_moves_probabilities(loaded):
    texts = ["word " * 40, "ok", "a long and winding review of a film that goes nowhere"]
    batched = predict(loaded, texts, batch_size=2)
    for text, result in zip(texts, batched, strict=True):
        (alone,) = predict(loaded, [text])
        assert result["truncated"] == alone["truncated"]
        # INT8 activations are quantized per batch, so batch-mates shift scores a little.
        for label, probability in alone["probabilities"].items():
            assert result["probabilities"][label] == pytest.approx(probability, abs=1e-3)


@pytest.mark.parametrize("name", CONTENT)
def test_a_changed_file_is_refused_and_named(bundle_copy, name):
    with open(bundle_copy / name, "ab") as handle:
        handle.write(b" ")
    with pytest.raises(BundleError, match=f"'{re.escape(name)}' does not match its sha256"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", CONTENT)
def test_a_missing_file_is_refused_and_named(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=f"'{re.escape(name)}' is missing"):
        load_bundle(bundle_copy)


def test_a_bundle_without_manifest_is_refused(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_an_unknown_format_version_is_refused_with_how_to_reexport(bundle_copy, version):
    edit_manifest(bundle_copy, format_version=version)
    with pytest.raises(BundleError, match="unknown bundle format version.*distillery run"):
        load_bundle(bundle_copy)


def test_an_emptied_manifest_is_refused_naming_the_file(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{}")
    path = re.escape(str(bundle_copy / "manifest.json"))
    with pytest.raises(BundleError, match=rf"bundle manifest {path}: unknown bundle format"):
        load_bundle(bundle_copy)


def test_a_manifest_may_not_point_outside_the_bundle(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    edit_manifest(bundle_copy, files={**manifest["files"], "../secret": "0" * 64})
    with pytest.raises(BundleError, match="outside the bundle: '../secret'"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["onnx/../../secret", "/etc/passwd", "onnx\\x", "./config.json"])
def test_a_listed_path_must_be_a_plain_relative_one(bundle_copy, name):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    edit_manifest(bundle_copy, files={**manifest["files"], name: "0" * 64})
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_copy)


def test_the_manifest_names_one_of_the_two_graph_files(bundle_copy):
    edit_manifest(bundle_copy, model="tokenizer.json")
    with pytest.raises(BundleError, match="'model' must be one of"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_length": 4},  # would silently truncate every input
        {"test_metrics": {"int8_accuracy": 0.99}},
        {"model_version": "99"},
        {"created_at": "2030-01-01T00:00:00+00:00"},
    ],
)
def test_an_edited_manifest_is_refused_before_anything_is_trusted(bundle_copy, changes):
    edit_manifest(bundle_copy, resign=False, **changes)
    with pytest.raises(BundleError, match="manifest.json does not match its signature"):
        load_bundle(bundle_copy)


def test_an_edited_file_hash_is_refused_even_when_the_file_matches_it(bundle_copy):
    """Replacing a file and its hash in the manifest is caught by the signature."""
    (bundle_copy / "config.json").write_text('{"id2label": {"0": "good", "1": "bad"}}')
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    files = {**manifest["files"], "config.json": file_sha256(bundle_copy / "config.json")}
    edit_manifest(bundle_copy, resign=False, files=files)
    with pytest.raises(BundleError, match="manifest.json does not match its signature"):
        load_bundle(bundle_copy)


def test_a_manifest_without_signature_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["signature"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json has no signature"):
        load_bundle(bundle_copy)


def test_the_signature_ignores_key_order_and_formatting(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    shuffled = dict(reversed(list(manifest.items())))
    (bundle_copy / "manifest.json").write_text(json.dumps(shuffled, indent=4))
    assert load_bundle(bundle_copy).manifest.as_json() == manifest


def test_a_bundle_needing_a_newer_onnxruntime_is_refused(bundle_copy):
    edit_manifest(bundle_copy, min_onnxruntime="99.0")
    with pytest.raises(BundleError, match="needs onnxruntime >= 99.0"):
        load_bundle(bundle_copy)


def write_archive(path, bundle, extra):
    """A .tar.gz of the bundle's files plus one hand-made member."""
    with tarfile.open(path, "w:gz") as tar:
        for file in bundle.iterdir():
            tar.add(file, arcname=file.name)
        tar.addfile(extra, io.BytesIO(b"payload") if extra.isfile() else None)
    return path


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(b"payload") if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (member("../escape"), "escapes the target folder"),
        (member("sub/../../escape"), "escapes the target folder"),
        (member("/tmp/absolute-escape"), "escapes the target folder"),
        (member("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (member("hard", tarfile.LNKTYPE, "onnx/model_quantized.onnx"), "is a link"),
        (member("fifo", tarfile.FIFOTYPE), "is not a regular file"),
    ],
)
def test_an_archive_with_an_unsafe_member_is_refused_before_writing(
    tiny_bundle, tmp_path, extra, reason
):
    archive = write_archive(tmp_path / "evil.tar.gz", tiny_bundle, extra)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(BundleError, match=re.escape(f"'{extra.name}' {reason}")):
        extract_archive(archive, target)
    assert list(target.iterdir()) == [], "nothing is extracted from a refused archive"
    assert not (tmp_path / "escape").exists()
    with pytest.raises(BundleError, match=reason):
        load_bundle(archive)


def test_a_tar_bomb_is_refused_from_its_headers_without_writing(tmp_path):
    """200 MB of zeros compress to about 200 KB: the size in the header is checked first."""
    archive = tmp_path / "bomb.tar.gz"
    size = 200 << 20
    info = tarfile.TarInfo("model.onnx")
    info.size = size
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.addfile(info, io.BufferedReader(ZeroReader(size)))
    assert archive.stat().st_size < 2 << 20
    target = tmp_path / "target"
    target.mkdir()
    started = time.monotonic()
    with pytest.raises(BundleError, match=r"unpacks to more than [\d,]+ bytes: refused"):
        extract_archive(archive, target)
    assert time.monotonic() - started < 5, "refused from the header, not after unpacking"
    assert list(target.iterdir()) == []
    with pytest.raises(BundleError, match="unpacks to more than"):
        load_bundle(archive)


class ZeroReader(io.RawIOBase):
    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def test_the_size_cap_counts_every_member_and_can_be_raised(tiny_bundle, tmp_path):
    archive = tarball_path(tiny_bundle)
    total = sum(path.stat().st_size for path in tiny_bundle.rglob("*") if path.is_file())
    with pytest.raises(BundleError, match=f"more than {total - 1:,} bytes"):
        extract_archive(archive, tmp_path / "small", max_bytes=total - 1)
    assert not (tmp_path / "small").exists() or not list((tmp_path / "small").iterdir())
    assert load_bundle(archive, max_bytes=total).manifest.model_version == "3"


def test_an_archive_with_too_many_members_is_refused(tmp_path):
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for number in range(MAX_ARCHIVE_MEMBERS + 1):
            tar.addfile(member(f"file-{number}"), io.BytesIO(b"payload"))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(BundleError, match=f"more than {MAX_ARCHIVE_MEMBERS} members"):
        extract_archive(archive, target)
    assert list(target.iterdir()) == []


def test_an_archive_of_the_bundle_folder_itself_loads(tiny_bundle, tmp_path):
    archive = tmp_path / "by-hand.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_bundle, arcname="bundle")
    assert load_bundle(archive).manifest == load_bundle(tiny_bundle).manifest


def test_predict_command_prints_one_json_line_per_input(tiny_bundle, tmp_path):
    lines = ['{"text": "a fine film"}', "not json", '{"review": "x"}', '{"text": 3}', ""]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    result = distillery(
        "predict", tiny_bundle, "a dull film", "", "--input", tmp_path / "in.jsonl", "--threads", 1
    )
    assert result.exit_code == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 6  # two arguments and four non-blank lines, in order
    assert out[0]["label"] in ("negative", "positive") and out[2]["label"]
    assert out[1] == {"error": "text is empty"}
    assert out[3] == {"error": "in.jsonl line 2: not valid JSON"}
    assert out[4] == {"error": "in.jsonl line 3: no 'text' field"}
    assert out[5] == {"error": "text must be a string, got int"}


def test_predict_command_answers_the_valid_lines_beside_a_lone_surrogate(tiny_bundle, tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text":"ok"}\n{"text":"\\ud800"}\n')
    result = distillery("predict", tiny_bundle, "--input", tmp_path / "s.jsonl", "--threads", 1)
    assert result.exit_code == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["label"] in ("negative", "positive")
    assert "lone surrogate U+D800" in second["error"]


def test_predict_command_names_the_line_of_a_latin1_input_file(tiny_bundle, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "plain ascii"}\n{"text": "un film très réussi"}\n'.encode("latin-1"))
    result = distillery("predict", tiny_bundle, "--input", path)
    assert result.exit_code == 2
    (message,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert f"{path} line 2 is not valid utf-8" in message
    assert "byte 0xe8" in message and "--encoding" in message
    assert result.stdout == "", "nothing is predicted from a file that cannot be read"
    decoded = distillery("predict", tiny_bundle, "--input", path, "--encoding", "latin-1")
    assert decoded.exit_code == 0, decoded.stderr
    labels = [json.loads(line)["label"] for line in decoded.stdout.splitlines()]
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}


def test_predict_command_refuses_an_unknown_encoding(tiny_bundle, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a fine film"}\n')
    result = distillery("predict", tiny_bundle, "--input", path, "--encoding", "klingon")
    assert result.exit_code == 2
    assert "unknown encoding 'klingon'" in result.stderr


def test_predict_command_refuses_a_tampered_bundle(bundle_copy):
    (bundle_copy / "config.json").write_text('{"id2label": {"0": "good", "1": "bad"}}')
    result = distillery("predict", bundle_copy, "a fine film")
    assert result.exit_code == 2
    assert "'config.json' does not match its sha256" in result.stderr


def test_selftest_passes_on_a_good_bundle_and_reports_latency(tiny_bundle):
    result = distillery("selftest", tiny_bundle, "--runs", 5, "--threads", 1)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert re.search(r"golden: (\d+)/\1 within", result.stdout)
    assert re.search(r"5 runs\): p50 [\d.]+ ms, p95 [\d.]+ ms", result.stdout)


def test_selftest_refuses_a_manifest_with_a_fake_accuracy_or_version(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    metrics = {**manifest["test_metrics"], "int8_accuracy": 0.999}
    edit_manifest(bundle_copy, resign=False, test_metrics=metrics, model_version="42")
    result = distillery("selftest", bundle_copy, "--runs", 2)
    assert result.exit_code == 2
    assert "manifest.json does not match its signature" in result.stderr
    assert "golden" not in result.stdout, "refused before any check runs"


def test_selftest_fails_when_golden_expectations_differ_from_the_model(bundle_copy):
    golden = json.loads((bundle_copy / "golden.json").read_text())
    first = golden["examples"][0]["probabilities"]
    first["negative"], first["positive"] = first["positive"] + 0.01, first["negative"] - 0.01
    (bundle_copy / "golden.json").write_text(json.dumps(golden))
    rehash(bundle_copy)
    load_bundle(bundle_copy)  # the hashes match again: only the self-test can notice
    result = distillery("selftest", bundle_copy, "--runs", 2)
    assert result.exit_code == 1
    assert "FAIL golden example 1" in result.stdout
    assert "selftest FAILED" in result.stderr


def legacy_bundle(bundle, folder):
    """The same model in the format-1 layout the previous release wrote (model.onnx, labels.json
    beside the tokenizer and golden examples)."""
    folder.mkdir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    shutil.copyfile(bundle / manifest["model"], folder / "model.onnx")
    for name in ("tokenizer.json", "golden.json"):
        shutil.copyfile(bundle / name, folder / name)
    labels = json.loads((bundle / "config.json").read_text())["id2label"]
    (folder / "labels.json").write_text(json.dumps([labels["0"], labels["1"]]))
    for field in ("model", "mobile_model", "mobile_operators", "files", "signature"):
        del manifest[field]
    names = ("model.onnx", "tokenizer.json", "labels.json", "golden.json")
    manifest |= {"format_version": 1, "files": {name: file_sha256(folder / name) for name in names}}
    manifest["signature"] = manifest_signature(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_format_1_bundle_is_still_read_with_a_warning_to_reexport(
    tiny_bundle, loaded, tmp_path, caplog
):
    old = load_bundle(legacy_bundle(tiny_bundle, tmp_path / "old"), threads=1)
    assert "format-1 layout" in caplog.text and "distillery run" in caplog.text
    assert old.labels == loaded.labels
    texts = [example["text"] for example in loaded.golden]
    assert predict(old, texts) == predict(loaded, texts)


def test_selftest_passes_on_a_format_1_bundle(tiny_bundle, tmp_path):
    result = distillery("selftest", legacy_bundle(tiny_bundle, tmp_path / "old"), "--runs", 2)
    assert result.exit_code == 0, result.stdout + result.stderr


def test_a_format_1_bundle_missing_its_labels_is_refused(tiny_bundle, tmp_path):
    old = legacy_bundle(tiny_bundle, tmp_path / "old")
    (old / "labels.json").unlink()
    with pytest.raises(BundleError, match="'labels.json' is missing"):
        load_bundle(old)


def test_labels_come_from_config_id2label_in_output_order(bundle_copy):
    config = json.loads((bundle_copy / "config.json").read_text())
    config["id2label"] = {"1": "positive", "0": "negative"}  # key order does not matter
    (bundle_copy / "config.json").write_text(json.dumps(config))
    rehash(bundle_copy)
    assert load_bundle(bundle_copy).labels == ("negative", "positive")
    config["id2label"] = {"0": "negative", "2": "positive"}
    (bundle_copy / "config.json").write_text(json.dumps(config))
    rehash(bundle_copy)
    with pytest.raises(BundleError, match="'id2label' must number the labels 0..1"):
        load_bundle(bundle_copy)


def test_the_ort_format_graph_reproduces_the_golden_examples(tiny_bundle, loaded):
    """ONNX Runtime Mobile reads only the ORT format: the bundle's copy, run by onnxruntime's
    own session, gives the golden labels and probabilities."""
    from deploy.runtime import with_graph
    from deploy.selftest import check_golden

    manifest = loaded.manifest
    assert manifest.mobile_model == "onnx/model_quantized.ort"
    mobile = with_graph(loaded, tiny_bundle / manifest.mobile_model, threads=1)
    assert mobile.session is not loaded.session
    failures, worst = check_golden(mobile, tolerance=1e-5)
    assert failures == [] and worst <= 1e-5
    operators = (tiny_bundle / str(manifest.mobile_operators)).read_text()
    assert "ai.onnx;" in operators and "DequantizeLinear" in operators
    assert "/tmp" not in operators, "no path of the build machine"


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"max_length": "32"}, "max_length"), ({"files": []}, "files"), ({"extra": 1}, "extra")],
)
def test_a_signed_manifest_with_a_mistyped_or_unknown_field_is_refused_naming_it(
    bundle_copy, changes, field
):
    edit_manifest(bundle_copy, **changes)  # re-signed: the typed manifest is what refuses it
    with pytest.raises(BundleError, match=rf"field '{field}'"):
        load_bundle(bundle_copy)
