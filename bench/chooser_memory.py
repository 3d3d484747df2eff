"""Peak memory of choosing the labelling runtime (the logit-cache stage's first part), with the
teacher's graphs built in a child process as shipped, or in the run's own process.

    .venv/bin/python -m bench.chooser_memory --config configs/movie_reviews_mpnet.yaml
        --store /work/first-run-mpnet/store --scratch /work/chooser-memory [key=value ...]

The config's data and teacher stages come from --store (built there when missing). Each mode
gets a fresh scratch store holding links to those two folders, so everything the chooser needs
is built: the teacher's fp32 graph (export, fusion check, parity), its INT8 graph, and on a CPU
with bf16 units the bf16 check. Each mode runs in its own process: `apart` as shipped
(`deploy.teacher_onnx.APART_FROM_PARAMS`), `here` with that bound out of reach. Per mode: the
process's own peak (VmHWM), its children's (RUSAGE_CHILDREN), the peak a flow stage would report
(`distill.memory.peak_bytes`: the child's with what the process held meanwhile), the resident
size once chosen (what labelling starts from), seconds and the runtime chosen. Writes
strong_path.json's `chooser_memory` and the benchmarks.md section "chooser-memory".
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench import report as bench
from deploy import teacher_onnx
from deploy.labelling import choose_labelling
from distill import memory
from distill.config import load_config
from distill.data import data_stage
from distill.teacher import teacher_stage

MODES = ("here", "apart")
MIB = 2**20


def linked_store(scratch: Path, *artifacts) -> Path:
    """A fresh store holding links to `artifacts`' folders (nothing else)."""
    for artifact in artifacts:
        folder = scratch / artifact.stage / artifact.key
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.symlink_to(artifact.path.resolve())
    return scratch


def one_mode(args) -> dict:
    """Runs in its own process: the chooser on a fresh store, measured."""
    memory.keep_large_blocks_out_of_heap()  # as the flow's stages run
    if args.mode == "here":
        teacher_onnx.APART_FROM_PARAMS = sys.maxsize
    config = load_config(Path(args.config), args.overrides)
    data = data_stage(Path(args.store), config.data, config.teacher.model)
    teacher = teacher_stage(Path(args.store), config.teacher, data)
    store = linked_store(Path(args.scratch) / args.mode, data, teacher)
    memory.reset_peak()
    started = time.perf_counter()
    labelling = choose_labelling(store, config, teacher, data)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "mode": args.mode,
        "teacher_params": teacher.manifest.params,
        "seconds": round(time.perf_counter() - started, 1),
        "runtime": labelling.runtime,
        "own_peak_mib": round(own / MIB),
        "children_peak_mib": round(children / MIB),
        "stage_peak_mib": round((memory.peak_bytes() or 0) / MIB),
        "resident_after_mib": round((memory.resident_bytes() or 0) / MIB),
    }


def render(rows: list[dict]) -> str:
    table = bench.markdown_table(
        "graphs built | seconds | chosen | process peak | child peak | stage peak | resident after",
        [
            [
                row["mode"],
                f"{row['seconds']:.0f}",
                row["runtime"],
                f"{row['own_peak_mib']:,}",
                f"{row['children_peak_mib']:,}",
                f"{row['stage_peak_mib']:,}",
                f"{row['resident_after_mib']:,}",
            ]
            for row in rows
        ],
    )
    return bench.section("## Choosing the labelling runtime: peak memory (MiB)", table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", required=True, help="an empty folder")
    parser.add_argument("--mode", choices=MODES, help="(internal) measure one mode, print JSON")
    args = bench.arguments(parser, output=None, section="chooser-memory")
    if args.mode:
        print(json.dumps(one_mode(args)), flush=True)
        return
    rows = []
    for mode in MODES:
        command = [sys.executable, "-m", "bench.chooser_memory", *sys.argv[1:], "--mode", mode]
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    bench.update_results("strong_path.json", chooser_memory=rows)
    if args.section:
        bench.write_section(args.section, render(rows))


if __name__ == "__main__":
    main()
