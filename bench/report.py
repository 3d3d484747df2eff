"""Shared by the benchmark scripts: machine description and Markdown sections in benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from distill import memory
from distill.files import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"
DEFAULT_CONFIG = str(REPO / "configs" / "movie_reviews.yaml")


def cpu_info() -> tuple[str, str]:
    """The CPU's model name (as `lscpu` reports it) and its vector-instruction flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
        all_flags = re.search(r"flags\s*:\s*(.*)", info).group(1).split()
    except (OSError, AttributeError):
        return "unknown CPU", ""
    vector = ("avx", "fma", "amx", "sse4", "vnni")
    return cpu, " ".join(f for f in all_flags if f.startswith(vector))


def machine() -> dict[str, str]:
    cpu, flags = cpu_info()
    import torch

    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "cpu_flags": flags,
        "torch_threads": str(torch.get_num_threads()), "python": platform.python_version(),
        "torch": torch.__version__,
    }  # fmt: skip


def command_line() -> str:
    """The command as a user types it from the repository root (`python -m bench.NAME ...`)."""
    script, *args = sys.argv
    path = Path(script).resolve()
    parts = ["-m", f"bench.{path.stem}", *args] if path.parent == REPO / "bench" else sys.argv
    return " ".join(shlex.quote(part) for part in [".venv/bin/python", *parts])


def header() -> str:
    """The command, date and machine lines every section starts with."""
    info = machine()
    return (
        f"Command: `{command_line()}`  \n"
        f"Date: {datetime.date.today().isoformat()}  \n"
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['cpu_flags']}), "
        f"torch {info['torch']} with {info['torch_threads']} threads"
    )


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD.write_text(text)


def markdown_table(header_row: str | list[str], rows: list[list[str]]) -> str:
    """`header_row`: the column names, or one string of them separated by " | "."""
    if isinstance(header_row, str):
        header_row = header_row.split(" | ")
    lines = ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def timing_runner(seconds: dict[str, float]):
    """A `distill.chain` runner that runs each stage here and notes its wall seconds (with
    the flow's allocator setting, so a benchmark's process runs as a user's run does)."""
    memory.keep_large_blocks_out_of_heap()

    def run(stage, build):
        started = time.perf_counter()
        artifact = build(None)
        seconds[stage] = time.perf_counter() - started
        return artifact

    return run


def formatted(rows: list[dict], columns: dict[str, str]) -> list[list[str]]:
    """Table cells: each row's value at each of `columns`' keys, in that key's format spec."""
    return [[format(row[key], spec) for key, spec in columns.items()] for row in rows]


def means(group: list[dict], keys: Sequence[str]) -> list[str]:
    """Each key's mean ± standard deviation over the rows of one group (one row: its value)."""
    values = [[row[key] for row in group] for key in keys]
    if len(group) == 1:
        return [f"{value:.4f}" for (value,) in values]
    return [f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" for v in values]


def arguments(
    parser: argparse.ArgumentParser,
    output: str | None,
    section: str | None = None,
    config: bool = True,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    """The arguments with the shared ones: --config (the default profile), --output
    (bench/results/OUTPUT), --section (when given), --store (added to the overrides, so every
    config loaded from them names the same store) and the key=value overrides."""
    if config:
        parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--output", default=output and str(RESULTS / output))
    if section is not None:
        parser.add_argument("--section", default=section, help="benchmarks.md section ('' skips)")
    parser.add_argument("--store", help="the stage store to use (default: the config's store)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args(argv)
    if args.store:
        args.overrides = [*args.overrides, f"store={args.store}"]
    return args


def section(title: str, *parts: str, more: Sequence[str] = ()) -> str:
    """A benchmarks.md section: its title, the `header` and `more` header lines, the parts."""
    return "\n\n".join([title, "  \n".join([header(), *more]), *parts])


def publish(output: str | Path, result: object, name: str | None, render) -> None:
    """Write the results JSON, then (when `name` is set) `render()` as that docs section."""
    write_json(output, result)
    if name:
        write_section(name, render())


def results_json(data: object, depth: int = 0) -> str:
    """`data` as indented JSON, except that a list of scalars stays on one line: a run's 1,057
    test predictions are one line of a results file, not 1,057, so its diffs stay readable."""
    if isinstance(data, dict) and data:
        inner, close = "  " * (depth + 1), "  " * depth
        items = [
            f"{inner}{json.dumps(json_key(key))}: {results_json(value, depth + 1)}"
            for key, value in data.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{close}}}"
    if isinstance(data, list | tuple) and any(isinstance(v, dict | list | tuple) for v in data):
        inner, close = "  " * (depth + 1), "  " * depth
        items = [inner + results_json(value, depth + 1) for value in data]
        return "[\n" + ",\n".join(items) + f"\n{close}]"
    return json.dumps(data)


def json_key(key: object) -> str:
    """A dict key as `json.dumps` spells it (1 -> "1", True -> "true", None -> "null")."""
    return key if isinstance(key, str) else json.dumps(key)


def write_json(path: str | Path, data: object) -> None:
    """Write a results file whole or not at all (a benchmark killed mid-write keeps the old one)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(path), results_json(data) + "\n")


def read_results(name: str) -> dict:
    """The shared results file bench/results/NAME ({} before any benchmark wrote it)."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else {}


def update_results(name: str, **keys: object) -> None:
    """Set `keys` of the shared results file bench/results/NAME (e.g. strong_path.json, which
    several benchmarks fill), keeping every other key."""
    write_json(RESULTS / name, read_results(name) | keys)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SCORES = ("test_accuracy", "macro_f1", "teacher_accuracy", "retention", "int8_accuracy")


def scores(run) -> dict[str, float]:
    """The test scores of one student's run (`deploy.chain.run_after_cache`) that the tables use."""
    report = run.evaluation.manifest
    return {
        "test_accuracy": report.student_accuracy, "macro_f1": report.student_macro_f1,
        "teacher_accuracy": report.teacher_accuracy, "retention": report.retention,
        "int8_accuracy": run.quantize.manifest.test_accuracy,
    }  # fmt: skip


def tiny_bundle(scratch: Path) -> Path:
    """The tests' tiny bundle: every stage of configs/tiny.yaml in `scratch`, then the bundle."""
    from deploy.bundle import bundle_from_stages
    from deploy.chain import run_pipeline_stages
    from distill.config import load_config

    overrides = [f"workdir={scratch}", f"store={scratch / 'store'}"]
    config = load_config(REPO / "configs" / "tiny.yaml", overrides)
    stages = run_pipeline_stages(config, config.store_dir)
    return bundle_from_stages(config.workdir, stages, run_id="bench", model_version="0")


COLD_START = """
import json, sys, time
from pathlib import Path
from deploy.runtime import load_bundle, predict, with_graph
bundle = load_bundle(sys.argv[1], threads=1)
if sys.argv[2] == "1":
    bundle = with_graph(bundle, Path(sys.argv[1]) / str(bundle.manifest.mobile_model), threads=1)
predict(bundle, [sys.argv[3]])
print(json.dumps({"at": time.time(), "torch_loaded": "torch" in sys.modules}))
"""


def cold_starts(
    bundle: Path, text: str, runs: int, mobile: bool = False
) -> list[tuple[float, dict]]:
    """Each of `runs` new Python processes that load `bundle` (its `.ort` graph when `mobile`)
    with `deploy.runtime` and predict `text`: the seconds from its start to the prediction, and
    the JSON it printed (`torch_loaded`)."""
    out = []
    for _ in range(runs):
        started = time.time()
        command = [sys.executable, "-c", COLD_START, str(bundle), "1" if mobile else "0", text]
        stdout = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        child = json.loads(stdout.strip().splitlines()[-1])
        out.append((child["at"] - started, child))
    return out


def wait_for(probe, timeout: float, what: str, pause: float = 0.25):
    """`probe()`'s first truthy value (an exception counts as "not yet"); TimeoutError naming
    `what` when `timeout` seconds pass without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception:  # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        time.sleep(pause)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def start(command: list, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a service in its own process group, so teardown stops it and its children
    (a Dask nanny's worker, a server's workers)."""
    output = open(log, "w")  # noqa: SIM115 - the child owns it until it exits
    command = [str(part) for part in command]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
