"""The fault suite's shared scratch space and small judges (used by tests/faults/test_fault_*.py).

One prepared store and base workdir serve every fault: a fault that leaves the store alone
runs in a fresh workdir on the shared store, one that damages it on a private copy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
MODEL = "distillery-tiny-student"
RUN_TIMEOUT = 420


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Suite:
    """Shared scratch space: the prepared store, the base workdir and helpers to run the CLI."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.store = scratch / "store"
        self.base = scratch / "base"
        self.prefect_home = scratch / "prefect-home"
        self.base_output = ""
        self.base_summary: dict = {}

    def env(self, own_prefect: bool = False, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env |= {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if not own_prefect:  # one Prefect database for the suite: no 20 s migration per fault
            env["PREFECT_HOME"] = str(self.prefect_home)
        return env | extra

    def cli(self, *args: str, timeout: float = RUN_TIMEOUT, **env) -> subprocess.CompletedProcess:
        """The real CLI in a fresh process; a timeout is exit 124, not an exception."""
        try:
            return subprocess.run(
                [sys.executable, "-m", "flows.cli", *map(str, args)],
                cwd=REPO,
                env=self.env(**env),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout
            return subprocess.CompletedProcess(
                err.cmd, 124, out or "", f"timed out after {timeout}s"
            )

    def popen(self, log: Path, *args: str, own_prefect: bool = False) -> subprocess.Popen:
        """A CLI process writing to `log` (not a pipe: a server orphaned by SIGKILL would hold
        a pipe open, and a full pipe would stall the run)."""
        with open(log, "w") as handle:
            return subprocess.Popen(
                [sys.executable, "-m", "flows.cli", *args],
                cwd=REPO,
                env=self.env(own_prefect),
                stdout=handle,
                stderr=subprocess.STDOUT,
                # As if typed in a terminal: a suite started in the background by a shell
                # inherits SIGINT ignored, and so would the CLI, so Ctrl-C would test nothing.
                preexec_fn=_interruptible,
            )

    def run(self, workdir: Path, *overrides: str, store: Path | None = None, **env):
        store = store or self.store
        return self.cli("run", TINY, f"workdir={workdir}", f"store={store}", *overrides, **env)

    def fresh(self, name: str, copy_store: bool = False) -> tuple[Path, Path]:
        """A new workdir; its store is the shared one, or a private copy to damage."""
        workdir = self.scratch / "faults" / name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        if not copy_store:
            return workdir, self.store
        store = workdir / "store"
        shutil.copytree(self.store, store, ignore=shutil.ignore_patterns(".*.lock"))
        return workdir, store

    def prepare(self) -> None:
        """The base run: a fresh workdir and store, as a user's first run."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        result = self.run(self.base)
        if result.returncode != 0:
            raise RuntimeError(f"the base run failed:\n{output(result)[-3000:]}")
        self.base_output = output(result)
        self.base_summary = json.loads((self.base / "summary.json").read_text())

    def stage_dir(self, store: Path, stage: str) -> Path:
        """The base run's folder of `stage` in `store` (the shared store or a copy of it)."""
        return store / stage / self.base_summary["stages"][stage]["key"]


def output(result: subprocess.CompletedProcess) -> str:
    return (result.stdout or "") + (result.stderr or "")


def clean_error(result: subprocess.CompletedProcess, *words: str) -> tuple[bool, str]:
    """Exit 2 with one `error:` line that mentions every word, and no traceback."""
    text = output(result)
    line = next((ln for ln in text.splitlines() if ln.startswith("error:")), "")
    ok = (
        result.returncode == 2
        and "Traceback" not in text
        and bool(line)
        and all(word.lower() in line.lower() for word in words)
    )
    last = text.strip().splitlines()[-1] if text.strip() else "(no output)"
    return ok, (line or f"exit {result.returncode}: {last}")[:300]


def client(workdir: Path):
    from tasks.tracking import mlflow_client, sqlite_uri

    return mlflow_client(sqlite_uri(workdir))


def versions(workdir: Path | str) -> list:
    workdir = Path(workdir)
    if not (workdir / "mlflow.db").exists():
        return []
    found = client(workdir).search_model_versions(f"name = '{MODEL}'")
    return sorted(found, key=lambda v: int(v.version))


def aliases(workdir: Path) -> dict[str, str]:
    from tasks.registry import aliases as read

    try:
        return read(client(workdir), MODEL)
    except Exception:
        return {}


def run_statuses(workdir: Path) -> dict[str, str]:
    mlflow = client(workdir)
    ids = [e.experiment_id for e in mlflow.search_experiments()]
    return {r.info.run_id: r.info.status for r in mlflow.search_runs(ids)} if ids else {}


def write_csv(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def review_rows(count: int, labels: tuple[str, str] = ("neg", "pos")) -> list[tuple[str, str]]:
    """Distinct short texts with alternating labels (enough for a tiny split)."""
    words = ["good", "bad", "dull", "great", "slow", "fun", "long", "sharp", "flat", "warm"]
    return [
        (f"review {i} was {words[i % 10]} and {words[(i * 7) % 10]} number {i}", labels[i % 2])
        for i in range(count)
    ]


def data_stage(store: Path, source: Path, **data):
    """The data stage alone, in this process, on `source` with the tiny config."""
    from distill.config import load_config
    from distill.data import data_stage as build

    overrides = [f"data.source={source}", "data.max_examples=null"]
    overrides += [f"data.{key}={value}" for key, value in data.items()]
    config = load_config(TINY, [f"workdir={store}", *overrides])
    return build(store, config.data, config.teacher.model)


def orphans(prefect_home: Path) -> list[int]:
    from flows.workdir import orphaned_prefect_servers

    return [p.pid for p in orphaned_prefect_servers(prefect_home)]


def wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False
