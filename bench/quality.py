"""Quality benchmark: students of 2, 3 and 4 layers, with distillation and with labels only,
over several seeds, all sharing one teacher and one teacher-target cache.

    .venv/bin/python -m bench.quality [--seeds 1 2 3] [--layers 2 3 4] [key=value ...]

Writes bench/results/quality.json (one row per trained student) and a table into
docs/benchmarks.md. Extra key=value overrides apply to every student (e.g.
augmentation.multiplier=1 student.hidden.weight=1).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench import report as bench
from deploy.chain import run_after_cache
from distill.chain import run_until_cache
from distill.config import load_config

LAYER_CHOICES = {2: [0, 5], 3: [0, 2, 5], 4: [0, 2, 3, 5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(bench.REPO / "configs" / "movie_reviews.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument(
        "--training",
        nargs="+",
        choices=["kd", "labels"],
        default=["kd", "labels"],
        help="distilled students, labels-only students, or both",
    )
    bench.common_args(parser, "quality.json", section="quality")
    args = parser.parse_args()
    bench.store_override(args)

    base = load_config(args.config, args.overrides)
    store = base.store_dir  # the pipeline's store: a run of the same config shares the teacher
    seconds: dict[str, float] = {}
    runner = bench.timing_runner(seconds)
    upstream = run_until_cache(base, store, runner)
    teacher, cache = upstream.teacher, upstream.cache
    shared = {
        "data_seconds": seconds["data"],
        "teacher_seconds": seconds["teacher"],
        "cache_seconds": seconds["logit_cache"],
        "teacher_reused": teacher.reused,
        "teacher_train_seconds": teacher.manifest.train_seconds,
        "cache_reused": cache.reused,
        "cache_key": cache.key,
    }
    rows = []
    # Seeds outermost, results written after every student: a grid stopped early still
    # reports every layer count at the seeds it finished.
    for seed in args.seeds:
        for layers in args.layers:
            for kd in [choice == "kd" for choice in args.training]:
                overrides = [
                    *args.overrides,
                    f"student.init.layers={LAYER_CHOICES[layers]}",
                    f"student.training.seed={seed}",
                ]
                if not kd:  # labels only: no soft targets, no hidden-state term
                    overrides += ["student.alpha=1.0", "student.hidden.weight=0"]
                config = load_config(args.config, overrides)
                run = run_after_cache(config, store, upstream, runner)
                student, report = run.student, run.evaluation.manifest
                row = {
                    "layers": layers,
                    "kd": kd,
                    "seed": seed,
                    **bench.scores(run),
                    "fp32_onnx_accuracy": run.export.manifest.test_accuracy,
                    "params": report.student_params,
                    "best_epoch": student.manifest.best_epoch,
                    "seconds": {
                        # A student reused from an earlier run reports its training time then.
                        "student": (
                            student.manifest.train_seconds if student.reused else seconds["student"]
                        ),
                        "evaluation": seconds["evaluation"],
                        "export": seconds["export"],
                        "quantize": seconds["quantize"],
                    },
                    "student_reused": student.reused,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                save(rows, shared, args)


def save(rows: list[dict], shared: dict, args) -> None:
    bench.write_json(args.output, rows)
    bench.write_json(Path(args.output).with_suffix(".shared.json"), shared)
    if args.section:
        bench.write_section(args.section, render(rows, shared, args))


def render(rows: list[dict], shared: dict, args) -> str:
    table = []
    for layers in args.layers:
        for kd in (True, False):
            group = [r for r in rows if r["layers"] == layers and r["kd"] == kd]
            if not group:
                continue
            table.append(
                [
                    str(layers),
                    "distilled" if kd else "labels only",
                    str(len(group)),
                    *bench.means(
                        group, ["test_accuracy", "macro_f1", "retention", "int8_accuracy"]
                    ),
                    f"{group[0]['params'] / 1e6:.1f}M",
                    f"{statistics.mean(r['seconds']['student'] for r in group):.0f}",
                ]
            )
    teacher_accuracy = rows[0]["teacher_accuracy"]
    trained = shared.get("teacher_train_seconds")
    teacher_time = f" (fine-tuned once in {trained:.0f} s)" if trained else ""
    extra = " ".join(args.overrides) or "none"
    built = (
        "built by an earlier run in this store"
        if shared["cache_reused"]
        else f"built in {shared['cache_seconds']:.0f} s"
    )
    return "\n\n".join(
        [
            f"## Student quality ({args.section})",
            bench.header("quality"),
            f"Teacher test accuracy {teacher_accuracy:.4f}{teacher_time}. "
            f"Overrides on every student: `{extra}`. "
            f"The teacher ran once for the whole grid: one target cache (`{shared['cache_key']}`, "
            f"{built}) "
            f"served all {len(rows)} students. Mean ± standard deviation over the seeds in the "
            "`seeds` column.",
            bench.markdown_table(
                "layers | training | seeds | test accuracy | macro-F1 | retention | INT8 accuracy"
                " | params | student s",
                table,
            ),
        ]
    )


if __name__ == "__main__":
    main()
