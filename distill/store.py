"""Content-addressed stage folders: `<store>/<stage>/<key>/` with `manifest.json` as "done".

A stage builds into a hidden temporary folder beside its final one and is renamed into place
only after its manifest is written, so a failed or interrupted stage never leaves a folder that
looks finished. A folder whose manifest validates against the stage's manifest model is reused
as it is; one whose manifest does not (an older format, a hand edit) is rebuilt, never misread.
A per-key file lock makes two runs sharing one store build a stage once: the second waits, then
reuses the first's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, ValidationError

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class StageManifest(BaseModel):
    """Base of every stage's manifest model: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=StageManifest)


@dataclass(frozen=True)
class Artifact(Generic[M]):
    """What one stage hands the next: where its files are, its key and its typed manifest."""

    stage: str
    key: str
    path: Path
    manifest: M
    reused: bool = False
    seconds: float = 0.0

    def file(self, name: str) -> Path:
        return self.path / name


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hash of JSON-serialisable parts; equal inputs give equal keys across processes."""
    payload = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def stage_key(stage: str, version: int, *inputs: Any) -> str:
    """Every stage's key: its name, its code version and what it depends on.

    Downstream stages pass their upstream artifacts' keys among `inputs`, so bumping one stage's
    `VERSION` changes its key and every key after it.
    """
    return stable_hash(stage, version, *inputs)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The raw manifest of a folder, or None when it has none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_manifest(folder: Path, stage: str, key: str, manifest_type: type[M]) -> M | None:
    """The folder's manifest as `manifest_type`; None when missing or not valid (logged)."""
    try:
        raw = read_manifest(folder)
    except (OSError, json.JSONDecodeError) as err:
        log.warning("stage folder %s: unreadable manifest (%s); rebuilding it", folder, err)
        return None
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.pop("stage", None) != stage or raw.pop("key", None) != key:
        log.warning("stage folder %s: manifest names another stage or key; rebuilding it", folder)
        return None
    try:
        return manifest_type.model_validate(raw)
    except ValidationError as err:
        log.warning(
            "stage folder %s: manifest does not match %s (%d problems, first: %s); rebuilding it",
            folder,
            manifest_type.__name__,
            err.error_count(),
            err.errors()[0]["loc"],
        )
        return None


def run_stage(
    store: Path,
    stage: str,
    key: str,
    build: Callable[[Path], M],
    manifest_type: type[M],
) -> Artifact[M]:
    """Return the finished stage at `<store>/<stage>/<key>`, building it if needed.

    `build(folder)` writes the stage's files into `folder` and returns its manifest.
    """
    final = Path(store) / stage / key
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{key}.lock"):
        existing = load_manifest(final, stage, key, manifest_type)
        if existing is not None:
            return Artifact(stage, key, final, existing, reused=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.perf_counter()
        try:
            manifest = build(tmp)
            if not isinstance(manifest, manifest_type):
                raise TypeError(
                    f"stage {stage}: build returned {type(manifest).__name__}, "
                    f"expected {manifest_type.__name__}"
                )
            data = {"stage": stage, "key": key, **manifest.model_dump(mode="json")}
            write_json_atomic(tmp / MANIFEST, data)
            if final.exists():  # debris of an older failure, or an outdated manifest
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(stage, key, final, manifest, seconds=time.perf_counter() - started)
