"""Load test of `distillery serve`: concurrent clients, with and without 100 stalled connections.

    .venv/bin/python -m bench.serve_load [--bundle PATH] [--scratch DIR]

Starts the real CLI (`python -m flows.cli serve BUNDLE --port 0`) and sends bounded,
self-stopping traffic to 127.0.0.1 only: 8 and then 32 concurrent clients, each sending a fixed
number of `POST /predict` requests (one text each, a new connection per request), once alone and
once while 100 stalled connections are held open (half stop inside the headers, half declare
`Content-Length: 100` and send 10 bytes; each one the server drops is replaced at once, so 100
stay open throughout). Reports errors, p50/p99 latency and the server's thread count (sampled
from /proc/<pid>/status) into bench/results/serve_load.json and the "serve-load" section of
docs/benchmarks.md. Without --bundle the tiny pipeline's bundle is built in --scratch (as the
tests' `tiny_bundle` fixture builds it; stage folders there are reused on a rerun).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import (
    REPO,
    RESULTS,
    cpu_info,
    formatted,
    header,
    markdown_table,
    tiny_bundle,
    write_json,
    write_section,
)

CONCURRENCY = (8, 32)
REQUESTS = {8: 50, 32: 25}  # per client
STALLED = 100
CLIENT_TIMEOUT = 30.0
HOLD_S = 7.0  # stalls are held at least this long: past the server's 5 s request deadline
WARMUP_REQUESTS = 20
TEXT = "a gorgeous, witty and moving film that never outstays its welcome"


def start_server(bundle: Path, workers: int) -> tuple[subprocess.Popen, str, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", str(bundle), "--port", "0", "--threads", "1"]
        + ["--workers", str(workers)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()  # "serving BUNDLE on http://127.0.0.1:PORT"
    if "http://127.0.0.1:" not in line:
        process.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    host, port = line.rsplit("http://", 1)[1].strip().split(":")
    return process, host, int(port)


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no thread count for pid {pid}")


class ThreadSampler:
    """The server's largest thread count while `with` is active, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, thread_count(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, thread_count(self.pid))

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Stalls:
    """Holds `count` stalled connections open until stopped, replacing each one the server
    drops; counts the drops and the (408) answers the server gave them."""

    def __init__(self, host: str, port: int, count: int) -> None:
        self.address, self.count = (host, port), count
        self.dropped = self.answered_408 = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)
        self._opened = 0

    def _open(self) -> socket.socket:
        conn = socket.create_connection(self.address, timeout=CLIENT_TIMEOUT)
        if self._opened % 2:
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        else:
            head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
            conn.sendall(head + b'{"texts": ')
        conn.setblocking(False)
        self._opened += 1
        return conn

    def _hold(self) -> None:
        import selectors

        selector = selectors.DefaultSelector()
        for _ in range(self.count):
            selector.register(self._open(), selectors.EVENT_READ)
        self.ready.set()
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                conn = key.fileobj
                try:
                    reply = conn.recv(65536)
                except OSError:
                    reply = b""
                self.answered_408 += b" 408 " in reply.split(b"\r\n", 1)[0]
                self.dropped += 1
                selector.unregister(conn)
                conn.close()
                selector.register(self._open(), selectors.EVENT_READ)
        for key in list(selector.get_map().values()):
            key.fileobj.close()

    def __enter__(self) -> Stalls:
        self.ready = threading.Event()
        self._thread.start()
        self.ready.wait(timeout=CLIENT_TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
    threads = [
        threading.Thread(target=client, args=(host, port, requests, latencies, errors))
        for _ in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": clients * requests,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "requests_per_s": round(len(latencies) / wall, 1),
    }


def measure(bundle: Path, workers: int) -> dict[str, Any]:
    process, host, port = start_server(bundle, workers)
    try:
        run_clients(host, port, 1, WARMUP_REQUESTS)
        idle = thread_count(process.pid)
        rows = []
        for stalled in (0, STALLED):
            for clients in CONCURRENCY:
                with ThreadSampler(process.pid) as sampler:
                    if stalled:
                        with Stalls(host, port, stalled) as stalls:
                            held_from = time.monotonic()
                            row = run_clients(host, port, clients, REQUESTS[clients])
                            time.sleep(max(0.0, HOLD_S - (time.monotonic() - held_from)))
                        row["stalled_dropped_by_server"] = stalls.dropped
                        row["stalled_answered_408"] = stalls.answered_408
                    else:
                        row = run_clients(host, port, clients, REQUESTS[clients])
                rows.append({"stalled_connections": stalled, **row, "peak_threads": sampler.peak})
        return {"idle_threads": idle, "workers": workers, "rows": rows}
    finally:
        process.terminate()
        process.wait(timeout=10)


def report(result: dict[str, Any]) -> str:
    columns = {
        "clients": "",
        "stalled_connections": "",
        "requests": "",
        "errors": "",
        "p50_ms": ".1f",
    }
    columns |= {"p99_ms": ".1f", "requests_per_s": ".0f", "peak_threads": ""}
    rows = formatted(result["rows"], columns)
    table = markdown_table(
        "clients | stalled conns | requests | errors | p50 ms | p99 ms | req/s | threads",
        rows,
    )
    dropped = sum(row.get("stalled_dropped_by_server", 0) for row in result["rows"])
    answered = sum(row.get("stalled_answered_408", 0) for row in result["rows"])
    return (
        "## Edge server under load (serve-load)\n\n"
        f"{header('serve-load')}  \n"
        f"CPU (`lscpu | grep 'Model name'`): {result['lscpu_model']}  \n"
        f"Bundle: {result['bundle_description']}\n\n"
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
        "demand). Goal: 0 errors, threads bounded. The machine "
        "is shared (1-minute load average "
        f"{result['load_average_1min']['before']} before, "
        f"{result['load_average_1min']['after']} after on {os.cpu_count()} cores), so latencies "
        "move between runs; errors and threads do not.\n\n"
        f"{table}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle folder or .tar.gz (default: tiny)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench-serve-load"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS / "serve_load.json")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    if args.bundle is not None:
        bundle, description = args.bundle, str(args.bundle)
    else:
        bundle = tiny_bundle(args.scratch)
        description = (
            "the tiny pipeline's (configs/tiny.yaml: a 1-layer, hidden-32 student of a random "
            "teacher, INT8; the model's time is small, so this measures the server)"
        )
    started, load_before = time.time(), os.getloadavg()[0]
    result = measure(bundle, args.workers)
    result.update(
        load_average_1min={"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        date=datetime.date.today().isoformat(),
        seconds=round(time.time() - started, 1),
        lscpu_model=cpu_info()[0],
        bundle_description=description,
    )
    write_json(args.output, result)
    print(json.dumps(result["rows"], indent=2))
    if not args.no_docs:
        write_section("serve-load", report(result))


if __name__ == "__main__":
    main()
