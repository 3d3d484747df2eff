"""A small HTTP server for a loaded bundle (standard library only, torch-free).

`POST /predict` with `{"texts": [...]}` answers `{"results": [...]}`; `GET /health` answers the
bundle's identity. A bad request gets a JSON error with a 4xx status and never stops the server.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deploy.runtime import Bundle, predict

MAX_BODY_BYTES = 1 << 20
MAX_TEXTS = 256

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class BundleServer(ThreadingHTTPServer):
    """Holds the one loaded bundle that every request thread shares (sessions are thread-safe)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], bundle: Bundle) -> None:
        super().__init__(address, PredictHandler)
        self.bundle = bundle


class PredictHandler(BaseHTTPRequestHandler):
    server: BundleServer

    def do_GET(self) -> None:
        if self.path != "/health":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such path: {self.path}"})
            return
        manifest = self.server.bundle.manifest
        self._reply(
            HTTPStatus.OK,
            {
                "status": "ok",
                "labels": list(self.server.bundle.labels),
                "model_version": manifest.get("model_version"),
                "mlflow_run_id": manifest.get("mlflow_run_id"),
                "format_version": manifest.get("format_version"),
            },
        )

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such path: {self.path}"})
            return
        try:
            texts = self._texts()
        except BadRequest as err:
            self._reply(err.status, {"error": str(err)})
            return
        try:
            results = predict(self.server.bundle, texts)
        except Exception:  # noqa: BLE001 - one failed request must not take the server down
            log.exception("prediction failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "prediction failed"})
            return
        self._reply(HTTPStatus.OK, {"results": results})

    def _texts(self) -> list[Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0:
            raise BadRequest("a valid Content-Length header is required")
        if length > MAX_BODY_BYTES:
            raise BadRequest(
                f"body larger than {MAX_BODY_BYTES} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            )
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("body is not valid JSON") from None
        if not isinstance(body, dict) or "texts" not in body:
            raise BadRequest('body must be a JSON object with a "texts" list')
        texts = body["texts"]
        if not isinstance(texts, list):
            raise BadRequest('"texts" must be a list')
        if len(texts) > MAX_TEXTS:
            raise BadRequest(f'"texts" may hold at most {MAX_TEXTS} items')
        return texts

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.info("%s %s", self.address_string(), format % args)


def make_server(bundle: Bundle, host: str = "127.0.0.1", port: int = 8000) -> BundleServer:
    """A bound server (port 0 picks a free one: see `server.server_address`); not yet serving."""
    return BundleServer((host, port), bundle)
