"""Temperature and loss-weight sweep on the validation split, all from one teacher-target cache.

    .venv/bin/python -m bench.sweep [--temperatures 1 2 4 8] [--alphas 0 0.5] [key=value ...]
    .venv/bin/python -m bench.sweep [key=value ...] --pairs 1:0.5 2:0   # only these cells

Each (T, a) is one sweep cell (`flows/sweep_grid.py`, the code `distillery sweep` runs: student,
evaluation, export, quantize; no teacher re-runs: T is applied at training time); the table
reports each student's best validation accuracy. The stages are wired by `distill.chain` and
`deploy.chain`, exactly as in the pipeline (augmentation included), in the config's store: the
sweep reuses the teacher and cache of a pipeline run of the same config. Writes
bench/results/sweep.json and a table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.report import REPO, common_args, header, markdown_table, store_override, write_section
from distill.chain import run_until_cache
from distill.config import load_config
from flows.sweep_grid import Cell, cell_configs, cell_row, grid_cells, run_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "movie_reviews.yaml"))
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument(
        "--pairs",
        nargs="+",
        metavar="T:A",
        help="only these (temperature, alpha) cells instead of the full grid, e.g. 1:0.5 2:0",
    )
    common_args(parser, "sweep.json")
    args = parser.parse_args()
    store_override(args)

    base = load_config(args.config, args.overrides)
    store = base.store_dir
    upstream = run_until_cache(base, store)
    cache = upstream.cache
    chosen = cells(args)
    # The same cell code as `distillery sweep` (student, evaluation, export, quantize), here
    # one cell after another in this process.
    results = run_cells(cell_configs(args.config, args.overrides, chosen), store, upstream)
    rows = []
    for cell, artifacts in zip(chosen, results, strict=True):
        full = cell_row(cell, artifacts)
        row = {
            "temperature": float(cell.values["student.temperature"]),
            "alpha": float(cell.values["student.alpha"]),
            "val_accuracy": full.val_accuracy,
            "best_epoch": artifacts.student.manifest.best_epoch,
            "train_seconds": full.train_seconds,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.output).write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=2))
    best = max(rows, key=lambda r: r["val_accuracy"])
    accuracy = {(r["temperature"], r["alpha"]): r["val_accuracy"] for r in rows}
    temperatures = sorted({r["temperature"] for r in rows})
    alphas = sorted({r["alpha"] for r in rows})
    table = [
        [f"T={t:g}"] + [f"{accuracy[t, a]:.4f}" if (t, a) in accuracy else "–" for a in alphas]
        for t in temperatures
    ]
    write_section(
        "sweep",
        "\n\n".join(
            [
                "## Temperature and weight sweep (validation accuracy)",
                header("sweep"),
                f"Overrides: `{' '.join(args.overrides) or 'none'}`. One teacher-target cache "
                f"(`{cache.key}`) served all {len(rows)} students. "
                f"Best: T={best['temperature']:g}, a={best['alpha']:g} "
                f"({best['val_accuracy']:.4f}).",
                markdown_table(["", *[f"a={a:g}" for a in alphas]], table),
            ]
        ),
    )


def cells(args) -> list[Cell]:
    """The (temperature, alpha) cells to train: the given pairs, or the full grid."""
    if args.pairs:
        pairs = [pair.split(":") for pair in args.pairs]
        return [
            Cell(i, {"student.temperature": t, "student.alpha": a})
            for i, (t, a) in enumerate(pairs)
        ]
    return grid_cells(
        {
            "student.temperature": [f"{t:g}" for t in args.temperatures],
            "student.alpha": [f"{a:g}" for a in args.alphas],
        }
    )


if __name__ == "__main__":
    main()
