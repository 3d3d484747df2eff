"""The HTTP server, over real sockets on 127.0.0.1: health, predictions, bad requests that
get a 4xx JSON error while the server keeps answering, stalled clients that are dropped without
holding threads, and a `distillery serve` that loads nothing heavy."""

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from deploy.runtime import load_bundle
from deploy.server import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    MAX_TEXTS,
    BundleServer,
    make_server,
)
from tests.conftest import REPO

READ_TIMEOUT = 1.0
WORKERS = 2


@pytest.fixture(scope="module")
def server(tiny_bundle):
    server = make_server(
        load_bundle(tiny_bundle, threads=1),
        "127.0.0.1",
        0,  # a free port
        workers=WORKERS,
        read_timeout=READ_TIMEOUT,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(server):
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def raw(server, data, wait=10.0):
    """(status, JSON body) the server answers to raw bytes; (None, None) if it just closes."""
    with socket.create_connection(server.server_address[:2], timeout=wait) as conn:
        conn.sendall(data)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    if not reply:
        return None, None
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


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


def test_a_lone_surrogate_spoils_only_its_own_result(base_url):
    status, body = post_json(base_url, {"texts": ["a fine film", "\ud800"]})
    assert status == 200
    good, bad = body["results"]
    assert good["label"] in ("negative", "positive")
    assert "lone surrogate" in bad["error"]


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


def test_the_root_answers_a_page_whose_form_posts_to_predict(base_url):
    with urllib.request.urlopen(f"{base_url}/", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    assert '<form id="form" action="/predict" method="post">' in page
    assert "fetch('/predict'" in page and "negative, positive" in page
    assert "http://" not in page and "https://" not in page, "nothing fetched from elsewhere"
    assert call(f"{base_url}/", b"{}")[0] == 405  # GET only


def test_the_page_classifies_a_golden_text_in_chromium(base_url, tiny_bundle, tmp_path):
    """A person's path: open the page, type a text, press the button, read the labels."""
    from tests.edge_js import require_chromium, run_node

    require_chromium()
    golden = json.loads((tiny_bundle / "golden.json").read_text())["examples"][:2]
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([example["text"] for example in golden]))
    result = run_node("browser.mjs", f"{base_url}/", str(texts), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["blocked"] == [] and shown["errors"] == []
    for example, on_page in zip(golden, shown["results"], strict=True):
        assert on_page["label"] == example["label"]
        for label, expected in example["probabilities"].items():
            assert on_page["probabilities"][label] == pytest.approx(expected, abs=1e-5)


@pytest.mark.fault_report("malformed_requests", "14")
def test_unknown_paths_get_404_and_wrong_methods_405(base_url):
    status, body = call(f"{base_url}/nothing")
    assert status == 404 and "no such path: /nothing" in body["error"]
    status, body = call(f"{base_url}/health", b"{}")  # POST to a GET-only path
    assert status == 405 and "answers GET only" in body["error"]
    assert call(f"{base_url}/predict")[0] == 405
    assert call(f"{base_url}/predict", b"{}", method="PUT")[0] == 405
    assert call(f"{base_url}/health?verbose=1")[0] == 200  # a query string is not a new path


@pytest.mark.fault_report("malformed_requests", "14")
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"texts": []}, '"texts" is empty'),
        ({"texts": {"a": "b"}}, '"texts" must be a list, got dict'),
        ({"texts": None}, '"texts" must be a list, got NoneType'),
        ("texts", '"texts" list'),
    ],
)
def test_wrong_shapes_get_400(base_url, payload, message):
    status, body = post_json(base_url, payload)
    assert status == 400
    assert message in body["error"]


@pytest.mark.fault_report("deeply_nested_json", "14")
def test_a_deeply_nested_body_gets_400_not_a_recursion_error(base_url):
    depth = 100_000  # 200 KB of brackets, far beyond Python's recursion limit
    body = b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"
    assert len(body) > 200_000
    status, reply = call(f"{base_url}/predict", body)
    assert status == 400
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in reply["error"]
    # Brackets inside strings are text, not nesting.
    status, reply = post_json(base_url, {"texts": ['[[[[[[[[[[[[[[[[[[[[ \\" {{{{{{{{{{{{{']})
    assert status == 200 and reply["results"][0]["label"]


def request(path, headers, body=b"", method="POST"):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.fault_report("malformed_requests", "14")
@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (request("/predict", []), 411, "Content-Length header is required"),
        (request("/predict", ["Content-Length: ten"]), 400, "whole number of bytes"),
        (request("/predict", ["Content-Length: -5"]), 400, "whole number of bytes"),
        (request("/predict", ["Transfer-Encoding: chunked"]), 411, "chunked"),
        (
            request("/predict", [f"Content-Length: {MAX_BODY_BYTES + 1}"]),
            413,
            f"larger than {MAX_BODY_BYTES}",
        ),
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"GET /health SPDY/3\r\n\r\n", 400, "malformed request line"),
        (request("/health", ["X: " + "a" * 70_000], method="GET"), 431, "headers larger"),
        (request("/predict", ["Transfer-Encoding: gzip"]), 411, "chunked"),
        (request("/predict", ["Content-Length: 3", "Content-Length: 4"]), 400, "whole number"),
        (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 400, "malformed request line"),
        (b"GET /health HTTP/1.1\r\n\r\n", 400, "Host"),  # HTTP/1.1 requires it (RFC 9112)
        (request("/health", ["no colon here"], method="GET"), 400, "malformed request"),
        (request("/predict", ["Content-Length: 20"], b'{"texts"'), 400, "body ended after 8"),
    ],
)
def test_malformed_requests_get_a_4xx_json_error(server, base_url, data, status, message):
    with socket.create_connection(server.server_address[:2], timeout=10) as conn:
        conn.sendall(data)
        if b"Content-Length: 20" in data:
            conn.shutdown(socket.SHUT_WR)  # the client gives up before the declared length
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == status, reply
    assert b"Content-Type: application/json" in head
    assert message in json.loads(body)["error"]
    assert call(f"{base_url}/health")[0] == 200


def test_the_head_limit_holds_however_the_head_is_split_into_packets(server):
    small = request("/health", ["X: " + "a" * (MAX_HEADER_BYTES - 100)], method="GET")
    large = request("/health", ["X: " + "a" * (MAX_HEADER_BYTES + 100)], method="GET")
    assert len(small) <= MAX_HEADER_BYTES < len(large)
    for data, status in ((small, 200), (large, 431)):
        with socket.create_connection(server.server_address[:2], timeout=10) as conn:
            for start in range(0, len(data), 4096):  # 4 KB packets, each read on its own
                conn.sendall(data[start : start + 4096])
                time.sleep(0.01)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        assert int(reply.split()[1]) == status, reply[:200]


def test_expect_100_continue_gets_continue_before_the_answer(server):
    body = json.dumps({"texts": ["a fine film"]}).encode()
    head = request("/predict", [f"Content-Length: {len(body)}", "Expect: 100-continue"])
    with socket.create_connection(server.server_address[:2], timeout=10) as conn:
        conn.sendall(head)
        assert conn.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
        conn.sendall(body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, answer = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert json.loads(answer)["results"][0]["label"]


def test_head_requests_get_headers_only_and_the_connection_closes(server):
    with socket.create_connection(server.server_address[:2], timeout=10) as conn:
        conn.sendall(request("/health", [], method="HEAD"))
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"Content-Length: " in head
    assert body == b""


def test_an_oversized_body_gets_413_while_the_client_is_still_sending_it(base_url):
    """The unread rest of the body is drained, so the answer is not lost to a reset."""
    body = json.dumps({"texts": ["x" * (2 * MAX_BODY_BYTES)]}).encode()
    status, reply = call(f"{base_url}/predict", body)
    assert status == 413 and f"larger than {MAX_BODY_BYTES}" in reply["error"]
    assert call(f"{base_url}/nothing", b"y" * MAX_BODY_BYTES)[0] == 404


def test_connections_beyond_the_limit_get_503_at_once(tiny_bundle):
    server = BundleServer(
        ("127.0.0.1", 0), load_bundle(tiny_bundle, threads=1), workers=1, max_connections=2
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    held = [socket.create_connection(server.server_address[:2], timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)  # let the loop accept both
        status, body = raw(server, request("/health", [], method="GET"), wait=5)
        assert status == 503 and body == {"error": "server is busy"}
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.2)
    assert raw(server, request("/health", [], method="GET"))[0] == 200
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.fault_report("slow_client_content_length", "14")
def test_a_client_that_sends_less_than_its_content_length_is_dropped_in_time(server):
    started = time.monotonic()
    status, body = raw(server, request("/predict", ["Content-Length: 100"], b'{"texts": ['))
    elapsed = time.monotonic() - started
    assert status == 408 and "not received within" in body["error"]
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 2


def test_a_trickling_client_is_dropped_at_the_deadline_not_per_byte(server):
    """One byte per 0.3 s would reset a per-read timeout for ever; the deadline is per request."""
    started = time.monotonic()
    with socket.create_connection(server.server_address[:2], timeout=10) as conn:
        try:
            for byte in request("/health", [], method="GET"):
                conn.sendall(bytes([byte]))
                time.sleep(0.3)
        except OSError:
            pass  # the server closed the connection under us: what we want
        reply = conn.recv(65536)
    assert b" 408 " in reply.split(b"\r\n")[0]
    assert time.monotonic() - started < READ_TIMEOUT + 2


@pytest.mark.fault_report("stalled_and_concurrent_clients", "14")
def test_stalled_connections_hold_no_threads_and_block_no_one(server, base_url):
    before = threading.active_count()
    stalled = []
    try:
        for number in range(60):  # half stop inside the headers, half inside the body
            conn = socket.create_connection(server.server_address[:2], timeout=10)
            if number % 2:
                conn.sendall(b"POST /predict HTTP/1.1\r\nContent-Le")
            else:
                conn.sendall(request("/predict", ["Content-Length: 100"], b"{"))
            stalled.append(conn)
        started = time.monotonic()
        status, body = post_json(base_url, {"texts": ["still answering"]})
        assert status == 200 and body["results"][0]["label"]
        assert time.monotonic() - started < READ_TIMEOUT / 2, "answered while others stall"
        # The worker pool is the only source of extra threads: a fixed number, not one each.
        assert threading.active_count() <= before + WORKERS
    finally:
        for conn in stalled:
            conn.close()


@pytest.mark.fault_report("serve_heavy_imports", "17")
def test_serve_command_serves_the_bundle_without_heavy_imports(tiny_bundle):
    """The real CLI entry in a fresh process; -X importtime lists every module it imports,
    including any imported lazily while answering."""
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "flows.cli", "serve", str(tiny_bundle)]
        + ["--port", "0", "--threads", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # "serving BUNDLE on http://127.0.0.1:PORT"
        assert "http://127.0.0.1:" in line, line
        url = line.split(" on ")[-1].strip()
        assert call(f"{url}/health")[0] == 200
        status, body = post_json(url, {"texts": ["a fine film"]})
        assert status == 200 and body["results"][0]["label"] in ("negative", "positive")
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        imported = process.stderr.read()
        process.stderr.close()
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +([\w.]+)$", imported, re.M))
    assert "onnxruntime" in modules and "deploy.server" in modules, "importtime output parsed"
    heavy = {"scipy", "pandas", "sklearn", "pyarrow", "torch", "transformers", "datasets"}
    heavy |= {"mlflow", "prefect"}
    assert {name.split(".")[0] for name in modules} & heavy == set()


@pytest.mark.fault_report("edited_manifest", "15")
def test_serve_command_refuses_an_edited_manifest(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "max_length": 4}))
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve", str(bundle), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "manifest.json does not match its signature" in result.stderr
    assert "Traceback" not in result.stderr
