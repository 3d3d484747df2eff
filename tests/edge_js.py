"""Helpers for the tests that run the bundle in JavaScript (edge/js): where node and the
installed npm packages are, and a skip (or, in CI, a failure) when they are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

JS = REPO / "edge" / "js"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))  # browser.mjs reads it too


def require(ok: bool, what: str) -> None:
    """Skip a test whose tool is missing; in CI (`make test` installs them all) fail instead."""
    if ok:
        return
    message = f"{what} (`make setup-js setup-browser` installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def node_packages_ready() -> bool:
    return shutil.which("node") is not None and (JS / "node_modules" / "@huggingface").is_dir()


def require_node_packages() -> str:
    node = shutil.which("node")
    require(node is not None, "node is not on PATH")
    require((JS / "node_modules" / "@huggingface" / "transformers").is_dir(), f"{JS} not installed")
    return str(node)


def require_chromium() -> Path:
    require(CHROMIUM.is_file(), f"{CHROMIUM} is missing")
    return CHROMIUM


def run_node(*args: str, env: dict[str, str] | None = None, timeout: float = 180):
    node = require_node_packages()
    return subprocess.run(
        [node, *args],
        cwd=JS,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
