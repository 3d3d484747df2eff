"""Temperature and loss-weight sweep (`flows/sweep_grid.py` cells) from one teacher-target cache.

    .venv/bin/python -m bench.sweep [--temperatures 1 2 4 8] [--alphas 0 0.5] [key=value ...]
    .venv/bin/python -m bench.sweep [key=value ...] --pairs 1:0.5 2:0   # only these cells

Writes bench/results/sweep.json and the "sweep" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json

from bench import report as bench
from deploy.chain import run_until_cache
from distill.config import load_config
from flows.sweep_grid import Cell, cell_configs, cell_row, grid_cells, run_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--pairs", nargs="+", metavar="T:A",
                        help="only these (temperature, alpha) cells, e.g. 1:0.5 2:0")  # fmt: skip
    args = bench.arguments(parser, "sweep.json")

    base = load_config(args.config, args.overrides)
    upstream = run_until_cache(base, base.store_dir)
    chosen = cells(args)
    results = run_cells(cell_configs(args.config, args.overrides, chosen), base.store_dir, upstream)
    rows = []
    for cell, artifacts in zip(chosen, results, strict=True):
        full = cell_row(cell, artifacts)
        rows.append(
            {"temperature": float(cell.values["student.temperature"]),
             "alpha": float(cell.values["student.alpha"]), "val_accuracy": full.val_accuracy,
             "best_epoch": artifacts.student.manifest.best_epoch,
             "train_seconds": full.train_seconds}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    result = {"overrides": args.overrides, "rows": rows}
    bench.publish(args.output, result, "sweep", lambda: render(result, upstream.cache.key))


def render(result: dict, cache_key: str) -> str:
    rows = result["rows"]
    best = max(rows, key=lambda r: r["val_accuracy"])
    accuracy = {(r["temperature"], r["alpha"]): r["val_accuracy"] for r in rows}
    alphas = sorted({r["alpha"] for r in rows})
    table = [
        [f"T={t:g}"] + [f"{accuracy[t, a]:.4f}" if (t, a) in accuracy else "–" for a in alphas]
        for t in sorted({r["temperature"] for r in rows})
    ]
    return bench.section(
        "## Temperature and weight sweep (validation accuracy)",
        f"Overrides: `{' '.join(result['overrides']) or 'none'}`. One teacher-target cache "
        f"(`{cache_key}`) served all {len(rows)} students. "
        f"Best: T={best['temperature']:g}, a={best['alpha']:g} ({best['val_accuracy']:.4f}).",
        bench.markdown_table(["", *[f"a={a:g}" for a in alphas]], table),
    )


KEYS = ("student.temperature", "student.alpha")


def cells(args) -> list[Cell]:
    """The (temperature, alpha) cells to train: the given pairs, or the full grid."""
    if args.pairs:
        pairs = [pair.split(":") for pair in args.pairs]
        return [Cell(i, dict(zip(KEYS, pair, strict=True))) for i, pair in enumerate(pairs)]
    grid = [[f"{t:g}" for t in args.temperatures], [f"{a:g}" for a in args.alphas]]
    return grid_cells(dict(zip(KEYS, grid, strict=True)))


if __name__ == "__main__":
    main()
