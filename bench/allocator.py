"""glibc's mmap threshold against peak memory and step time in training and in labelling (issue
23, part 6).

    .venv/bin/python -m bench.allocator [--config configs/movie_reviews.yaml]
        [--model student|teacher|labelling] [--thresholds glibc 2097152 1048576] [--rounds 2]
        [--steps 80] [--warmup 10] [--store DIR] [key=value ...]

`distill.memory.keep_large_blocks_out_of_heap` fixes the threshold above which glibc serves a
block from its own mapping (LARGE_BLOCK_BYTES); this measures what that buys and costs. Each
(round, threshold) is a fresh process, since the setting is process-wide and one-way: it builds
the config's student (carved from the untrained teacher, or its own checkpoint) or the teacher
before fine-tuning, then trains `--steps` optimizer steps on the same train batches from the same
seed (cross-entropy on labels: the distillation terms add two logits' worth of memory); or, for
`labelling`, has the config's fine-tuned teacher (a stage already in the store) label `--steps`
batches of the logit cache's size from the train split, in PyTorch in the precision the teacher
section resolves to (bf16 under `auto` on a CPU with bf16 units), as the cache stage would. It
reports the resident size when training (labelling) began, the peak growth over it (Linux's
high-water mark) and each step's (batch's) seconds. `glibc` leaves glibc's own sliding
threshold. Rounds rotate the order; step i trains (labels) the same batch from the same weights
in every process, so the time ratio to the first
threshold is paired step by step (`deploy.latency.paired_speed`, after `--warmup` steps).
Writes bench/results/allocator.json (one key per model) and the benchmarks.md section
"allocator-<model>".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench import report as bench
from deploy.latency import SpeedComparison, paired_speed
from deploy.teacher_onnx import sample_feeds, split_batches
from distill import memory
from distill.batching import collate, length_grouped_batches
from distill.config import PipelineConfig, TrainingConfig, load_config
from distill.data import data_stage, load_split
from distill.devices import resolve_runtime
from distill.labelling import TorchLabeller
from distill.logit_cache import LABELLING_BATCH
from distill.models import load_classifier, pad_token_id
from distill.store import MANIFEST
from distill.student import student_of, student_tokenizer_model
from distill.teacher import starting_teacher, teacher_key, teacher_loss
from distill.training import Optimisation

WHAT = {"student": "student training", "teacher": "teacher training", "labelling": "labelling"}
GLIBC = "glibc"  # no mallopt: glibc's own threshold, raised to every freed mapped block's size
MIB = 2**20


def model_and_settings(
    config: PipelineConfig, which: str, data
) -> tuple[torch.nn.Module, TrainingConfig]:
    """The model a stage trains, before training: the teacher from its checkpoint, or the student
    built as the student stage builds it (from the untrained teacher: the same shapes)."""
    labels = list(data.manifest.label_names)
    teacher, _ = starting_teacher(config.teacher, labels, data.manifest)
    if which == "teacher":
        return teacher, config.teacher.training
    return student_of(teacher, config.student, labels), config.student.training


def tokenizer_model(config: PipelineConfig, which: str) -> str:
    """The model whose token ids the trained (or labelling) model reads."""
    if which in ("teacher", "labelling"):
        return config.teacher.model
    return student_tokenizer_model(config.student, config.teacher.model)


def labelling_steps(config: PipelineConfig, data, steps: int) -> tuple[Callable, list, int]:
    """The fine-tuned teacher as a labeller in the precision its section resolves to, and
    `steps` length-sorted, evenly spaced batches of the cache's size from the train split
    (short and long texts alike); and that size."""
    folder = config.store_dir / "teacher" / teacher_key(config.teacher, data)
    if not (folder / MANIFEST).is_file():
        raise SystemExit(
            f"bench.allocator --model labelling: no fine-tuned teacher at {folder}: run "
            "`distillery run` on this config (and store) first"
        )
    model = load_classifier(folder)
    labeller = TorchLabeller(model, resolve_runtime(config.teacher.training, "teacher.training"))
    train = load_split(data.path, "train")
    batches = split_batches(train, LABELLING_BATCH)
    feeds = sample_feeds(train, batches, pad_token_id(model.config), steps)
    return lambda feed: labeller(*feed), feeds, LABELLING_BATCH


def training_steps(
    config: PipelineConfig, which: str, data, steps: int
) -> tuple[Callable, list, int]:
    """One optimizer step of the stage's model (cross-entropy on labels), `steps` train
    batches drawn as training draws them, from the same seed, and the batch size."""
    model, settings = model_and_settings(config, which, data)
    model.train()
    train = load_split(data.path, "train")
    rng = np.random.default_rng(settings.seed)
    lengths = [len(ids) for ids in train["input_ids"]]
    grouped = length_grouped_batches(lengths, settings.batch_size, rng)
    batches = [collate(train, grouped[i % len(grouped)]) for i in range(steps)]
    optimisation = Optimisation.create(model, settings, steps)
    return (
        lambda batch: optimisation.apply(model, teacher_loss, batch),
        batches,
        settings.batch_size,
    )


def train_steps(config: PipelineConfig, which: str, threshold: str, steps: int) -> dict:
    """In this process: set `threshold`, train `steps` steps (or label `steps` batches),
    measure (the child's job)."""
    if threshold != GLIBC:
        memory.set_mmap_threshold(int(threshold))
    data = data_stage(config.store_dir, config.data, tokenizer_model(config, which))
    if which == "labelling":
        step, batches, batch_size = labelling_steps(config, data, steps)
    else:
        step, batches, batch_size = training_steps(config, which, data, steps)
    memory.return_freed_memory()
    memory.reset_peak()
    start = memory.peak_bytes() or 0  # the mark was just reset: today's resident size
    seconds = []
    for batch in batches:
        began = time.perf_counter()
        step(batch)
        seconds.append(time.perf_counter() - began)
    peak = memory.peak_bytes() or 0
    return {
        "threshold": threshold,
        "start_mib": start / MIB,
        "peak_growth_mib": (peak - start) / MIB,
        "step_seconds": seconds,
        "batch_size": batch_size,
    }


def child_command(args: argparse.Namespace, threshold: str) -> list[str]:
    return [
        sys.executable, "-m", "bench.allocator", "--child", threshold, "--model", args.model,
        "--steps", str(args.steps), "--config", args.config, *args.overrides,
    ]  # fmt: skip


def run_child(args: argparse.Namespace, threshold: str) -> dict:
    done = subprocess.run(
        child_command(args, threshold), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.allocator child ({threshold}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, config: PipelineConfig) -> list[dict]:
    """Every threshold once a round, the order rotating, each in its own process."""
    data_stage(config.store_dir, config.data, tokenizer_model(config, args.model))  # built once
    runs = []
    for number in range(args.rounds):
        shift = number % len(args.thresholds)
        for threshold in args.thresholds[shift:] + args.thresholds[:shift]:
            runs.append({"round": number + 1} | run_child(args, threshold))
    return runs


def step_pairs(runs: list[dict], reference: str, candidate: str, warmup: int) -> SpeedComparison:
    """The candidate's step times against the reference's, paired by round and step index."""
    by_round = {(run["round"], run["threshold"]): run["step_seconds"][warmup:] for run in runs}
    rounds = sorted({run["round"] for run in runs})
    base = [t for r in rounds for t in by_round[(r, reference)]]
    other = [t for r in rounds for t in by_round[(r, candidate)]]
    return paired_speed(other, base)


def summarize(runs: list[dict], thresholds: list[str], warmup: int) -> list[dict]:
    """Per threshold: each run's peak growth and measured seconds, and the paired time ratio
    to the first threshold."""
    rows = []
    for threshold in thresholds:
        mine = [run for run in runs if run["threshold"] == threshold]
        measured = [sum(run["step_seconds"][warmup:]) for run in mine]
        row = {
            "threshold": threshold,
            "runs": len(mine),
            "peak_growth_mib": [run["peak_growth_mib"] for run in mine],
            "measured_seconds": measured,
            "median_step_seconds": statistics.median(
                t for run in mine for t in run["step_seconds"][warmup:]
            ),
        }
        if threshold != thresholds[0]:
            row["vs_first"] = step_pairs(runs, thresholds[0], threshold, warmup).model_dump()
        rows.append(row)
    return rows


def label(threshold: str) -> str:
    return threshold if threshold == GLIBC else f"{int(threshold) / MIB:g} MiB"


def ratio_cell(row: dict) -> str:
    if "vs_first" not in row:
        return "reference"
    return SpeedComparison.model_validate(row["vs_first"]).summary()


def render(result: dict) -> str:
    cells = [
        [
            label(row["threshold"]),
            " / ".join(f"{value:,.0f}" for value in row["peak_growth_mib"]),
            f"{row['median_step_seconds'] * 1000:.0f}",
            " / ".join(f"{value:.1f}" for value in row["measured_seconds"]),
            ratio_cell(row),
        ]
        for row in result["summary"]
    ]
    header = [
        "threshold", "peak growth, each run (MiB)", "median step (ms)",
        "measured steps, each run (s)", "step time vs the first threshold",
    ]  # fmt: skip
    table = bench.markdown_table(header, cells)
    more = [
        f"Model: the {result['model']} of `{Path(result['config']).name}`, batch "
        f"{result['batch_size']}, {result['steps']} steps a run from the same seed, the first "
        f"{result['warmup']} not timed; {result['rounds']} rounds, each threshold in its own "
        "process, the order rotating",
        "Load average before/after: "
        f"{result['load_before'][0]:.2f} / {result['load_after'][0]:.2f}",
    ]
    return bench.section(
        f"## glibc's mmap threshold in {WHAT[result['model']]} (allocator-{result['model']})",
        table,
        more=more,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("student", "teacher", "labelling"), default="student")
    parser.add_argument(
        "--thresholds", nargs="+", default=[GLIBC, str(memory.LARGE_BLOCK_BYTES), str(MIB)]
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measured process
    args = bench.arguments(parser, output=None)
    config = load_config(Path(args.config), args.overrides)
    if args.child:
        print(json.dumps(train_steps(config, args.model, args.child, args.steps)))
        return
    load_before = os.getloadavg()
    runs = measure(args, config)
    result = {
        "model": args.model, "config": args.config, "steps": args.steps,
        "warmup": args.warmup, "rounds": args.rounds, "batch_size": runs[0]["batch_size"],
        "summary": summarize(runs, args.thresholds, args.warmup), "runs": runs,
        "load_before": load_before, "load_after": os.getloadavg(),
        "machine": bench.machine(), "command": bench.command_line(),
    }  # fmt: skip
    bench.update_results("allocator.json", **{args.model: result})
    bench.write_section(f"allocator-{args.model}", render(result))
    print(render(result))


if __name__ == "__main__":
    main()
