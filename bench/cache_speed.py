"""Cache speed: one student epoch reading cached teacher logits vs. one running the teacher online.

    .venv/bin/python -m bench.cache_speed [--layers 0 5] [key=value ...]

Writes bench/results/cache_speed.json and the "cache-speed" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench import report as bench
from deploy.chain import run_until_cache
from distill.batching import collate
from distill.config import TeacherLayersInit, load_config
from distill.data import load_split
from distill.logit_cache import open_targets
from distill.models import load_classifier, student_from_teacher
from distill.rows import TeacherTargets, training_rows
from distill.student import student_loss
from distill.training import train_classifier

VALIDATION_ROWS = 64  # train_classifier validates after the epoch; keep that small and equal


class TimedLogits:
    """Teacher logits by training row, `[rows]`-indexable like the cached array; times each read."""

    def __init__(self, read) -> None:
        self.read = read
        self.seconds = 0.0

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        logits = self.read(rows)
        self.seconds += time.perf_counter() - started
        return logits


def epoch(config, teacher, init, split, validation, logits: TimedLogits) -> dict[str, float]:
    """One epoch of the student stage's training step with targets read through `logits`."""
    student = student_from_teacher(teacher, init)
    settings = config.student.training.model_copy(update={"epochs": 1})
    targets = TeacherTargets(logits, np.empty((0, 0, 0), dtype=np.float16))
    started = time.perf_counter()
    loss = student_loss(config.student, targets)
    train_classifier(student, split, validation, settings, loss, log=None)
    wall = time.perf_counter() - started
    return {"epoch_s": wall, "targets_s": logits.seconds, "student_s": wall - logits.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 5])
    args = bench.arguments(parser, "cache_speed.json", section="cache-speed")

    # The logit loss only: the Patient-KD term would need the cached [CLS] states online too.
    config = load_config(args.config, [*args.overrides, "student.hidden.weight=0"])
    upstream = run_until_cache(config, config.store_dir)
    cached = open_targets(upstream.cache).logits
    teacher = load_classifier(upstream.teacher.path)
    split = training_rows(upstream.data, upstream.augmented)
    validation = load_split(upstream.data.path, "validation")
    validation = validation.select(range(min(VALIDATION_ROWS, len(validation))))
    init = TeacherLayersInit(layers=args.layers)

    @torch.inference_mode()
    def online(rows: np.ndarray) -> np.ndarray:
        batch = collate(split, rows)
        out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.float().numpy()

    readers = {"cached": lambda rows: np.asarray(cached[rows]), "online": online}
    batches = -(-len(split) // config.student.training.batch_size)
    warm_up = split.select(range(min(5 * config.student.training.batch_size, len(split))))
    epoch(config, teacher, init, warm_up, validation, TimedLogits(readers["cached"]))
    runs = {}
    for name, read in readers.items():
        runs[name] = epoch(config, teacher, init, split, validation, TimedLogits(read))
        print(name, json.dumps(runs[name]), flush=True)
    teacher_s, student_s = runs["online"]["targets_s"], runs["online"]["student_s"]
    ideal = (teacher_s + student_s) / student_s
    achieved = runs["online"]["epoch_s"] / runs["cached"]["epoch_s"]
    result = {
        "student_layers": args.layers, "batches": batches,
        "cached_epoch_s": runs["cached"]["epoch_s"], "cache_read_s": runs["cached"]["targets_s"],
        "online_epoch_s": runs["online"]["epoch_s"], "teacher_forward_s": teacher_s,
        "student_step_s": student_s,
        "teacher_share_of_online_epoch": teacher_s / runs["online"]["epoch_s"],
        "ideal_speedup": ideal, "achieved_speedup": achieved, "fraction_of_ideal": achieved / ideal,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    bench.publish(args.output, result, args.section, lambda: render(result))


def render(r: dict) -> str:
    rows = [
        ["epoch with cached logits", f"{r['cached_epoch_s']:.1f}", f"{r['cache_read_s']:.2f}"],
        ["epoch with the teacher online", f"{r['online_epoch_s']:.1f}",
         f"{r['teacher_forward_s']:.1f}"],
    ]  # fmt: skip
    return bench.section(
        "## Teacher-logit cache speed",
        f"Student from teacher layers {r['student_layers']}, {r['batches']} batches. "
        f"The teacher's forward pass is {r['teacher_share_of_online_epoch']:.0%} of an online "
        f"epoch, so the ideal speed-up is {r['ideal_speedup']:.2f}x; the cache achieved "
        f"{r['achieved_speedup']:.2f}x, **{r['fraction_of_ideal']:.0%} of ideal**. The larger "
        "win is in sweeps: k students cost one teacher pass over the data instead of "
        "k x epochs passes (see the quality grid).",
        bench.markdown_table(["", "wall s", "of which teacher targets s"], rows),
    )


if __name__ == "__main__":
    main()
