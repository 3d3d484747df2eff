"""The page `distillery web` writes runs the bundle in a real browser (headless Chromium),
offline: typed golden texts get their labels and probabilities within 1e-5 of the Python
runtime, and no request leaves the page's own origin."""

import json
import shutil
import threading

import pytest

from deploy.runtime import BundleError
from deploy.web import static_server, write_web_app
from tests.edge_js import require_chromium, require_node_packages, run_node

TOLERANCE = 1e-5


@pytest.fixture
def served_page(tiny_bundle, tmp_path):
    require_node_packages()
    require_chromium()
    page = write_web_app(tiny_bundle, tmp_path / "web")
    server = static_server(page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()


def drive(url, texts, tmp_path):
    """Type each text into the page in Chromium (edge/js/browser.mjs); what the page showed."""
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    result = run_node("browser.mjs", url, str(texts_file), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_the_page_reproduces_the_golden_examples_in_chromium(served_page, tiny_bundle, tmp_path):
    golden = json.loads((tiny_bundle / "golden.json").read_text())["examples"]
    shown = drive(served_page, [example["text"] for example in golden], tmp_path)
    assert shown["blocked"] == [] and shown["errors"] == []
    assert len(shown["results"]) == len(golden)
    for example, on_page, in_page in zip(golden, shown["results"], shown["in_page"], strict=True):
        assert on_page["label"] == in_page["label"] == example["label"], example["text"]
        for label, expected in example["probabilities"].items():
            assert on_page["probabilities"][label] == pytest.approx(expected, abs=TOLERANCE)
            assert in_page["probabilities"][label] == pytest.approx(expected, abs=TOLERANCE)


def test_the_page_serves_everything_it_needs_from_its_own_folder(tiny_bundle, tmp_path):
    page = write_web_app(tiny_bundle, tmp_path / "web")
    assert (page / "model" / "onnx" / "model_quantized.onnx").is_file()
    assert {p.name for p in (page / "vendor").iterdir()} == {
        "transformers.min.js",
        "ort-wasm-simd-threaded.mjs",
        "ort-wasm-simd-threaded.wasm",
        "scores.mjs",  # the Node app's own scoring module, not a copy of it in the page
    }
    html = (page / "index.html").read_text()
    assert "dtype: 'q8'" in html and "https://" not in html and "http://" not in html


def test_the_page_needs_the_installed_npm_packages(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="make setup-js"):
        write_web_app(tiny_bundle, tmp_path / "web", node_modules=tmp_path / "none")


def test_the_page_refuses_a_tampered_bundle(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (copy / "config.json").write_text("{}")
    with pytest.raises(BundleError, match="'config.json' does not match its sha256"):
        write_web_app(copy, tmp_path / "web")


def test_distillery_web_writes_the_page(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    require_node_packages()
    result = CliRunner().invoke(app, ["web", str(tiny_bundle), str(tmp_path / "web")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "web" / "index.html").is_file()
    missing = CliRunner().invoke(app, ["web", str(tmp_path / "nothing"), str(tmp_path / "w2")])
    assert missing.exit_code == 2 and "bundle folder not found" in missing.stderr
