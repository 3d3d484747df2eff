"""`distillery gc`: remove stage folders that no registered version and no recent run uses.

What is kept: every stage folder named by the `stage.<stage>.key` tags of (a) the run of every
registered model version in the workdirs' MLflow stores, (b) the last `keep_runs` runs and every
run younger than `keep_days` or still RUNNING, and (c) the workdirs' `summary.json` (and the
previous one). A run tags every stage it used, upstream included, so a kept student keeps the
data, teacher and cache it was trained from. Everything else in the folders of every collectable
stage of `deploy/stage_table.py` goes, plus debris: build folders of killed stages (`.tmp-*`)
and folders moved aside as corrupt (`.corrupt-*`). A store shared by several workdirs must be
collected with all of them named (`--workdir` repeated), or the others' stages look unused.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from deploy.stage_table import COLLECTABLE
from distill.store import CORRUPT_PREFIX, MANIFEST, TMP_PREFIX, key_lock, sweep_stale_builds
from tasks.summary import StageUse

STAGE_TAG = re.compile(r"^stage\.(?P<stage>[a-z_]+)\.key$")
SUMMARIES = ("summary.json", "summary.previous.json")


@dataclass(frozen=True)
class Removal:
    path: Path
    bytes: int
    reason: str


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def keys_of_run_tags(tags: dict[str, str]) -> set[tuple[str, str]]:
    found = set()
    for tag, value in tags.items():
        match = STAGE_TAG.match(tag)
        if match:
            found.add((match["stage"], value))
    return found


def kept_keys(tracking_uri: str, keep_runs: int, keep_days: float) -> set[tuple[str, str]]:
    """(stage, key) pairs that registered versions and recent runs of one MLflow store use."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    from tasks.tracking import mlflow_client

    client = mlflow_client(tracking_uri)
    run_ids: set[str] = set()
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name = '{model.name}'"):
            if version.run_id:
                run_ids.add(version.run_id)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    keep: set[tuple[str, str]] = set()
    if experiments:
        newest = client.search_runs(
            experiments, max_results=max(keep_runs, 1), order_by=["attributes.start_time DESC"]
        )
        run_ids.update(run.info.run_id for run in newest[:keep_runs])
        since_ms = int((time.time() - keep_days * 86400) * 1000)
        recent = client.search_runs(
            experiments,
            filter_string=f"attributes.start_time >= {since_ms}",
            max_results=10000,
        )
        running = client.search_runs(
            experiments, filter_string="attributes.status = 'RUNNING'", max_results=10000
        )
        run_ids.update(run.info.run_id for run in [*recent, *running])
    for run_id in run_ids:
        try:
            keep |= keys_of_run_tags(client.get_run(run_id).data.tags)
        except MlflowException:  # a version whose run was deleted: nothing to keep for it
            continue
    return keep


def keys_of_summaries(workdir: Path) -> set[tuple[str, str]]:
    found = set()
    for name in SUMMARIES:
        try:
            used = SummaryStages.model_validate_json((Path(workdir) / name).read_bytes())
        except (OSError, ValueError):  # no summary, or one gc cannot read: it keeps nothing
            continue
        found |= {(stage, use.key) for stage, use in used.stages.items()}
    return found


class SummaryStages(BaseModel):
    """The part of `summary.json` (`tasks.summary.RunSummary`) gc reads: the stages it used."""

    stages: dict[str, StageUse] = {}


def plan(store: Path, keep: set[tuple[str, str]]) -> list[Removal]:
    """Finished stage folders not in `keep`, and folders moved aside as corrupt."""
    removals = []
    for stage in COLLECTABLE:
        folder = Path(store) / stage
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_dir():
                continue
            if path.name.startswith(CORRUPT_PREFIX):
                removals.append(Removal(path, folder_bytes(path), "moved aside as corrupt"))
            elif not path.name.startswith(".") and (stage, path.name) not in keep:
                removals.append(Removal(path, folder_bytes(path), "no kept run or version"))
    return removals


def remove(removal: Removal) -> bool:
    """Remove one folder under its key's lock (False: a run is using that key right now)."""
    path = removal.path
    key = path.name
    if key.startswith(CORRUPT_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
        return True
    from filelock import Timeout

    lock = key_lock(path.parent, key)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    try:
        # The manifest first: a folder interrupted half-way never looks finished.
        (path / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    finally:
        lock.release()
    return True


def collect(
    workdirs: Iterable[Path],
    store: Path,
    keep_runs: int = 5,
    keep_days: float = 7.0,
    dry_run: bool = False,
    tracking_uris: Iterable[str] | None = None,
) -> list[Removal]:
    """Remove (or, dry, list) what no kept run or version of `workdirs` uses in `store`.

    Call with every workdir's lock held. Returns the folders removed (or that would be)."""
    from tasks.tracking import default_tracking_uri

    workdirs = [Path(w).resolve() for w in workdirs]
    uris = set(tracking_uris or ()) | {default_tracking_uri(w) for w in workdirs}
    keep: set[tuple[str, str]] = set()
    for uri in sorted(uris):
        keep |= kept_keys(uri, keep_runs, keep_days)
    for workdir in workdirs:
        keep |= keys_of_summaries(workdir)
    removals = plan(store, keep)
    if dry_run:
        stale = [
            Removal(p, folder_bytes(p), "build folder of an interrupted run")
            for p in sorted(Path(store).glob(f"*/{TMP_PREFIX}*"))
            if p.is_dir()
        ]
        return stale + removals
    sizes = {p: folder_bytes(p) for p in Path(store).glob(f"*/{TMP_PREFIX}*") if p.is_dir()}
    swept = [
        Removal(path, sizes.get(path, 0), "build folder of an interrupted run")
        for path in sweep_stale_builds(store)
    ]
    return swept + [removal for removal in removals if remove(removal)]
