"""A student for every latency budget (issue 23, part 4): student shapes distilled from the
MPNet teacher with the MPNet profile's recipe, each against the same shape on labels alone, with
its shipped model's batch-1 speed against MPNet in PyTorch.

    nice .venv/bin/python -m bench.frontier --store /work/lc_store [--size 2000|all]
        [--seeds 1 2 3] [--shapes 2L 2L-ff512 3L 3L-ff768 4L] [key=value ...]

Every run is `configs/movie_reviews_mpnet.yaml` with the shape's `student.init` and the seed;
the `labels` recipe sets alpha 1 and no augmented copies. The teacher, its logit cache and any
student already built are reused from --store (a killed run resumes from there). Then, in one
interleaved timing (bench.latency's), MPNet in PyTorch and each shape's shipped model (its first
seed's distilled run) at batch 1 on one thread and batch 32 on every core, 25 and 64 tokens.
Accuracy differences are paired McNemar tests of the shipped models on the test split.
Writes strong_path.json's `frontier` and the benchmarks.md section "frontier"; another
--section writes under its own name in both (so a run on another machine or seed keeps the
earlier one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from bench import report as bench
from bench.latency import (
    BATCH,
    BATCHES_PER_ROUND,
    CALLS_PER_ROUND,
    ROUNDS,
    SEQ_LENS,
    measure_rows,
    onnx_runner,
    token_windows,
    torch_runner,
)
from deploy.chain import RunArtifacts, run_after_cache, run_until_cache
from deploy.onnx_eval import onnx_logits, open_session
from deploy.quantize import shipped_split
from distill.config import PipelineConfig, load_config
from distill.data import load_split
from distill.paired import PairedComparison, compare

CONFIG = bench.REPO / "configs" / "movie_reviews_mpnet.yaml"
# Shape -> the bundled MiniLM's blocks the student keeps, and its feed-forward width (None: all
# 1536 neurons). "3L" is the MPNet profile's student; "2L-ff512" the edge profile's shape; the
# 1-layer shapes keep the block that sits on the embeddings it was trained with.
SHAPES: dict[str, tuple[list[int], int | None]] = {
    "1L": ([0], None),
    "1L-ff512": ([0], 512),
    "2L": ([0, 5], None),
    "2L-ff512": ([0, 5], 512),
    "3L": ([0, 2, 5], None),
    "3L-ff768": ([0, 2, 5], 768),
    "4L": ([0, 2, 3, 5], None),
}
RECIPES = {  # recipe -> overrides on the MPNet profile
    "distilled": (),
    "labels": ("student.alpha=1.0", "augmentation.multiplier=0"),
}
SPEED_GOAL = 100.0  # the shipped profile: at least this much faster than MPNet, 25 tokens
# What the pick must beat: the MPNet profile's student shape trained on labels alone.
BASELINE = ("3L", "labels")


@dataclass(frozen=True)
class Run:
    shape: str
    recipe: str
    seed: int
    stages: RunArtifacts


def student_init(shape: str) -> str:
    layers, width = SHAPES[shape]
    narrowed = f", intermediate_size: {width}" if width else ""
    return f"student.init={{kind: pretrained, model: minilm, layers: {layers}{narrowed}}}"


def config_for(
    shape: str, recipe: str, seed: int, size: str, overrides: list[str]
) -> PipelineConfig:
    """The MPNet profile with this shape, recipe and seed, on `size` train texts."""
    subsample = [] if size == "all" else [f"data.split.max_train_examples={size}"]
    seeds = [f"teacher.training.seed={seed}", f"student.training.seed={seed}"]
    extra = [*overrides, *subsample, student_init(shape), *RECIPES[recipe], *seeds]
    return load_config(CONFIG, extra)


def train(shape: str, recipe: str, seed: int, size: str, overrides: list[str]) -> Run:
    config = config_for(shape, recipe, seed, size, overrides)
    upstream = run_until_cache(config, config.store_dir)
    return Run(shape, recipe, seed, run_after_cache(config, config.store_dir, upstream))


def shipped_logits(run: Run) -> np.ndarray:
    """The shipped model's logits on the test split (in the data stage's row order)."""
    quantized = run.stages.quantize
    rows = shipped_split(quantized, run.stages.student_data, "test")
    session = open_session(quantized.file(quantized.manifest.file), threads=os.cpu_count() or 1)
    return onnx_logits(session, rows["input_ids"], rows["attention_mask"])


def row(run: Run) -> dict:
    student, quantized = run.stages.student.manifest, run.stages.quantize.manifest
    return {
        "shape": run.shape,
        "recipe": run.recipe,
        "seed": run.seed,
        "size": run.stages.data.manifest.sizes["train"],
        "layers": student.num_layers,
        "params": student.params,
        "teacher_accuracy": run.stages.evaluation.manifest.teacher_accuracy,
        "student_accuracy": run.stages.evaluation.manifest.student_accuracy,
        "int8_accuracy": quantized.test_accuracy,
        "int8_method": quantized.method,
        "precision": student.precision,  # what student training ran in (auto: by CPU)
        "shipped_bytes": quantized.bytes,
        "train_rows": sum(student.training_rows.values()),
        "train_seconds": round(student.train_seconds, 1),
    }


def latency(runs: list[Run]) -> list[dict]:
    """MPNet in PyTorch and each shape's shipped model, timed as bench.latency times models
    (interleaved rounds; batch 1 on one thread, batch 32 on every core; 25 and 64 tokens), each
    reading windows of the test texts in its own token ids; batch-1 rows get their speed ratio
    to MPNet."""
    first = runs[0].stages
    models = {"mpnet": ("mpnet", "pytorch-fp32", lambda t: torch_runner(first.teacher.path, t))}
    ids = {"mpnet": load_split(first.data.path, "test")["input_ids"]}
    for run in runs:
        path = run.stages.quantize.file(run.stages.quantize.manifest.file)
        models[run.shape] = (run.shape, "onnx-shipped", lambda t, p=path: onnx_runner(p, t))
        ids[run.shape] = shipped_split(run.stages.quantize, run.stages.student_data, "test")[
            "input_ids"
        ]
    count = ROUNDS * max(CALLS_PER_ROUND, BATCHES_PER_ROUND * BATCH)
    inputs = {name: {n: token_windows(ids[name], n, count) for n in SEQ_LENS} for name in models}
    rows = measure_rows(models, inputs, shipped="")
    mpnet = {(r["batch"], r["seq_len"]): r["p50_ms"] for r in rows if r["model"] == "mpnet"}
    for r in rows:
        r["speed_vs_mpnet"] = mpnet[r["batch"], r["seq_len"]] / r["p50_ms"]
    return rows


def summarize_shapes(rows: list[dict], pairs: list[dict], speed: list[dict]) -> list[dict]:
    """One line per shape: mean accuracies over seeds per recipe, the paired tests, the speed."""
    shapes = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        line: dict = {"shape": shape}
        for recipe in RECIPES:
            group = [r for r in rows if r["shape"] == shape and r["recipe"] == recipe]
            for key in ("student_accuracy", "int8_accuracy"):
                line[f"{recipe}_{key}"] = statistics.mean(r[key] for r in group) if group else None
            line["seeds"] = len(group)
        line["params"] = next(r["params"] for r in rows if r["shape"] == shape)
        line["paired"] = [p for p in pairs if p["shape"] == shape]
        for s in speed:
            if s["model"] == shape and s["batch"] == 1:
                line[f"p50_ms_{s['seq_len']}"] = s["p50_ms"]
                line[f"speed_vs_mpnet_{s['seq_len']}"] = s["speed_vs_mpnet"]
        line["meets_speed_goal"] = line.get("speed_vs_mpnet_25", 0) >= SPEED_GOAL
        shapes.append(line)
    return shapes


def pick(shapes: list[dict]) -> dict | None:
    """The most accurate shipped distilled shape that meets the speed goal, if any."""
    fast = [s for s in shapes if s["meets_speed_goal"] and s["distilled_int8_accuracy"]]
    return max(fast, key=lambda s: s["distilled_int8_accuracy"], default=None)


def render(result: dict, name: str = "frontier") -> str:
    table = []
    for s in result["shapes"]:
        tests = "; ".join(
            f"seed {p['seed']}: {PairedComparison.model_validate(p['comparison']).summary()}"
            for p in s["paired"]
        )
        table.append(
            [s["shape"], f"{s['params'] / 1e6:.1f}M", str(s["seeds"]),
             f"{s['distilled_student_accuracy']:.4f}", f"{s['distilled_int8_accuracy']:.4f}",
             f"{s['labels_int8_accuracy']:.4f}", tests,
             f"{s['p50_ms_25']:.2f} / {s['p50_ms_64']:.2f}",
             f"{s['speed_vs_mpnet_25']:.0f}x / {s['speed_vs_mpnet_64']:.0f}x"]
        )  # fmt: skip
    header = (
        "shape | params | seeds | distilled student | distilled INT8 | labels-only INT8 | "
        "INT8 distilled vs labels-only (paired, test) | p50 ms 25 / 64 tokens | "
        "speed vs MPNet 25 / 64"
    )
    mpnet = {
        s["seq_len"]: s["p50_ms"]
        for s in result["latency"]
        if s["model"] == "mpnet" and s["batch"] == 1
    }
    chosen = result["pick"]
    lines = [
        f"Train texts: {result['size']} (+ the profile's augmented copies for the distilled "
        f"recipe); MPNet teacher test accuracy {result['teacher_accuracy']:.4f}. MPNet in "
        f"PyTorch, batch 1, one thread: {mpnet[25]:.1f} ms at 25 tokens, {mpnet[64]:.1f} ms "
        f"at 64. Each shape's shipped model is its first seed's distilled one.",
        f"Most accurate shipped shape at >= {SPEED_GOAL:g}x MPNet's speed (25 tokens): "
        + (f"{chosen['shape']} ({chosen['distilled_int8_accuracy']:.4f})" if chosen else "none"),
    ]
    if result.get("pick_vs_baseline"):
        versus = PairedComparison.model_validate(result["pick_vs_baseline"]).summary()
        lines.append(f"Its shipped model against {' on '.join(BASELINE)} (shipped, test): {versus}")
    title = f"## A student for every latency budget ({name})"
    return bench.section(title, bench.markdown_table(header, table), "\n\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="all", help="train texts kept ('all': every one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    args = bench.arguments(parser, output=None, section="frontier", config=False, argv=argv)
    started, load_before = time.time(), os.getloadavg()
    runs = []
    for shape in args.shapes:
        for seed in args.seeds:
            for recipe in RECIPES:
                runs.append(train(shape, recipe, seed, args.size, args.overrides))
                print(json.dumps(row(runs[-1])), flush=True)
    # Each shipped model's test logits, once: every paired test below reads them.
    logits = {(r.shape, r.recipe, r.seed): shipped_logits(r) for r in runs}
    truth = np.asarray(load_split(runs[0].stages.data.path, "test")["label"])

    def paired(candidate: tuple, reference: tuple) -> dict:
        return compare(logits[reference], logits[candidate], truth).model_dump()

    pairs = [
        {"shape": shape, "seed": seed,
         "comparison": paired((shape, recipe, seed), (shape, "labels", seed))}
        for shape, recipe, seed in logits
        if recipe == "distilled"
    ]  # fmt: skip
    shipped = {r.shape: r for r in runs if r.recipe == "distilled" and r.seed == args.seeds[0]}
    speed = latency(list(shipped.values()))
    rows = [row(r) for r in runs]
    shapes = summarize_shapes(rows, pairs, speed)
    chosen = pick(shapes)
    baseline = (*BASELINE, args.seeds[0])
    against_baseline = (
        paired((chosen["shape"], "distilled", args.seeds[0]), baseline)
        if chosen and baseline in logits
        else None
    )
    result = {
        "size": rows[0]["size"],
        "teacher_accuracy": rows[0]["teacher_accuracy"],
        "rows": rows,
        "latency": speed,
        "shapes": shapes,
        "pick": chosen,
        "pick_vs_baseline": against_baseline,  # first seed's shipped models, test split
        "speed_goal": SPEED_GOAL,
        "machine": bench.machine(),
        "command": bench.command_line(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "seconds": round(time.time() - started, 1),
    }
    # strong_path.json's `frontier` (or the --section's name, so a run on another machine or
    # seed keeps the earlier one): one line per shape; the runs behind it beside it.
    key = args.section or "frontier"
    bench.update_results("strong_path.json", **{key: shapes, f"{key}_runs": result})
    if args.section:
        bench.write_section(args.section, render(result, args.section))
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "latency")}, indent=1))


if __name__ == "__main__":
    main()
