"""Real services for tests: free loopback ports, processes in their own group, readiness waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a service in its own process group, so teardown stops it and its children
    (a Dask nanny's worker, a server's workers)."""
    return subprocess.Popen(
        [str(part) for part in command],
        cwd=REPO,
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115 - the child owns it until it exits
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(
    probe: Callable[[], Any],
    timeout: float,
    what: str,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> Any:
    """`probe()`'s first truthy value; fails the test naming `what` (and the log's tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: process exited\n{Path(log).read_text()[-3000:] if log else ''}")
        try:
            value = probe()
        except Exception:  # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        time.sleep(0.5)
    tail = Path(log).read_text()[-3000:] if log else ""
    pytest.fail(f"{what}: not ready after {timeout} s\n{tail}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
