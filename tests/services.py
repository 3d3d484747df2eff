"""Real services for tests: free loopback ports, processes in their own group, readiness waits."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.report import free_port as free_port
from bench.report import start as start
from bench.report import stop as stop
from bench.report import wait_for

REPO = Path(__file__).resolve().parents[1]


def wait_until(
    probe: Callable[[], Any],
    timeout: float,
    what: str,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> Any:
    """`probe()`'s first truthy value; fails the test naming `what` (and the log's tail)."""
    tail = (lambda: Path(log).read_text()[-3000:]) if log else (lambda: "")

    def alive_and_probe() -> Any:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: process exited\n{tail()}")  # not an Exception: not retried
        return probe()

    try:
        return wait_for(alive_and_probe, timeout, what, pause=0.5)
    except TimeoutError:
        pytest.fail(f"{what}: not ready after {timeout} s\n{tail()}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
