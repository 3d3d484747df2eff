"""The HTTP server, over real sockets on 127.0.0.1: health, predictions, and bad requests that
get a 4xx JSON error while the server keeps answering."""

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from deploy.runtime import load_bundle
from deploy.server import MAX_TEXTS, make_server
from tests.conftest import REPO


@pytest.fixture(scope="module")
def base_url(tiny_bundle):
    server = make_server(load_bundle(tiny_bundle, threads=1), "127.0.0.1", 0)  # a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def call(url, body=None, method=None):
    """(status, decoded JSON body) of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_json(base_url, payload):
    return call(f"{base_url}/predict", json.dumps(payload).encode())


def test_health_names_the_bundle(base_url):
    status, body = call(f"{base_url}/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["labels"] == ["negative", "positive"]
    assert body["model_version"] == "3" and body["mlflow_run_id"] == "run-tiny"


def test_predict_answers_one_result_per_text_in_order(base_url):
    status, body = post_json(base_url, {"texts": ["a fine film", "word " * 50, ""]})
    assert status == 200
    first, second, third = body["results"]
    assert first["label"] in ("negative", "positive")
    assert sum(first["probabilities"].values()) == pytest.approx(1.0)
    assert first["truncated"] is False and second["truncated"] is True
    assert third == {"error": "text is empty"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'["a list"]', '"texts" list'),
        (b'{"text": ["singular key"]}', '"texts" list'),
        (b'{"texts": "one string"}', '"texts" must be a list'),
        (json.dumps({"texts": ["x"] * (MAX_TEXTS + 1)}).encode(), f"at most {MAX_TEXTS}"),
    ],
)
def test_a_bad_body_gets_400_and_the_server_keeps_answering(base_url, body, message):
    status, reply = call(f"{base_url}/predict", body)
    assert status == 400
    assert message in reply["error"]
    assert call(f"{base_url}/health")[0] == 200
    assert post_json(base_url, {"texts": ["still here"]})[0] == 200


def test_unknown_paths_get_404(base_url):
    assert call(f"{base_url}/nothing")[0] == 404
    assert call(f"{base_url}/health", b"{}")[0] == 404  # POST to a GET-only path


def test_serve_command_serves_the_bundle(tiny_bundle):
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", str(tiny_bundle), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # "serving BUNDLE on http://127.0.0.1:PORT"
        assert "http://127.0.0.1:" in line, line or process.stderr.read()
        url = line.split(" on ")[-1].strip()
        assert call(f"{url}/health")[0] == 200
        status, body = post_json(url, {"texts": ["a fine film"]})
        assert status == 200 and body["results"][0]["label"] in ("negative", "positive")
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()
