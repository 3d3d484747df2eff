"""Quality benchmark: students of 2, 3 and 4 layers, distilled and from labels only, over several
seeds, all sharing one teacher and one teacher-target cache.

    .venv/bin/python -m bench.quality [--seeds 1 2 3] [--layers 2 3 4] [key=value ...]

Writes bench/results/quality.json (one row per student, after each) and the "quality" section
of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench import report as bench
from deploy.chain import run_after_cache, run_until_cache
from distill.config import load_config

LAYER_CHOICES = {2: [0, 5], 3: [0, 2, 5], 4: [0, 2, 3, 5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3, 4])
    trainings = ["kd", "labels"]
    parser.add_argument("--training", nargs="+", choices=trainings, default=trainings,
                        help="distilled students, labels-only students, or both")  # fmt: skip
    args = bench.arguments(parser, "quality.json", section="quality")

    base = load_config(args.config, args.overrides)
    store = base.store_dir  # the pipeline's store: a run of the same config shares the teacher
    seconds: dict[str, float] = {}
    runner = bench.timing_runner(seconds)
    upstream = run_until_cache(base, store, runner)
    teacher, cache = upstream.teacher, upstream.cache
    shared = {
        "data_seconds": seconds["data"], "teacher_seconds": seconds["teacher"],
        "cache_seconds": seconds["logit_cache"], "teacher_reused": teacher.reused,
        "teacher_train_seconds": teacher.manifest.train_seconds, "cache_reused": cache.reused,
        "cache_key": cache.key,
    }  # fmt: skip
    rows = []
    # Seeds outermost, results written after every student: a grid stopped early still
    # reports every layer count at the seeds it finished.
    for seed in args.seeds:
        for layers in args.layers:
            for kd in [choice == "kd" for choice in args.training]:
                overrides = [*args.overrides, f"student.init.layers={LAYER_CHOICES[layers]}"]
                overrides.append(f"student.training.seed={seed}")
                if not kd:  # labels only: no soft targets, no hidden-state term
                    overrides += ["student.alpha=1.0", "student.hidden.weight=0"]
                config = load_config(args.config, overrides)
                run = run_after_cache(config, store, upstream, runner)
                student, report = run.student, run.evaluation.manifest
                student_s = student.manifest.train_seconds if student.reused else seconds["student"]
                # A student reused from an earlier run reports its training time then.
                stage_s = {stage: seconds[stage] for stage in ("evaluation", "export", "quantize")}
                row = {
                    "layers": layers, "kd": kd, "seed": seed, **bench.scores(run),
                    "fp32_onnx_accuracy": run.export.manifest.test_accuracy,
                    "params": report.student_params, "best_epoch": student.manifest.best_epoch,
                    "seconds": {"student": student_s, **stage_s}, "student_reused": student.reused,
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                save(rows, shared, args)


def save(rows: list[dict], shared: dict, args) -> None:
    bench.write_json(Path(args.output).with_suffix(".shared.json"), shared)
    bench.publish(args.output, rows, args.section, lambda: render(rows, shared, args))


def render(rows: list[dict], shared: dict, args) -> str:
    table = []
    for layers in args.layers:
        for kd in (True, False):
            if group := [r for r in rows if r["layers"] == layers and r["kd"] == kd]:
                keys = ["test_accuracy", "macro_f1", "retention", "int8_accuracy"]
                student_s = statistics.mean(r["seconds"]["student"] for r in group)
                table.append([str(layers), "distilled" if kd else "labels only", str(len(group)),
                              *bench.means(group, keys), f"{group[0]['params'] / 1e6:.1f}M",
                              f"{student_s:.0f}"])  # fmt: skip
    trained = shared.get("teacher_train_seconds")
    teacher_time = f" (fine-tuned once in {trained:.0f} s)" if trained else ""
    built = f"built in {shared['cache_seconds']:.0f} s"
    built = "built by an earlier run in this store" if shared["cache_reused"] else built
    return bench.section(
        f"## Student quality ({args.section})",
        f"Teacher test accuracy {rows[0]['teacher_accuracy']:.4f}{teacher_time}. "
        f"Overrides on every student: `{' '.join(args.overrides) or 'none'}`. "
        f"The teacher ran once for the whole grid: one target cache (`{shared['cache_key']}`, "
        f"{built}) served all {len(rows)} students. Mean ± standard deviation over the seeds in "
        "the `seeds` column.",
        bench.markdown_table(
            "layers | training | seeds | test accuracy | macro-F1 | retention | INT8 accuracy"
            " | params | student s",
            table,
        ),
    )


if __name__ == "__main__":
    main()
