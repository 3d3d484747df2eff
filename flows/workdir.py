"""One pipeline run per workdir at a time, and cleaning up after one that was killed.

`workdir_lock` is taken by the CLI before the embedded Prefect server starts (that server keeps
its SQLite database in the workdir, and two of them migrating it at once fail), and again,
re-entrantly, by the flow itself (a served deployment has no CLI). A second run on the same
workdir waits for the first, saying who holds the lock; `timeout` bounds the wait (0: refuse at
once). The lock is an OS file lock (filelock): a killed holder releases it with its process.

Once the lock is held, whatever a previous holder left is debris and is cleaned here: build
folders of killed stages (`.tmp-*`) in the store and the workdir, and the embedded Prefect
server of a CLI killed with SIGKILL (Prefect starts it as a plain child process, which outlives
its parent). MLflow runs left RUNNING are closed by `tasks.recovery` inside the flow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

from distill.store import sweep_stale_builds

LOCK_FILE = ".distillery.lock"
HOLDER_FILE = ".distillery.lock.json"  # who holds the lock: pid, host, start time, command
# Workdir debris of interrupted writes: bundle builds and swaps, fetches, atomic file writes,
# and the bundle of a run killed before its gates (tasks.stages.UNGATED_BUNDLE).
WORKDIR_DEBRIS = (".tmp-*", ".old-bundle-*", ".fetch-*", ".*.tmp", ".ungated-bundle")

_held: dict[Path, int] = {}  # workdir -> nesting depth, for re-entrant use in one process
_held_guard = threading.Lock()


class WorkdirError(RuntimeError):
    """The workdir cannot be used (it cannot be created or written); the message names it."""


class WorkdirBusy(WorkdirError):
    """Another run holds the workdir's lock and the wait timed out."""


def holder(workdir: Path) -> dict | None:
    """What the current (or last) lock holder wrote about itself; None when unknown."""
    try:
        return json.loads((Path(workdir) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe_holder(info: dict | None) -> str:
    if not info:
        return "another distillery run"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"distillery run pid {info.get('pid')} on {info.get('host')} (started {started})"


@contextmanager
def workdir_lock(
    workdir: Path, timeout: float = -1, say: Callable[[str], None] | None = None
) -> Iterator[bool]:
    """Hold `<workdir>/.distillery.lock` for the block; yields True when this call took it
    (False when this process already held it). Waits for another holder, printing one line
    through `say` (stderr by default); `timeout` seconds >= 0 bound the wait (-1: no bound)."""
    workdir = Path(workdir).resolve()
    with _held_guard:
        if _held.get(workdir):
            _held[workdir] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield False
        finally:
            with _held_guard:
                _held[workdir] -= 1
        return

    lock = FileLock(workdir / LOCK_FILE)
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:  # before OSError: filelock's Timeout is a TimeoutError, an OSError
        _wait(lock, workdir, timeout, say)
    except OSError as err:  # read-only, not a folder, no permission: name the workdir
        raise WorkdirError(
            f"workdir {workdir} cannot be used: {err.strerror or err} (it must be a writable "
            "folder)"
        ) from None
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv),
        }
        (workdir / HOLDER_FILE).write_text(json.dumps(info))
        with _held_guard:
            _held[workdir] = 1
        yield True
    finally:
        with _held_guard:
            _held.pop(workdir, None)
        (workdir / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


def _wait(lock: FileLock, workdir: Path, timeout: float, say: Callable[[str], None]) -> None:
    """Another run holds the workdir: refuse (timeout 0) or wait, saying who holds it."""
    who = describe_holder(holder(workdir))
    if timeout == 0:
        raise WorkdirBusy(
            f"workdir {workdir} is in use by {who}; wait for it to finish or use another workdir"
        )
    say(f"workdir {workdir} is in use by {who}; waiting for it to finish")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise WorkdirBusy(
            f"workdir {workdir} is still in use by {who} after {timeout:g} s; "
            "wait for it to finish or use another workdir"
        ) from None


def remove_workdir_debris(workdir: Path) -> list[Path]:
    """Interrupted-write folders in the workdir itself (call with the workdir lock held)."""
    removed = []
    for pattern in WORKDIR_DEBRIS:
        for path in sorted(Path(workdir).glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def orphaned_prefect_servers(prefect_home: Path) -> list:
    """Embedded Prefect servers (uvicorn) whose PREFECT_HOME is `prefect_home`, other than this
    process's own children. With the workdir lock held, any such server is a killed run's."""
    import psutil

    home = str(Path(prefect_home).resolve())
    own = {child.pid for child in psutil.Process().children(recursive=True)}
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if "prefect.server.api.server:create_app" not in cmdline or process.pid in own:
                continue
            environ = process.environ()
        except (psutil.Error, OSError):
            continue
        if environ.get("PREFECT__SERVER_EPHEMERAL") == "1" and environ.get("PREFECT_HOME") == home:
            found.append(process)
    return found


def stop_orphaned_prefect_servers(prefect_home: Path) -> list[int]:
    """Terminate (then kill) the servers `orphaned_prefect_servers` finds; their pids."""
    import psutil

    servers = orphaned_prefect_servers(prefect_home)
    for server in servers:
        with suppress(psutil.Error):
            server.terminate()
    _, alive = psutil.wait_procs(servers, timeout=5)
    for server in alive:
        with suppress(psutil.Error):
            server.kill()
    return [server.pid for server in servers]


def recover_workdir(workdir: Path, store: Path, say: Callable[[str], None]) -> None:
    """Clean up after a killed run (call with the workdir lock held, before Prefect starts)."""
    workdir = Path(workdir).resolve()
    removed = remove_workdir_debris(workdir) + sweep_stale_builds(store)
    if Path(store).resolve() != workdir:
        removed += sweep_stale_builds(workdir)
    for path in removed:
        say(f"removed {path}: left by an interrupted run")
    prefect_home = os.environ.get("PREFECT_HOME")
    if prefect_home and "PREFECT_API_URL" not in os.environ:
        for pid in stop_orphaned_prefect_servers(Path(prefect_home)):
            say(f"stopped the embedded Prefect server (pid {pid}) of an interrupted run")
