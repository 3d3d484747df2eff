"""The one sha256 of a file and the one way to write a file atomically.

Standard library only: the torch-free edge runtime (deploy/runtime.py) imports it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (read in chunks: any size)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` when the block succeeds,
    removed when it fails: readers see the old file or the new one, never a half-written one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, content: bytes) -> None:
    """Write `path` under a temporary name and rename it into place: never half-written."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())
