"""Content-addressed stage folders: `<workdir>/<stage>/<key>/` with `manifest.json` as "done".

A stage builds into a hidden temporary folder beside its final one and is renamed into place
only after its manifest is written, so a failed or interrupted stage never leaves a folder that
looks finished. A folder whose manifest exists is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    """What one stage hands the next: where its files are, its key and its manifest."""

    stage: str
    key: str
    path: Path
    manifest: Mapping[str, Any] = field(hash=False)
    reused: bool = False
    seconds: float = 0.0

    def file(self, name: str) -> Path:
        return self.path / name


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hash of JSON-serialisable parts; equal inputs give equal keys across processes."""
    payload = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def run_stage(
    workdir: Path,
    stage: str,
    key: str,
    build: Callable[[Path], dict[str, Any]],
) -> Artifact:
    """Return the finished stage at `<workdir>/<stage>/<key>`, building it if needed.

    `build(folder)` writes the stage's files into `folder` and returns its manifest.
    """
    final = Path(workdir) / stage / key
    existing = read_manifest(final)
    if existing is not None:
        return Artifact(stage, key, final, existing, reused=True)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.perf_counter()
    try:
        manifest = {"stage": stage, "key": key, **build(tmp)}
        write_json_atomic(tmp / MANIFEST, manifest)
        if final.exists():  # a folder without a manifest is debris of an older failure
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(stage, key, final, manifest, seconds=time.perf_counter() - started)
