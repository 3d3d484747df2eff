"""A profile's first run from an empty store, as users run it: wall time and peak memory per stage.

    nice -n 5 .venv/bin/python -m bench.first_run --config configs/movie_reviews_mpnet.yaml
        --scratch /work/first-run-mpnet [key=value ...]

Runs `/usr/bin/time -v distillery run CONFIG store=SCRATCH/store workdir=SCRATCH/work` (the
embedded Prefect server, MLflow on SQLite, every stage built), then reads the run's summary:
each stage's wall seconds and peak resident memory (`distill/memory.py`: the high-water mark
reset at the stage's start), the run's wall time, the process's peak as `time -v` reports it
(since the last stage's reset: see README, "Memory"), and the accuracies. A finished run in
SCRATCH (its summary and time log there) is read, not run again. Also records how the logit
cache was labelled and how long the labelling itself took. Writes strong_path.json's
`first_run` (issue 23, part 3) and `memory` (part 6) entries under --label (default: the
profile's name; another label keeps an earlier run beside this one), and the benchmarks.md
section "first_run".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

from bench import report as bench
from deploy.stage_table import STAGES
from distill.config import load_config

TITLE = "## First run from an empty store, per stage"
GOALS = {"movie_reviews_mpnet": {"wall_minutes": 45.0}, "movie_reviews": {"peak_mb": 2048.0}}
DISTILLERY = Path(".venv/bin/distillery")
ACCURACIES = ("teacher_accuracy", "student_accuracy", "int8_accuracy")
PIPELINE_ORDER = [stage.name for stage in STAGES]  # the summary's JSON sorts stages by name


def in_pipeline_order(stages: dict[str, dict]) -> dict[str, dict]:
    """`stages` as the run built them (a stage the table lacks goes last)."""
    rank = {name: index for index, name in enumerate(PIPELINE_ORDER)}
    return dict(sorted(stages.items(), key=lambda item: rank.get(item[0], len(rank))))


def run(config: Path, scratch: Path, overrides: list[str]) -> float:
    """The run, timed; its `time -v` report in SCRATCH/time.log."""
    scratch.mkdir(parents=True, exist_ok=True)
    store, work = f"store={scratch / 'store'}", f"workdir={scratch / 'work'}"
    command = ["/usr/bin/time", "-v", "-o", str(scratch / "time.log"), str(DISTILLERY), "run"]
    started = time.perf_counter()
    with open(scratch / "run.log", "w") as log:
        subprocess.run(
            [*command, str(config), store, work, *overrides], stdout=log, stderr=log, check=True
        )
    return time.perf_counter() - started


def max_rss_mb(time_log: Path) -> float:
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_log.read_text())
    if found is None:
        raise ValueError(f"{time_log}: no 'Maximum resident set size' line")
    return int(found.group(1)) / 1024


def measured(name: str, scratch: Path, seconds: float | None) -> dict:
    summary = json.loads((scratch / "work" / "summary.json").read_text())
    stages = {
        stage: {"seconds": round(entry["seconds"], 1), "peak_rss_mb": entry.get("peak_rss_mb")}
        for stage, entry in in_pipeline_order(summary["stages"]).items()
        if not entry.get("reused")
    }
    wall = summary["wall_seconds"] if seconds is None else seconds
    return {
        "profile": name,
        "wall_seconds": round(wall, 1),
        "stages": stages,
        "peak_rss_mb": max((s["peak_rss_mb"] or 0) for s in stages.values()),
        "time_v_max_rss_mb": round(max_rss_mb(scratch / "time.log"), 1),
        **{key: summary[key] for key in ACCURACIES},
        "labelling": labelling_of(scratch),
        "goals": GOALS.get(name, {}),
    }


def labelling_of(scratch: Path) -> dict | None:
    """How the run's logit cache was labelled: runtime, precision, texts and the labelling's own
    seconds (its shards'), the rest of the cache stage being the teacher's graphs and checks.
    A first run from an empty store builds one cache."""
    store = scratch / "store"
    caches = [json.loads(p.read_text()) for p in store.glob("logit_cache/*/manifest.json")]
    if len(caches) != 1:
        return None
    shards = [json.loads(p.read_text()) for p in store.glob("logit_shard/*/manifest.json")]
    seconds = sum(shard["seconds"] for shard in shards)
    texts = sum(shard["rows"] for shard in shards)
    return {
        "runtime": caches[0].get("labelling_runtime"),
        "precision": caches[0].get("precision"),
        "texts": texts,
        "seconds": round(seconds, 1),
        "texts_per_second": round(texts / seconds, 1) if seconds else None,
    }


def labelling_line(labelling: dict | str | None) -> str:
    if not isinstance(labelling, dict):  # rows recorded before the breakdown: the runtime only
        return f"labelling {labelling}"
    return (
        f"labelling {labelling['runtime']} ({labelling['precision']}): {labelling['texts']:,} "
        f"texts in {labelling['seconds'] / 60:.1f} minutes of the cache stage"
    )


def render(rows: list[dict]) -> str:
    parts = []
    for row in rows:
        stages = [
            [stage, f"{entry['seconds'] / 60:.1f}", f"{entry['peak_rss_mb'] or 0:,.0f}"]
            for stage, entry in in_pipeline_order(row["stages"]).items()
        ]
        table = bench.markdown_table("stage | minutes | peak resident MiB", stages)
        accuracy = ", ".join(f"{key} {row[key]:.4f}" for key in ACCURACIES)
        label = row.get("label", row["profile"])
        parts.append(
            f"**{label}**: {row['wall_seconds'] / 60:.1f} minutes, highest stage peak "
            f"{row['peak_rss_mb']:,.0f} MiB (`time -v`: {row['time_v_max_rss_mb']:,.0f}); "
            f"{labelling_line(row['labelling'])}; {accuracy}; goals {row['goals']}\n\n{table}"
        )
    return bench.section(TITLE, *parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", required=True, help="empty (or a finished run's) folder")
    parser.add_argument(
        "--label", help="the run's key in the results (default: the profile's name, replaced)"
    )
    args = bench.arguments(parser, output=None, section="first_run")
    config = load_config(Path(args.config), args.overrides)
    scratch = Path(args.scratch)
    finished = (scratch / "work" / "summary.json").exists() and (scratch / "time.log").exists()
    load_before = os.getloadavg()
    seconds = None if finished else run(Path(args.config), scratch, args.overrides)
    row = measured(config.name, scratch, seconds)
    label = args.label or config.name
    row |= {"label": label, "machine": bench.machine(), "command": bench.command_line()}
    row |= {"load_before": load_before, "load_after": os.getloadavg()}
    first_runs = bench.read_results("strong_path.json").get("first_run", {}) | {label: row}
    memory = {name: entry["stages"] for name, entry in first_runs.items()}
    bench.update_results("strong_path.json", first_run=first_runs, memory=memory)
    if args.section:
        bench.write_section(args.section, render(list(first_runs.values())))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
