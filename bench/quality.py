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
import time
from pathlib import Path

from bench.report import REPO, RESULTS, header, markdown_table, write_section
from deploy.export import export_stage
from deploy.quantize import quantize_stage
from distill.augment import augmentation_stage
from distill.config import load_config
from distill.data import data_stage
from distill.evaluation import evaluation_stage
from distill.logit_cache import logit_cache_stage
from distill.student import student_stage
from distill.teacher import teacher_stage

LAYER_CHOICES = {2: [0, 5], 3: [0, 2, 5], 4: [0, 2, 3, 5]}


def timed(run):
    started = time.perf_counter()
    artifact = run()
    return artifact, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "movie_reviews.yaml"))
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench-quality"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument(
        "--training",
        nargs="+",
        choices=["kd", "labels"],
        default=["kd", "labels"],
        help="distilled students, labels-only students, or both",
    )
    parser.add_argument("--output", default=str(RESULTS / "quality.json"))
    parser.add_argument(
        "--section", default="quality", help="section name in benchmarks.md ('' to skip)"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    base = load_config(args.config, [f"workdir={args.workdir}", *args.overrides])
    workdir = Path(base.workdir)
    data, data_s = timed(lambda: data_stage(workdir, base.data, base.teacher.model))
    teacher, teacher_s = timed(lambda: teacher_stage(workdir, base.teacher, data))
    augmented = None
    if base.augmentation.multiplier > 0:
        augmented = augmentation_stage(workdir, base.augmentation, data, teacher.path)
    cache, cache_s = timed(lambda: logit_cache_stage(workdir, teacher, data, augmented))
    shared = {
        "data_seconds": data_s,
        "teacher_seconds": teacher_s,
        "cache_seconds": cache_s,
        "teacher_reused": teacher.reused,
        "teacher_train_seconds": teacher.manifest.get("train_seconds"),
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
                    f"workdir={args.workdir}",
                    *args.overrides,
                    f"student.init.layers={LAYER_CHOICES[layers]}",
                    f"student.training.seed={seed}",
                ]
                if not kd:  # labels only: no soft targets, no hidden-state term
                    overrides += ["student.alpha=1.0", "student.hidden.weight=0"]
                config = load_config(args.config, overrides)
                student, student_s = timed(
                    lambda c=config: student_stage(
                        workdir, c.student, teacher, cache, data, augmented
                    )
                )
                evaluation, eval_s = timed(
                    lambda s=student: evaluation_stage(workdir, teacher, s, data)
                )
                export, export_s = timed(
                    lambda s=student, c=config: export_stage(workdir, c.export, s, data)
                )
                quantized, quant_s = timed(
                    lambda e=export, c=config: quantize_stage(workdir, c.export, e, data)
                )
                report = evaluation.manifest
                row = {
                    "layers": layers,
                    "kd": kd,
                    "seed": seed,
                    "test_accuracy": report["student_accuracy"],
                    "macro_f1": report["student_macro_f1"],
                    "teacher_accuracy": report["teacher_accuracy"],
                    "retention": report["retention"],
                    "int8_accuracy": quantized.manifest["test_accuracy"],
                    "fp32_onnx_accuracy": export.manifest["test_accuracy"],
                    "params": report["student_params"],
                    "best_epoch": student.manifest["best_epoch"],
                    "seconds": {
                        # A student reused from an earlier run reports its training time then.
                        "student": (
                            student.manifest["train_seconds"] if student.reused else student_s
                        ),
                        "evaluation": eval_s,
                        "export": export_s,
                        "quantize": quant_s,
                    },
                    "student_reused": student.reused,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                save(rows, shared, args)


def save(rows: list[dict], shared: dict, args) -> None:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2))
    Path(args.output).with_suffix(".shared.json").write_text(json.dumps(shared, indent=2))
    if args.section:
        write_section(args.section, render(rows, shared, args))


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


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
                    mean_std([r["test_accuracy"] for r in group]),
                    mean_std([r["macro_f1"] for r in group]),
                    mean_std([r["retention"] for r in group]),
                    mean_std([r["int8_accuracy"] for r in group]),
                    f"{group[0]['params'] / 1e6:.1f}M",
                    f"{statistics.mean(r['seconds']['student'] for r in group):.0f}",
                ]
            )
    teacher_accuracy = rows[0]["teacher_accuracy"]
    trained = shared.get("teacher_train_seconds")
    teacher_time = f" (fine-tuned once in {trained:.0f} s)" if trained else ""
    extra = " ".join(args.overrides) or "none"
    built = (
        "built by an earlier run in this workdir"
        if shared["cache_reused"]
        else f"built in {shared['cache_seconds']:.0f} s"
    )
    return "\n\n".join(
        [
            f"## Student quality ({args.section})",
            header("quality"),
            f"Teacher test accuracy {teacher_accuracy:.4f}{teacher_time}. "
            f"Overrides on every student: `{extra}`. "
            f"The teacher ran once for the whole grid: one target cache (`{shared['cache_key']}`, "
            f"{built}) "
            f"served all {len(rows)} students. Mean ± standard deviation over the seeds in the "
            "`seeds` column.",
            markdown_table(
                [
                    "layers",
                    "training",
                    "seeds",
                    "test accuracy",
                    "macro-F1",
                    "retention",
                    "INT8 accuracy",
                    "params",
                    "student s",
                ],
                table,
            ),
        ]
    )


if __name__ == "__main__":
    main()
