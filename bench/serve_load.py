"""Load test of `distillery serve`: concurrent clients, with and without 100 stalled connections.

    .venv/bin/python -m bench.serve_load [--bundle PATH] [--scratch DIR] [--no-docs]

8 and then 32 clients on 127.0.0.1 send one-text `POST /predict` requests (a new connection
each), alone and while 100 stalled connections are held open. Without --bundle, the tiny
pipeline's bundle is built in --scratch. Writes bench/results/serve_load.json and the
"serve-load" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench import report as bench

CONCURRENCY = (8, 32)
REQUESTS = {8: 50, 32: 25}  # per client
STALLED = 100
CLIENT_TIMEOUT = 30.0
HOLD_S = 7.0  # stalls are held at least this long: past the server's 5 s request deadline
WARMUP_REQUESTS = 20
TEXT = "a gorgeous, witty and moving film that never outstays its welcome"


def start_server(bundle: Path, workers: int) -> tuple[subprocess.Popen, str, int]:
    command = [sys.executable, "-m", "flows.cli", "serve", str(bundle), "--port", "0"]
    command += ["--threads", "1", "--workers", str(workers)]
    process = subprocess.Popen(command, cwd=bench.REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # "serving BUNDLE on http://127.0.0.1:PORT"
    if "http://127.0.0.1:" not in line:
        process.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    host, port = line.rsplit("http://", 1)[1].strip().split(":")
    return process, host, int(port)


def thread_count(pid: int) -> int:
    """The process's `Threads:` in /proc."""
    return int(re.search(r"^Threads:\s*(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


@contextlib.contextmanager
def in_background(work: Callable[[threading.Event], None]) -> Iterator[None]:
    """`work(stop)` in a thread while the block runs; then `stop` is set and the thread joined."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
STALLS = (HEAD + b'Content-Length: 100\r\n\r\n{"texts": ', HEAD + b"Content-Le")  # body, head


def hold_stalls(
    address: tuple[str, int], count: int, counts: dict[str, int], ready: threading.Event
) -> Callable[[threading.Event], None]:
    """Holds `count` stalled connections open until stopped, replacing each one the server
    drops; counts the drops and the (408) answers the server gave them."""
    opened = itertools.count()

    def open_one() -> socket.socket:
        conn = socket.create_connection(address, timeout=CLIENT_TIMEOUT)
        conn.sendall(STALLS[next(opened) % 2])
        conn.setblocking(False)
        return conn

    def hold(stop: threading.Event) -> None:
        selector = selectors.DefaultSelector()
        for _ in range(count):
            selector.register(open_one(), selectors.EVENT_READ)
        ready.set()
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                try:
                    reply = key.fileobj.recv(65536)
                except OSError:
                    reply = b""
                counts["answered_408"] += b" 408 " in reply.split(b"\r\n", 1)[0]
                counts["dropped"] += 1
                selector.unregister(key.fileobj)
                key.fileobj.close()
                selector.register(open_one(), selectors.EVENT_READ)
        for key in list(selector.get_map().values()):
            key.fileobj.close()

    return hold


def client(host: str, port: int, requests: int, latencies: list[float], errors: list[str]) -> None:
    body = json.dumps({"texts": [TEXT]})
    for _ in range(requests):
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT)
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            reply = json.loads(response.read())
            conn.close()
            if response.status != 200 or "label" not in reply["results"][0]:
                errors.append(f"HTTP {response.status}: {reply}")
                continue
        except (OSError, http.client.HTTPException, ValueError) as err:
            errors.append(f"{type(err).__name__}: {err}")
            continue
        latencies.append((time.perf_counter() - started) * 1000)


def run_clients(host: str, port: int, clients: int, requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:  # one thread a client, all at once
        list(pool.map(lambda _: client(host, port, requests, latencies, errors), range(clients)))
    wall = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (None, None)
    return {
        "clients": clients,
        "requests": clients * requests,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "p50_ms": None if p50 is None else round(float(p50), 2),
        "p99_ms": None if p99 is None else round(float(p99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "requests_per_s": round(len(latencies) / wall, 1),
    }


def phase(host: str, port: int, clients: int, stalled: int) -> dict[str, Any]:
    """The clients' requests, while `stalled` stalled connections are held open (at least
    HOLD_S seconds, past the server's request deadline)."""
    if not stalled:
        return run_clients(host, port, clients, REQUESTS[clients])
    counts, ready = {"dropped": 0, "answered_408": 0}, threading.Event()
    with in_background(hold_stalls((host, port), stalled, counts, ready)):
        ready.wait(timeout=CLIENT_TIMEOUT)
        held_from = time.monotonic()
        row = run_clients(host, port, clients, REQUESTS[clients])
        time.sleep(max(0.0, HOLD_S - (time.monotonic() - held_from)))
    dropped, answered = counts["dropped"], counts["answered_408"]
    return row | {"stalled_dropped_by_server": dropped, "stalled_answered_408": answered}


def measure(bundle: Path, workers: int) -> dict[str, Any]:
    process, host, port = start_server(bundle, workers)
    try:
        run_clients(host, port, 1, WARMUP_REQUESTS)
        idle = thread_count(process.pid)
        rows = []
        for stalled in (0, STALLED):
            for clients in CONCURRENCY:
                peak = [thread_count(process.pid)]

                def sample(stop: threading.Event, peak: list[int] = peak) -> None:
                    while not stop.wait(0.05):  # the peak thread count, every 50 ms
                        peak[0] = max(peak[0], thread_count(process.pid))

                with in_background(sample):
                    row = phase(host, port, clients, stalled)
                rows.append({"stalled_connections": stalled, **row, "peak_threads": peak[0]})
        return {"idle_threads": idle, "workers": workers, "rows": rows}
    finally:
        process.terminate()
        process.wait(timeout=10)


COLUMNS = {"clients": "", "stalled_connections": "", "requests": "", "errors": ""}
COLUMNS |= {"p50_ms": ".1f", "p99_ms": ".1f", "requests_per_s": ".0f", "peak_threads": ""}


def report(result: dict[str, Any]) -> str:
    dropped = sum(row.get("stalled_dropped_by_server", 0) for row in result["rows"])
    answered = sum(row.get("stalled_answered_408", 0) for row in result["rows"])
    load = result["load_average_1min"]
    return bench.section(
        "## Edge server under load (serve-load)",
        "`distillery serve --threads 1 --workers "
        f"{result['workers']}` in its own process; clients on 127.0.0.1 in the bench process, "
        "one text per `POST /predict`, a new connection per request, after "
        f"{WARMUP_REQUESTS} warm-up requests. With stalled connections, "
        f"{STALLED} connections that stop inside their headers or body are held open for the "
        f"whole phase, at least {HOLD_S:g} s (each one the server drops at its 5 s request "
        f"deadline is replaced at once: {dropped} drops in all, {answered} of them answered "
        "408). Threads: the server process's `Threads:` from "
        f"/proc, peak while the phase ran (after warm-up: {result['idle_threads']}; the main "
        f"thread runs the asyncio loop, the {result['workers']} prediction workers start on "
        "demand). Goal: 0 errors, threads bounded. The machine is shared (1-minute load average "
        f"{load['before']} before, {load['after']} after on {os.cpu_count()} cores), so "
        "latencies move between runs; errors and threads do not.",
        bench.markdown_table(
            "clients | stalled conns | requests | errors | p50 ms | p99 ms | req/s | threads",
            bench.formatted(result["rows"], COLUMNS),
        ),
        more=[
            f"CPU (`lscpu | grep 'Model name'`): {result['lscpu_model']}",
            f"Bundle: {result['bundle_description']}",
        ],
    )


TINY = (
    "the tiny pipeline's (configs/tiny.yaml: a 1-layer, hidden-32 student of a random teacher, "
    "INT8; the model's time is small, so this measures the server)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle folder or .tar.gz (default: tiny)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench-serve-load"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--output", type=Path, default=bench.RESULTS / "serve_load.json")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    bundle = args.bundle or bench.tiny_bundle(args.scratch)
    started, load_before = time.time(), os.getloadavg()[0]
    result = measure(bundle, args.workers)
    result.update(
        load_average_1min={"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        date=datetime.date.today().isoformat(),
        seconds=round(time.time() - started, 1),
        lscpu_model=bench.cpu_info()[0],
        bundle_description=str(args.bundle) if args.bundle else TINY,
    )
    print(json.dumps(result["rows"], indent=2))
    section = None if args.no_docs else "serve-load"
    bench.publish(args.output, result, section, lambda: report(result))


if __name__ == "__main__":
    main()
