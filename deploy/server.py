"""A small HTTP server for a loaded bundle (standard library and h11 only, torch-free).

`POST /predict` with `{"texts": [...]}` answers `{"results": [...]}`; `GET /health` answers the
bundle's identity; `GET /` answers a small HTML page whose form posts a text to `/predict`.
Every malformed request gets a 4xx JSON error and never stops the server.

Connections are read by one asyncio loop, so a slow or stalled client costs a socket, not a
thread: each request must arrive whole (headers and body) within `read_timeout` seconds or the
connection is dropped (408). Only complete requests reach the bounded pool of `workers` threads
that run the model. Beyond `max_connections` open connections new ones get 503 at once, and
the kernel's listen backlog (`BACKLOG`) holds connections the loop has not accepted yet.

HTTP/1.1 is parsed and framed by h11 (pure Python, the parser under uvicorn); the server adds
its own limits on top (head and body size, the request deadline, one request per connection:
every answer says `Connection: close`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import h11

from deploy.runtime import Bundle, predict
from deploy.serve_page import serve_page

MAX_BODY_BYTES = 1 << 20
MAX_HEADER_BYTES = 16 << 10
MAX_TEXTS = 256
MAX_JSON_DEPTH = 8  # {"texts": [...]} needs 2; deeper bodies are refused before parsing
READ_TIMEOUT = 5.0  # seconds for a whole request (headers and body) to arrive
WORKERS = 4
MAX_CONNECTIONS = 512
BACKLOG = 128
LINGER_S = 2.0  # how long an unread body is drained after an early answer (413, 404, ...)
LINGER_BYTES = 16 << 20
BUSY_LINGER_S = 0.5

ROUTES = {"/": "GET", "/health": "GET", "/predict": "POST"}
HEADERS_TOO_LARGE = f"request headers larger than {MAX_HEADER_BYTES} bytes"
CHUNKED_REFUSED = "chunked bodies are not accepted: send a Content-Length"
# JSON strings (escapes included), removed before counting bracket depth.
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
NOT_BRACKETS = re.compile(r"[^\[\]{}]")

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class BundleServer:
    """Serves one loaded bundle (its onnxruntime session is shared by the worker threads).

    The socket is bound on construction (`server_address` holds the real port when 0 was
    asked for); `serve_forever()` blocks until `shutdown()` is called from another thread.
    """

    def __init__(
        self,
        address: tuple[str, int],
        bundle: Bundle,
        workers: int = WORKERS,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.bundle = bundle
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.socket = socket.create_server(address, backlog=BACKLOG)
        self.server_address = self.socket.getsockname()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="predict")
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._page = serve_page(bundle.labels, bundle.manifest.model_version)

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serve_forever() (called from another thread) and wait until it has returned."""
        if not self._started.wait(timeout=10):
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._done.wait()

    def server_close(self) -> None:
        self.socket.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self.socket, backlog=BACKLOG)
        self._started.set()
        async with server:
            await self._stop.wait()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            if self._open > self.max_connections:
                status, payload = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "server is busy"}
                method, path = "-", "-"
            else:
                method, path, status, payload = await self._answer(reader, writer, connection)
            await self._reply(writer, connection, method, status, payload)
            log.info("%s %s %s %d", _peer(writer), method, path, status)
            writer.write_eof()  # the answer is complete: the client may stop reading
            busy = status == HTTPStatus.SERVICE_UNAVAILABLE  # shed load: linger briefly
            await discard_input(reader, BUSY_LINGER_S if busy else min(LINGER_S, self.read_timeout))
        except OSError:
            pass  # the client went away (or never read its answer): nothing more to say
        except asyncio.CancelledError:
            pass  # the server is shutting down: close this connection quietly
        except Exception:  # noqa: BLE001 - one bad connection must not take the server down
            log.exception("request failed")
        finally:
            self._open -= 1
            writer.close()

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: h11.Connection,
    ) -> tuple[str, str, HTTPStatus, dict[str, Any] | str]:
        """(method, path, status, JSON payload or HTML page) for one request on this connection."""
        method = path = "-"
        try:
            async with asyncio.timeout(self.read_timeout):
                request = await read_request(reader, connection)
                method = request.method.decode("ascii")
                path = urlsplit(request.target.decode("ascii")).path
                allowed = ROUTES.get(path)
                if allowed is None:
                    raise BadRequest(f"no such path: {path}", HTTPStatus.NOT_FOUND)
                if method != allowed:
                    raise BadRequest(
                        f"{path} answers {allowed} only, not {method}",
                        HTTPStatus.METHOD_NOT_ALLOWED,
                    )
                body = b""
                if method == "POST":
                    length = body_length(request)
                    if connection.they_are_waiting_for_100_continue:  # curl waits for it
                        continuing = h11.InformationalResponse(
                            status_code=100, headers=[], reason=b"Continue"
                        )
                        writer.write(connection.send(continuing))
                    body = await read_body(reader, connection, length)
        except TimeoutError:
            message = f"request not received within {self.read_timeout:g} s"
            return method, path, HTTPStatus.REQUEST_TIMEOUT, {"error": message}
        except BadRequest as err:
            return method, path, err.status, {"error": str(err)}
        if path == "/health":
            return method, path, HTTPStatus.OK, self._health()
        if path == "/":
            return method, path, HTTPStatus.OK, self._page
        try:
            texts = parse_texts(body)
        except BadRequest as err:
            return method, path, err.status, {"error": str(err)}
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._pool, predict, self.bundle, texts)
        except Exception:  # noqa: BLE001 - one failed request must not take the server down
            log.exception("prediction failed")
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            return method, path, status, {"error": "prediction failed"}
        return method, path, HTTPStatus.OK, {"results": results}

    def _health(self) -> dict[str, Any]:
        manifest = self.bundle.manifest
        return {
            "status": "ok",
            "labels": list(self.bundle.labels),
            "model_version": manifest.model_version,
            "mlflow_run_id": manifest.mlflow_run_id,
            "format_version": manifest.format_version,
        }

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        connection: h11.Connection,
        method: str,
        status: HTTPStatus,
        payload: dict[str, Any] | str,
    ) -> None:
        if isinstance(payload, str):
            body, content_type = payload.encode(), "text/html; charset=utf-8"
        else:
            body, content_type = json.dumps(payload).encode(), "application/json"
        response = h11.Response(
            status_code=status.value,
            reason=status.phrase.encode("ascii"),
            headers=[
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),  # one request per connection
            ],
        )
        data = connection.send(response)
        if method != "HEAD":  # h11 frames a HEAD answer as headers only (GET's Content-Length)
            data += connection.send(h11.Data(data=body))
        writer.write(data + connection.send(h11.EndOfMessage()))
        async with asyncio.timeout(self.read_timeout):  # a client that never reads is dropped
            await writer.drain()


async def read_request(reader: asyncio.StreamReader, connection: h11.Connection) -> h11.Request:
    """The request line and headers, parsed by h11, or BadRequest.

    At most MAX_HEADER_BYTES are read before the request is complete, so a head larger than
    that is refused (431) however the client splits it into packets."""
    read = 0
    ended = False
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as err:
            if ended:
                raise BadRequest("request ended before its headers did") from None
            raise refused(err) from None
        if isinstance(event, h11.Request):
            if event.http_version not in (b"1.0", b"1.1"):
                version = event.http_version.decode("ascii")
                raise BadRequest(f"malformed request line: HTTP/{version} is not HTTP/1.x")
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise BadRequest("request ended before its headers did")
        if read >= MAX_HEADER_BYTES:
            raise BadRequest(HEADERS_TOO_LARGE, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        chunk = await reader.read(MAX_HEADER_BYTES - read)
        read += len(chunk)
        ended = not chunk
        connection.receive_data(chunk)  # b"" tells h11 the client closed its side


def refused(err: h11.RemoteProtocolError) -> BadRequest:
    """What h11 refused in a request's head, in the server's words and statuses."""
    message = str(err)
    if "Transfer-Encoding" in message:  # h11 reads only chunked bodies, the server none
        return BadRequest(CHUNKED_REFUSED, HTTPStatus.LENGTH_REQUIRED)
    if "Content-Length" in message:
        return BadRequest(f"Content-Length must be a whole number of bytes ({message})")
    if "request line" in message:
        return BadRequest(f"malformed request line ({message})")
    return BadRequest(f"malformed request: {message}", HTTPStatus(err.error_status_hint))


def header(request: h11.Request, name: bytes) -> str | None:
    """A request header's value (`name` in lower case: h11 lowers them), None when absent."""
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def body_length(request: h11.Request) -> int:
    """The request's Content-Length, or BadRequest when it is missing or too large (h11 has
    refused one that is not a whole number)."""
    if header(request, b"transfer-encoding") is not None:
        raise BadRequest(CHUNKED_REFUSED, HTTPStatus.LENGTH_REQUIRED)
    declared = header(request, b"content-length")
    if declared is None:
        raise BadRequest("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise BadRequest(
            f"body of {length} bytes is larger than {MAX_BODY_BYTES}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    return length


async def read_body(reader: asyncio.StreamReader, connection: h11.Connection, length: int) -> bytes:
    """The `length` body bytes h11 frames, or BadRequest when the client closes before them."""
    body = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as err:
            raise refused(err) from None
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        elif chunk := await reader.read(1 << 16):
            connection.receive_data(chunk)
        else:
            raise BadRequest(f"body ended after {len(body)} of {length} bytes (Content-Length)")


async def discard_input(reader: asyncio.StreamReader, seconds: float) -> None:
    """Read and drop what the client still sends (a body we answered without reading), until
    it closes, for at most `seconds` and LINGER_BYTES: closing with unread input would reset
    the connection and lose the answer (a 413 would reach the client as a broken pipe)."""
    left = LINGER_BYTES
    try:
        async with asyncio.timeout(seconds):
            while left > 0 and (chunk := await reader.read(min(left, 1 << 16))):
                left -= len(chunk)
    except TimeoutError:
        pass


def parse_texts(body: bytes) -> list[Any]:
    """The `texts` list of a `{"texts": [...]}` body, or BadRequest naming what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not valid JSON (not UTF-8)") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRequest(f"body is not valid JSON: {err}") from None
    except RecursionError:  # unreachable after the depth check; kept as a last guard
        raise BadRequest("body is nested too deeply") from None
    if not isinstance(payload, dict) or "texts" not in payload:
        raise BadRequest('body must be a JSON object with a "texts" list')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise BadRequest(f'"texts" must be a list, got {type(texts).__name__}')
    if not texts:
        raise BadRequest('"texts" is empty: send at least one text')
    if len(texts) > MAX_TEXTS:
        raise BadRequest(f'"texts" may hold at most {MAX_TEXTS} items, got {len(texts)}')
    return texts


def json_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text, brackets inside strings ignored.

    Stops counting once past MAX_JSON_DEPTH, so a hostile body costs one regex pass.
    """
    depth = deepest = 0
    for bracket in NOT_BRACKETS.sub("", JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
    return deepest


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else "-"


def make_server(
    bundle: Bundle,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = WORKERS,
    read_timeout: float = READ_TIMEOUT,
) -> BundleServer:
    """A bound server (port 0 picks a free one: see `server.server_address`); not yet serving."""
    return BundleServer((host, port), bundle, workers=workers, read_timeout=read_timeout)
