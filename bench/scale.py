"""Scaling on one machine: a student sweep on a local Dask cluster, and sharded teacher labelling.

    .venv/bin/python -m bench.scale [--quick] [--workers 2] [--shards 50] [--store DIR] [k=v ...]

(a) Four student cells from one cache, sequential (two torch threads) and on `local:2` (one per
worker), with identical accuracies; (b) the train split plus one augmented copy labelled in
`--shards` shards on `local:1` and `local:2`, byte-identical to the unsharded cache. `--quick`
(600 rows, one epoch, 10 shards) writes scale_quick.json; else bench/results/scale.json and the
"scale" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report as bench
from distill.config import ComputeConfig, load_config

CELL_GRID = {"student.alpha": ["0.3", "0.7"], "student.temperature": ["1", "4"]}
QUICK = ["teacher.training.epochs=1", "student.training.epochs=1"]
QUICK_MAX_EXAMPLES = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rows and epochs, 10 shards")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, help="shards of the labelling run (default 50)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = bench.arguments(parser, None, argv=argv)  # scale.json, or scale_quick.json with --quick
    if args.quick:
        current = load_config(args.config, args.overrides).data.max_examples
        rows = min(current or QUICK_MAX_EXAMPLES, QUICK_MAX_EXAMPLES)
        args.overrides = [*QUICK, f"data.max_examples={rows}", *args.overrides]
    args.shards = args.shards or (10 if args.quick else 50)
    name = "scale_quick.json" if args.quick else "scale.json"
    args.output = Path(args.output) if args.output else bench.RESULTS / name
    return args


def on_cluster(compute: ComputeConfig, job):
    """Run `job()` inside a flow on `compute`'s task runner; returns (its result, its wall
    seconds inside the flow, the flow's wall seconds including the cluster's start and stop)."""
    from prefect import flow

    from flows.cluster import with_compute

    @flow(name="distillery-scale-bench")
    def timed() -> tuple[Any, float]:
        started = time.perf_counter()
        result = job()
        return result, time.perf_counter() - started

    started = time.perf_counter()
    result, seconds = with_compute(timed, compute)()
    return result, seconds, time.perf_counter() - started


def local(workers: int) -> ComputeConfig:
    return ComputeConfig(cluster=f"local:{workers}", threads_per_worker=1)


def sweep_cells(args, base, store: Path, scratch: Path) -> dict[str, Any]:
    """(a): the same four student cells, sequential with two threads, then on the cluster."""
    import torch

    from distill.chain import run_student, run_until_cache
    from flows.sweep_grid import cell_configs, grid_cells
    from tasks.stages import prefect_fan_out

    upstream = run_until_cache(base, store)
    cells = grid_cells(CELL_GRID)
    configs = cell_configs(args.config, args.overrides, cells)

    def works(folder: Path):
        return [functools.partial(run_student, c.student, folder, upstream) for c in configs]

    torch.set_num_threads(2)
    started = time.perf_counter()
    sequential = [work() for work in works(scratch / "sequential")]
    sequential_s = time.perf_counter() - started
    parallel, parallel_s, parallel_total_s = on_cluster(
        local(args.workers), lambda: prefect_fan_out("scale-cell", works(scratch / "parallel"))
    )
    rows = [
        {"cell": cell.index, **cell.values,
         "val_accuracy_sequential": seq.manifest.best_val_accuracy,
         "val_accuracy_parallel": par.manifest.best_val_accuracy,
         "train_seconds_sequential": seq.manifest.train_seconds,
         "train_seconds_parallel": par.manifest.train_seconds,
         "same_weights": seq.manifest.weights_sha256 == par.manifest.weights_sha256}
        for cell, seq, par in zip(cells, sequential, parallel, strict=True)
    ]  # fmt: skip
    identical = all(r["val_accuracy_sequential"] == r["val_accuracy_parallel"] for r in rows)
    return {
        "variants": len(rows), "workers": args.workers, "sequential_s": sequential_s,
        "parallel_s": parallel_s, "ratio": parallel_s / sequential_s, "goal": 0.75,
        "parallel_with_cluster_start_s": parallel_total_s, "identical_accuracies": identical,
        "cells": rows,
    }  # fmt: skip


def sharded_labelling(args, store: Path, scratch: Path) -> dict[str, Any]:
    """(b): the training split plus one augmented copy, labelled in shards on 1 and N workers."""
    from distill.chain import run_until_cache
    from distill.files import file_sha256
    from distill.logit_cache import logit_cache_stage
    from tasks.stages import prefect_fan_out

    config = load_config(args.config, [*args.overrides, "augmentation.multiplier=1"])
    started = time.perf_counter()
    upstream = run_until_cache(config, store)  # the unsharded cache: the reference bytes
    reference_s = time.perf_counter() - started
    reference = file_sha256(upstream.cache.file(upstream.cache.manifest.file))
    rows = sum(upstream.cache.manifest.rows.values())
    shard_rows = math.ceil(rows / args.shards)
    runs: dict[str, Any] = {}
    for workers in sorted({1, args.workers}):
        shards: list = []

        def recording(name, works, shards=shards):
            shards.extend(prefect_fan_out(name, works))
            return shards

        def label(workers=workers, recording=recording):
            return logit_cache_stage(
                scratch / f"cache-{workers}", upstream.teacher, upstream.data, upstream.augmented,
                training=config.teacher.training, shard_rows=shard_rows, fan_out=recording,
            )  # fmt: skip

        cache, seconds, total = on_cluster(local(workers), label)
        compute = [s.manifest.seconds for s in shards]
        same = file_sha256(cache.file(cache.manifest.file)) == reference
        same = same and cache.manifest.cls_sha256 == upstream.cache.manifest.cls_sha256
        # The fixed cost: all that is not a shard's forward passes, per shard (task bookkeeping,
        # loading the teacher and rows, scheduling, assembling).
        runs[str(workers)] = {
            "seconds": seconds, "with_cluster_start_s": total, "shards": len(shards),
            "per_shard_texts_per_s": statistics.median(s.manifest.texts_per_second for s in shards),
            "shard_compute_s": sum(compute),
            "fixed_cost_per_shard_s": (seconds * workers - sum(compute)) / len(shards),
            "byte_identical": same,
        }  # fmt: skip
    one, many = runs["1"], runs[str(args.workers)]
    counts = upstream.cache.manifest.rows
    # "shards": shard_rows is rounded up to whole inference batches
    return {
        "rows": rows, "train_rows": counts["train"], "augmented_rows": counts["augmented"],
        "shards_asked": args.shards, "shards": one["shards"], "shard_rows": shard_rows,
        "unsharded_in_process_s": reference_s if not upstream.cache.reused else None,
        "runs": runs, "ratio": many["seconds"] / one["seconds"],
        "per_shard_texts_per_s": one["per_shard_texts_per_s"],
        "fixed_cost_per_shard_s": one["fixed_cost_per_shard_s"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    base = load_config(args.config, args.overrides)
    base.workdir.mkdir(parents=True, exist_ok=True)  # Prefect's home goes there
    from flows.runtime_env import configure_environment, quiet_weight_loading

    configure_environment(base.workdir)  # before prefect is imported
    quiet_weight_loading()
    from flows.cluster import prefect_api_for_workers

    store = base.store_dir.resolve()
    store.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=".scale-bench-", dir=store) as tmp,
        prefect_api_for_workers(local(args.workers)),  # one Prefect API for every flow here
    ):
        scratch = Path(tmp)
        sweep = sweep_cells(args, base, store, scratch)
        cache = sharded_labelling(args, store, scratch)
    result = {
        **sweep, "cache": cache, "quick": args.quick, "config": str(args.config),
        "overrides": args.overrides, "machine": bench.machine(),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k not in ("cells", "machine")}, indent=2))
    bench.publish(args.output, result, None if args.no_docs else "scale", lambda: report(result))
    return result


CELLS = {"cell": "", "student.alpha": "", "student.temperature": ""}
CELLS |= {"val_accuracy_sequential": ".4f", "val_accuracy_parallel": ".4f"}
RUNS = {"workers": "", "seconds": ".1f", "per_shard_texts_per_s": ".1f"}
RUNS |= {"fixed_cost_per_shard_s": ".2f"}


def report(result: dict[str, Any]) -> str:
    cache = result["cache"]
    label = " (QUICK mode: fewer rows and epochs)" if result["quick"] else ""
    runs = [{"workers": n, **r} for n, r in cache["runs"].items()]
    return bench.section(
        f"## Scaling on a local Dask cluster{label}",
        f"Four student cells from one cache: sequential in one process with 2 torch threads "
        f"{result['sequential_s']:.1f} s; on `local:{result['workers']}` with 1 torch thread "
        f"per worker {result['parallel_s']:.1f} s (cluster start and stop included: "
        f"{result['parallel_with_cluster_start_s']:.1f} s). parallel_s / sequential_s = "
        f"**{result['ratio']:.2f}** (goal <= 0.75); per-cell accuracies identical: "
        f"{result['identical_accuracies']}.",
        bench.markdown_table(
            ["cell", "alpha", "T", "val acc sequential", "val acc parallel"],
            bench.formatted(result["cells"], CELLS),
        ),
        f"Sharded teacher labelling of {cache['rows']:,} rows (train {cache['train_rows']:,} "
        f"+ augmented {cache['augmented_rows']:,}) in {cache['shards']} shards "
        f"({cache['shard_rows']} rows asked per shard, rounded up to whole inference batches "
        f"of 128): {result['workers']} workers / 1 worker = "
        f"**{cache['ratio']:.2f}**; caches byte-identical to the unsharded one: "
        f"{all(r['byte_identical'] for r in cache['runs'].values())}.",
        bench.markdown_table(
            ["workers", "seconds", "per-shard texts/s (median)", "fixed cost per shard (s)"],
            bench.formatted(runs, RUNS),
        ),
    )


if __name__ == "__main__":
    main()
