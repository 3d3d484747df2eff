"""Shared by the benchmark scripts: machine description and Markdown sections in benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"


def machine() -> dict[str, str]:
    cpu, flags = "unknown CPU", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
        all_flags = re.search(r"flags\s*:\s*(.*)", info).group(1).split()
        flags = " ".join(
            f for f in all_flags if f.startswith(("avx", "fma", "amx", "sse4", "vnni"))
        )
    except (OSError, AttributeError):
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "cpu_flags": flags,
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def command_line() -> str:
    """The command as a user types it from the repository root (`python -m bench.NAME ...`)."""
    script, *args = sys.argv
    path = Path(script).resolve()
    if path.parent == REPO / "bench":
        return " ".join(
            shlex.quote(part) for part in [".venv/bin/python", "-m", f"bench.{path.stem}", *args]
        )
    return " ".join(shlex.quote(part) for part in [".venv/bin/python", *sys.argv])


def header(title: str) -> str:
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


def markdown_table(header_row: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def timing_runner(seconds: dict[str, float]):
    """A `distill.chain` runner that runs each stage here and notes its wall seconds."""

    def run(stage, build):
        started = time.perf_counter()
        artifact = build(None)
        seconds[stage] = time.perf_counter() - started
        return artifact

    return run


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
