"""Speed decisions benchmark: how often the quantize stage's two speed choices come out the same
when the same graphs are timed again, under the old rules (two medians, each model timed in its
own block of calls) and under the paired rules (`deploy.latency.paired_speed`).

The choices: keep onnxruntime's fused fp32 graph (old: median 5% below the exported graph's;
new: the whole interval of the paired median time ratio below 0.95) and refuse dynamic INT8 as
slower than fp32 (old: median above fp32's; new: the interval above 1). The graphs are the
profile's exported student (from its stages, built or reused in the store), fused and quantized
here; each repeat times them on the stage's own feeds (the first `quantize.latency_samples` test
texts, batch 1, one thread, 3 rounds), both ways, the order alternating. Every other repeat runs
beside one busy process per core (a loaded machine, as a scheduled retraining may meet).

    .venv/bin/python -m bench.speed_decisions [--repeats 20] [--store DIR] [key=value ...]

Writes bench/results/speed_decisions.json and the "speed-decisions" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import report as bench
from deploy.chain import run_pipeline_stages
from deploy.latency import Feeds, batch1_feeds, onnx_seconds, paired_speed, time_calls
from deploy.onnx_eval import open_session
from deploy.optimize import MIN_GAIN, optimize_bert
from deploy.quantize import quantize_int8, vocabularies, vocabulary_split
from distill.config import load_config

ROUNDS = 3


@contextlib.contextmanager
def busy_cores(on: bool) -> Iterator[None]:
    """One spinning Python process per core while the block runs (when `on`)."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
        if on
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def blockwise_seconds(models: Mapping[str, Path], feeds: Sequence[Feeds]) -> dict[str, list[float]]:
    """The old timing: in each round every model answers all feeds in one block, in turn."""
    sessions = {name: open_session(path, threads=1) for name, path in models.items()}
    runners = {
        name: (lambda feed, s=session: s.run(["logits"], feed))
        for name, session in sessions.items()
    }
    for run in runners.values():
        time_calls(run, feeds[:3])
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, run in runners.items():
            seconds[name] += time_calls(run, feeds)
    return seconds


def decisions(
    graphs: Mapping[str, Path], feeds: Sequence[Feeds], old_first: bool
) -> dict[str, Any]:
    """Both rules' choices on one timing each (the old on block timing, the new on pairs)."""
    if old_first:
        blocks = blockwise_seconds(graphs, feeds)
    paired = onnx_seconds(graphs, feeds, rounds=ROUNDS)
    if not old_first:
        blocks = blockwise_seconds(graphs, feeds)
    old = {name: float(np.median(values)) for name, values in blocks.items()}
    fused = paired_speed(paired["fused"], paired["base"])
    int8 = paired_speed(paired["int8"], paired["base"])
    return {
        "old_fused_kept": old["fused"] < old["base"] * (1 - MIN_GAIN),
        "old_int8_refused": old["int8"] > old["base"],
        "old_fused_ratio": old["fused"] / old["base"],
        "old_int8_ratio": old["int8"] / old["base"],
        "new_fused_kept": fused.faster_by(MIN_GAIN),
        "new_int8_refused": int8.slower(),
        "fused": fused.model_dump(),
        "int8": int8.model_dump(),
    }


def build_graphs(artifacts, folder: Path) -> tuple[dict[str, Path], Any]:
    """The exported student graph, its fused form and its dynamic INT8, and the stage's feeds."""
    export = artifacts.export.manifest
    vocabulary = vocabularies(artifacts.export)[0]
    fused, int8 = folder / "fused.onnx", folder / "int8.onnx"
    optimize_bert(vocabulary.graph, fused, export.num_heads, export.hidden_size)
    quantize_int8(vocabulary.graph, int8, per_channel=True)
    test = vocabulary_split(vocabulary, artifacts.student_data, "test")
    return {"base": vocabulary.graph, "fused": fused, "int8": int8}, test


def summary(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rule and choice: how many repeats chose yes, and the share that disagreed with the
    majority (0: the same choice every time)."""
    result: dict[str, Any] = {"repeats": len(repeats)}
    for load in ("quiet", "loaded", "all"):
        group = [r for r in repeats if load == "all" or r["load"] == load]
        for key in ("old_fused_kept", "new_fused_kept", "old_int8_refused", "new_int8_refused"):
            yes = sum(r[key] for r in group)
            result[f"{load}/{key}"] = {
                "yes": yes,
                "of": len(group),
                "flips": min(yes, len(group) - yes),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = bench.arguments(parser, "speed_decisions.json", section="speed-decisions")
    config = load_config(args.config, args.overrides)
    artifacts = run_pipeline_stages(config, config.store_dir, bench.timing_runner({}))
    recorded = artifacts.quantize.manifest
    with tempfile.TemporaryDirectory() as scratch:
        graphs, test = build_graphs(artifacts, Path(scratch))
        count = min(config.quantize.latency_samples, len(test))
        feeds = batch1_feeds(test["input_ids"][:count], test["attention_mask"][:count])
        repeats = []
        for repeat in range(args.repeats):
            load = "loaded" if repeat % 2 else "quiet"
            with busy_cores(load == "loaded"):
                chosen = decisions(graphs, feeds, old_first=repeat % 4 < 2)
            repeats.append({"repeat": repeat, "load": load, **chosen})
            print(repeats[-1], flush=True)
    result = {
        "config": args.config,
        "feeds": count,
        "rounds": ROUNDS,
        "stage_decision": {
            "optimization": None if recorded.optimization is None else recorded.optimization.reason,
            "method": recorded.method,
        },
        "summary": summary(repeats),
        "repeats": repeats,
    }
    bench.publish(args.output, result, args.section, lambda: report(result))


def report(result: dict[str, Any]) -> str:
    totals = result["summary"]
    rows = []
    for choice, label in (
        ("fused_kept", "fused fp32 graph kept"),
        ("int8_refused", "INT8 refused as slower"),
    ):
        for rule in ("old", "new"):
            counts = [totals[f"{load}/{rule}_{choice}"] for load in ("quiet", "loaded", "all")]
            cells = [f"{count['yes']} / {count['of']}" for count in counts]
            rows.append([label, rule, *cells])
    fused = [r["fused"]["median_ratio"] for r in result["repeats"]]
    int8 = [r["int8"]["median_ratio"] for r in result["repeats"]]
    old_fused = [r["old_fused_ratio"] for r in result["repeats"]]
    old_int8 = [r["old_int8_ratio"] for r in result["repeats"]]
    notes = [
        f"- Feeds: the first {result['feeds']} test texts, batch 1, one thread, "
        f"{result['rounds']} rounds; every other repeat beside one busy process per core.",
        f"- Paired median time ratio over the repeats: fused/exported {min(fused):.3f} to "
        f"{max(fused):.3f}, INT8/fp32 {min(int8):.3f} to {max(int8):.3f}; the old timing's "
        f"ratio of medians: fused/exported {min(old_fused):.3f} to {max(old_fused):.3f}, "
        f"INT8/fp32 {min(old_int8):.3f} to {max(old_int8):.3f}.",
        f"- The quantize stage's own decision on this run: {result['stage_decision']}.",
    ]
    return bench.section(
        "## Speed decisions: the same graphs timed again",
        bench.markdown_table("choice | rule | quiet | loaded | all", rows),
        "\n".join(notes),
        more=[f"Config: `{Path(result['config']).name}`, {result['summary']['repeats']} repeats"],
    )


if __name__ == "__main__":
    main()
