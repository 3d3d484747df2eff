"""Content-addressed stage folders: `<store>/<stage>/<key>/` with `manifest.json` as "done".

A stage builds into a hidden temporary folder beside its final one and is renamed into place
only after its manifest is written, so a failed or interrupted stage never leaves a folder that
looks finished. A folder whose manifest validates against the stage's manifest model is reused
as it is; one whose manifest does not (an older format, a hand edit) is rebuilt, never misread.
The manifest also records every file's size and sha256 (`_files`); a folder whose files no longer
match (weights overwritten, a truncated cache) is moved aside to `.corrupt-<key>-*` and rebuilt,
with a warning naming the folder and the file. A per-key file lock makes two runs sharing one
store build a stage once: the second waits, then reuses the first's folder. A `.tmp-<key>-*`
build folder whose key lock nobody holds is debris of a killed build and is removed.
"""

from __future__ import annotations

import errno
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

from filelock import FileLock, Timeout
from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

# The one sha256 and atomic writer (distill.files); stages also import them from here.
from distill.files import file_sha256, write_json_atomic

MANIFEST = "manifest.json"
# Manifest key of the recorded files, {relative path: {"bytes", "sha256"}}; no model field can
# start with "_", so it never collides with a stage's own fields.
FILES = "_files"
TMP_PREFIX = ".tmp-"
CORRUPT_PREFIX = ".corrupt-"
log = logging.getLogger(__name__)


class StoreFullError(OSError):
    """The store's disk is full: a stage could not be written. Not worth retrying until space
    is freed; the message names the folder."""


NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# Writers do not all raise ENOSPC: safetensors raises its own error with the OS's message in
# it, numpy a bare OSError ("requested and written"). An OSError with less than this free
# beside it is taken as a full disk too (never another error: bad data stays bad data).
FULL_DISK_FREE_BYTES = 1 << 20
NO_SPACE_MESSAGES = tuple(os.strerror(code) for code in sorted(NO_SPACE))


def disk_full(err: Exception, folder: Path) -> bool:
    """Whether `err`, raised while writing into `folder`, comes from a full disk."""
    if isinstance(err, OSError) and err.errno in NO_SPACE:
        return True
    if any(message in str(err) for message in NO_SPACE_MESSAGES):
        return True
    if not isinstance(err, OSError):
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_FREE_BYTES
    except OSError:
        return False


class StageManifest(BaseModel):
    """Base of every stage's manifest model: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ManifestRecord(BaseModel):
    """A typed part of a stage manifest (a gate's settings, a vocabulary's numbers): frozen,
    unknown keys rejected, and an optional field that is None left out of the JSON, as the
    plain dicts these records replaced left it out (so a manifest's JSON keeps its shape)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {name: value for name, value in handler(self).items() if value is not None}


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
    peak_rss_bytes: int | None = None  # the process's peak while the stage ran (tasks/ sets it)

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


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The raw manifest of a folder, or None when it has none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def record_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in a stage folder but its manifest, by relative path."""
    return {
        path.relative_to(folder).as_posix(): {
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def file_mismatches(folder: Path, recorded: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between a folder's files and its recorded list: one line per file.

    Sizes first (free), a sha256 only where the size matches."""
    problems = []
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != expected["bytes"]:
            problems.append(f"{name} has {size} bytes, its manifest records {expected['bytes']}")
        elif file_sha256(path) != expected["sha256"]:
            problems.append(f"{name} does not match the sha256 recorded in its manifest")
    return problems


def load_manifest(folder: Path, stage: str, key: str, manifest_type: type[M]) -> M | None:
    """The folder's manifest as `manifest_type`; None when missing or not valid (logged).

    The recorded files are not checked here (see `verified_manifest`)."""
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
    raw.pop(FILES, None)
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


def verified_manifest(
    folder: Path,
    stage: str,
    key: str,
    manifest_type: type[M],
    accept: Callable[[M], str | None] | None = None,
) -> M | None:
    """The manifest of a finished folder whose files still match it; None: rebuild it.

    A folder that does not match (or that `accept` rejects, with a reason) is moved aside to
    `.corrupt-<key>-*` beside it (kept for inspection; `distillery gc` removes it) and the
    warning names the folder and what differs. Folders written before files were recorded are
    trusted as they are."""
    manifest = load_manifest(folder, stage, key, manifest_type)
    if manifest is None:
        return None
    raw = read_manifest(folder) or {}
    problems = file_mismatches(folder, raw.get(FILES) or {})
    if not problems and accept is not None:
        reason = accept(manifest)
        problems = [reason] if reason else []
    if not problems:
        return manifest
    aside = folder.with_name(f"{CORRUPT_PREFIX}{key}-{time.strftime('%Y%m%dT%H%M%S')}")
    aside = aside.with_name(f"{aside.name}-{uuid.uuid4().hex[:6]}")
    os.replace(folder, aside)
    log.warning(
        "stage folder %s does not match its manifest: %s; moved aside to %s, rebuilding it",
        folder,
        "; ".join(problems),
        aside.name,
    )
    return None


def key_lock(stage_dir: Path, key: str) -> FileLock:
    return FileLock(stage_dir / f".{key}.lock")


def sweep_stale_builds(store: Path) -> list[Path]:
    """Remove `.tmp-<key>-*` build folders under `store` whose key lock nobody holds.

    A live build holds its key's lock for as long as its tmp folder exists, so a tmp folder
    whose lock can be taken is what a killed process left behind. Returns what was removed."""
    removed = []
    for tmp in sorted(Path(store).glob(f"*/{TMP_PREFIX}*")):
        if not tmp.is_dir():
            continue
        key = tmp.name[len(TMP_PREFIX) :].rsplit("-", 1)[0]
        lock = key_lock(tmp.parent, key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # being built right now
        try:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
        finally:
            lock.release()
    return removed


def run_stage(
    store: Path,
    stage: str,
    key: str,
    build: Callable[[Path], M],
    manifest_type: type[M],
    accept: Callable[[M], str | None] | None = None,
) -> Artifact[M]:
    """Return the finished stage at `<store>/<stage>/<key>`, building it if needed.

    `build(folder)` writes the stage's files into `folder` and returns its manifest. `accept`
    (optional) judges a finished folder's manifest against its upstream: a reason string sends
    the folder aside and rebuilds it, as a file that no longer matches does.
    """
    final = Path(store) / stage / key
    final.parent.mkdir(parents=True, exist_ok=True)
    with key_lock(final.parent, key):
        existing = verified_manifest(final, stage, key, manifest_type, accept)
        if existing is not None:
            return Artifact(stage, key, final, existing, reused=True)
        # We hold the key's lock: any other build folder of this key is a killed build's.
        for debris in final.parent.glob(f"{TMP_PREFIX}{key}-*"):
            shutil.rmtree(debris, ignore_errors=True)
            log.warning("removed %s: a build folder left by an interrupted run", debris)
        tmp = final.parent / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        try:
            tmp.mkdir()
            manifest = build(tmp)
            if not isinstance(manifest, manifest_type):
                raise TypeError(
                    f"stage {stage}: build returned {type(manifest).__name__}, "
                    f"expected {manifest_type.__name__}"
                )
            data = {
                "stage": stage,
                "key": key,
                **manifest.model_dump(mode="json"),
                FILES: record_files(tmp),
            }
            write_json_atomic(tmp / MANIFEST, data)
            if final.exists():  # debris of an older failure, or an outdated manifest
                shutil.rmtree(final)
            os.replace(tmp, final)
        except Exception as err:
            if not disk_full(err, final.parent):
                raise
            raise StoreFullError(
                f"no space left on the disk of {final.parent} while writing stage '{stage}' "
                f"({type(err).__name__}: {err}); nothing half-written was kept: free space "
                "(`distillery gc` removes unused stage folders) or point `store` at a larger "
                "disk, and run again",
            ) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(stage, key, final, manifest, seconds=time.perf_counter() - started)
