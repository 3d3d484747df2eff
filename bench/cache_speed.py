"""Cache speed: one student epoch reading cached teacher logits vs. one running the teacher online.

    .venv/bin/python -m bench.cache_speed [--layers 0 5] [key=value ...]

Both epochs run in this process on the same batches from the same student initialisation. The
ideal speed-up of the cache is (teacher forward + student step) / student step, both measured in
the online epoch: what the cache would give if reading it cost nothing. Results go to
bench/results/cache_speed.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import REPO, RESULTS, header, markdown_table, write_section
from distill.batching import collate, length_grouped_batches
from distill.config import TeacherLayersInit, load_config
from distill.data import data_stage, load_split
from distill.logit_cache import logit_cache_stage, open_targets
from distill.losses import distillation_loss
from distill.models import load_classifier, student_from_teacher
from distill.teacher import teacher_stage
from distill.training import build_optimizer


def epoch(student, split, batches, settings, alpha, temperature, soft_targets) -> dict[str, float]:
    """One training epoch; `soft_targets(batch)` returns teacher logits and the seconds it took."""
    optimizer = build_optimizer(student, settings)
    student.train()
    teacher_s = student_s = 0.0
    started = time.perf_counter()
    for indices in batches:
        batch = collate(split, indices)
        soft, seconds = soft_targets(batch)
        teacher_s += seconds
        step_started = time.perf_counter()
        logits = student(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        loss = distillation_loss(logits, soft, batch["label"], alpha, temperature).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), settings.max_grad_norm)
        optimizer.step()
        student_s += time.perf_counter() - step_started
    return {
        "epoch_s": time.perf_counter() - started,
        "targets_s": teacher_s,
        "student_s": student_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "movie_reviews.yaml"))
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench-quality"))
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 5])
    parser.add_argument("--output", default=str(RESULTS / "cache_speed.json"))
    parser.add_argument("--section", default="cache-speed")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    config = load_config(args.config, [f"workdir={args.workdir}", *args.overrides])
    workdir = Path(config.workdir)
    data = data_stage(workdir, config.data, config.teacher.model)
    teacher_artifact = teacher_stage(workdir, config.teacher, data)
    cache = logit_cache_stage(workdir, teacher_artifact, data)
    cached_logits = open_targets(cache).logits
    teacher = load_classifier(teacher_artifact.path)
    split = load_split(data.path, "train")
    settings = config.student.training
    lengths = [len(ids) for ids in split["input_ids"]]
    batches = length_grouped_batches(lengths, settings.batch_size, np.random.default_rng(0))
    init = TeacherLayersInit(layers=args.layers)

    def from_cache(batch):
        started = time.perf_counter()
        soft = torch.from_numpy(cached_logits[batch["index"].numpy()])
        return soft, time.perf_counter() - started

    @torch.inference_mode()
    def online(batch):
        started = time.perf_counter()
        soft = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return soft.clone(), time.perf_counter() - started

    student = student_from_teacher(teacher, init)
    epoch(student, split, batches[:5], settings, config.student.alpha, 2.0, from_cache)  # warm-up
    runs = {}
    for name, targets in (("cached", from_cache), ("online", online)):
        student = student_from_teacher(teacher, init)
        runs[name] = epoch(
            student,
            split,
            batches,
            settings,
            config.student.alpha,
            config.student.temperature,
            targets,
        )
        print(name, json.dumps(runs[name]), flush=True)
    teacher_s, student_s = runs["online"]["targets_s"], runs["online"]["student_s"]
    ideal = (teacher_s + student_s) / student_s
    achieved = runs["online"]["epoch_s"] / runs["cached"]["epoch_s"]
    result = {
        "student_layers": args.layers,
        "batches": len(batches),
        "cached_epoch_s": runs["cached"]["epoch_s"],
        "cache_read_s": runs["cached"]["targets_s"],
        "online_epoch_s": runs["online"]["epoch_s"],
        "teacher_forward_s": teacher_s,
        "student_step_s": student_s,
        "teacher_share_of_online_epoch": teacher_s / runs["online"]["epoch_s"],
        "ideal_speedup": ideal,
        "achieved_speedup": achieved,
        "fraction_of_ideal": achieved / ideal,
    }
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    write_section(args.section, render(result))


def render(r: dict) -> str:
    rows = [
        ["epoch with cached logits", f"{r['cached_epoch_s']:.1f}", f"{r['cache_read_s']:.2f}"],
        [
            "epoch with the teacher online",
            f"{r['online_epoch_s']:.1f}",
            f"{r['teacher_forward_s']:.1f}",
        ],
    ]
    return "\n\n".join(
        [
            "## Teacher-logit cache speed",
            header("cache"),
            f"Student from teacher layers {r['student_layers']}, {r['batches']} batches. "
            f"The teacher's forward pass is {r['teacher_share_of_online_epoch']:.0%} of an online "
            f"epoch, so the ideal speed-up is {r['ideal_speedup']:.2f}x; the cache achieved "
            f"{r['achieved_speedup']:.2f}x, **{r['fraction_of_ideal']:.0%} of ideal**. The larger "
            "win is in sweeps: k students cost one teacher pass over the data instead of "
            "k x epochs passes (see the quality grid).",
            markdown_table(["", "wall s", "of which teacher targets s"], rows),
        ]
    )


if __name__ == "__main__":
    main()
