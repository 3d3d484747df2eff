"""Edge commands of the `distillery` CLI: bundle, predict, selftest, serve, web.

Heavy imports (mlflow, onnxruntime) happen inside the commands so `distillery --help` stays fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.errors import fail as _fail

if TYPE_CHECKING:
    from deploy.runtime import Bundle

BundleArg = Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", help="onnxruntime intra-op threads (0: onnxruntime decides).")
]


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle_command)
    app.command("predict")(predict_command)
    app.command("selftest")(selftest_command)
    app.command("serve")(serve_command)
    app.command("web")(web_command)


def _load(path: Path, threads: int) -> Bundle:
    from deploy.runtime import BundleError, load_bundle

    try:
        return load_bundle(path, threads=threads)
    except BundleError as err:
        _fail(err)


def bundle_command(
    model: Annotated[str, typer.Option("--model", help="models:/NAME@ALIAS (or NAME/VERSION).")],
    out: Annotated[Path, typer.Argument(help="Folder to write; OUT.tar.gz is written too.")],
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)."),
    ] = None,
    web: Annotated[
        Path | None,
        typer.Option("--web", help="Also write a static page running the model in a browser."),
    ] = None,
) -> None:
    """Fetch a registered model's edge bundle from MLflow, verify it, write OUT and OUT.tar.gz."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        _fail("set MLFLOW_TRACKING_URI or pass --tracking-uri")
    from deploy.runtime import BundleError
    from tasks.bundles import BundleFetchError, fetch_bundle

    try:
        folder = fetch_bundle(model, out, uri)
    except (BundleFetchError, BundleError) as err:
        _fail(err)
    typer.echo(f"bundle for {model} written to {folder} and {folder}.tar.gz")
    if web is not None:
        _write_web(folder, web)


def _write_web(bundle: Path, out: Path) -> None:
    from deploy.runtime import BundleError
    from deploy.web import write_web_app

    try:
        write_web_app(bundle, out)
    except BundleError as err:
        _fail(err)
    typer.echo(f"web page written to {out}/index.html (serve the folder over HTTP)")


def web_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (format 2).")],
    out: Annotated[Path, typer.Argument(help="Folder to write the page, model and scripts to.")],
    serve: Annotated[
        bool, typer.Option("--serve", help="Then serve OUT on --host:--port until Ctrl-C.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for --serve (0 picks a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Address for --serve.")] = "127.0.0.1",
    isolated: Annotated[
        bool,
        typer.Option(help="Send COOP/COEP headers with --serve, so WASM may use several threads."),
    ] = False,
) -> None:
    """Write a static page that classifies text in the browser (transformers.js, offline)."""
    if not bundle.is_dir():
        _fail(f"bundle folder not found: {bundle}")
    _write_web(bundle, out)
    if not serve:
        return
    from deploy.web import static_server

    _serve_until_interrupted(static_server(out, host, port, isolated=isolated), out)


def predict_command(
    bundle: BundleArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="JSON lines file with a 'text' field per line.")
    ] = None,
    encoding: Annotated[
        str, typer.Option(help="Text encoding of the --input file (e.g. latin-1).")
    ] = "utf-8",
    threads: ThreadsOpt = 0,
) -> None:
    """Classify texts; prints one JSON line per input, in order."""
    from deploy import runtime

    items: list[Any] = list(texts or [])
    if input_file is not None:
        if not input_file.is_file():
            _fail(f"input file not found: {input_file}")
        try:
            items += read_jsonl_texts(input_file, encoding)
        except InputFileError as err:
            _fail(err)
    if not items:
        _fail("give texts as arguments or --input FILE")
    loaded = _load(bundle, threads)
    texts_only = [item for item in items if not isinstance(item, LineError)]
    predictions = iter(runtime.predict(loaded, texts_only))
    for item in items:
        result = {"error": item.message} if isinstance(item, LineError) else next(predictions)
        typer.echo(json.dumps(result))


@dataclass(frozen=True)
class LineError:
    """A line of an --input file that holds no usable record (reported, not predicted)."""

    message: str


class InputFileError(ValueError):
    """An --input file that cannot be read as text at all; the message names file and line."""


def read_jsonl_texts(path: Path, encoding: str = "utf-8") -> list[Any]:
    """Each non-blank line's `text` value, or a LineError saying why the line has none."""
    try:
        "".encode(encoding)
    except LookupError:
        raise InputFileError(f"unknown encoding {encoding!r}") from None
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputFileError(f"input file {path} cannot be read: {err.strerror}") from None
    items: list[Any] = []
    for number, raw_line in enumerate(raw.splitlines(), 1):
        try:
            line = raw_line.decode(encoding)
        except UnicodeDecodeError as err:
            raise InputFileError(
                f"input file {path} line {number} is not valid {encoding} "
                f"(byte 0x{raw_line[err.start]:02x} at column {err.start + 1}); "
                "pass --encoding if the file has another encoding, e.g. --encoding latin-1"
            ) from None
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            items.append(LineError(f"{path.name} line {number}: not valid JSON"))
            continue
        if not isinstance(record, dict) or "text" not in record:
            items.append(LineError(f"{path.name} line {number}: no 'text' field"))
            continue
        items.append(record["text"])
    return items


def selftest_command(
    bundle: BundleArg,
    tolerance: Annotated[
        float, typer.Option(help="Largest allowed probability difference on golden examples.")
    ] = 1e-3,
    runs: Annotated[int, typer.Option(help="Batch-1 predictions to time.", min=1)] = 50,
    threads: ThreadsOpt = 0,
) -> None:
    """Check the golden examples on this machine and print batch-1 latency; exit 1 on failure."""
    from deploy.selftest import selftest as run_selftest

    report = run_selftest(_load(bundle, threads), tolerance=tolerance, runs=runs)
    for failure in report.failures:
        typer.echo(f"FAIL {failure}")
    matched = report.checked - len(report.failures)
    typer.echo(
        f"golden: {matched}/{report.checked} within {tolerance:g} "
        f"(largest difference {report.max_difference:.2g})"
    )
    typer.echo(
        f"latency (batch 1, threads={threads or 'auto'}, {report.runs} runs): "
        f"p50 {report.p50_ms:.2f} ms, p95 {report.p95_ms:.2f} ms"
    )
    if not report.passed:
        typer.echo("selftest FAILED", err=True)
        raise typer.Exit(code=1)
    typer.echo("selftest passed")


def serve_command(
    bundle: BundleArg,
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    threads: ThreadsOpt = 0,
    workers: Annotated[
        int, typer.Option(help="Threads that run predictions (requests beyond wait).", min=1)
    ] = 4,
    read_timeout: Annotated[
        float,
        typer.Option(help="Seconds a client has to send a whole request before it is dropped."),
    ] = 5.0,
) -> None:
    """Serve POST /predict and GET /health over HTTP, with the bundle loaded once."""
    from deploy.server import make_server

    if read_timeout <= 0:
        _fail(f"--read-timeout must be positive, got {read_timeout}")
    _serve_until_interrupted(
        make_server(_load(bundle, threads), host, port, workers, read_timeout), bundle
    )


def _serve_until_interrupted(server, what: Path) -> None:
    """Say where `what` is served, serve until Ctrl-C, then close the socket."""
    bound_host, bound_port = server.server_address[:2]
    typer.echo(f"serving {what} on http://{bound_host}:{bound_port}", nl=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
