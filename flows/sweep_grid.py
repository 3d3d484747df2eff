"""A student sweep without the engine: the grid, its cells, running them, the results table.

`--grid student.alpha=0.3,0.5 student.temperature=1,2,4` is the product of the listed values;
each cell is the base config plus that cell's overrides. A cell may change only what comes
after the teacher-target cache (the student, export and quantize sections), so every cell
trains from the one shared cache. Each cell runs student -> evaluation -> export -> quantize as
normal content-addressed stages (`deploy.chain.run_after_cache`), so a rerun reuses finished
cells. Cells go to a `FanOut`: one after another here by default, Prefect tasks on the cluster
in `distillery sweep`. `bench/sweep.py` and `bench/scale.py` run cells through this module.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from deploy.chain import RunArtifacts, run_after_cache
from deploy.stage_table import SWEEPABLE_SECTIONS
from distill.chain import CacheArtifacts
from distill.config import ConfigError, PipelineConfig, load_config
from distill.data import load_split
from distill.fan_out import FanOut, run_each_here
from distill.gates import PromotionResult
from distill.paired import compare

# Sections read only after the cache (the sweep cell stages' own sections, from the stage
# table): a grid over anything else would need another cache.
SWEEPABLE = tuple(f"{section}." for section in SWEEPABLE_SECTIONS)
RESULTS_CSV = "sweep_results.csv"
RESULTS_JSON = "sweep_results.json"
GRID_PNG = "sweep_grid.png"


class SweepRow(BaseModel):
    """One cell's row of the results table: its settings, what it measured, and (once
    `compare_with_best` ran) its paired comparison with the best cell on validation.

    Written flat, as the table shows it: the swept settings are columns beside the numbers, and
    the comparison's columns appear only once it exists."""

    model_config = ConfigDict(frozen=True)

    cell: int
    values: dict[str, str]  # dotted key -> the value as written in the grid
    val_accuracy: float
    test_accuracy: float
    int8_accuracy: float
    int8_p50_ms: float
    fp32_p50_ms: float
    int8_bytes: int
    retention: float
    train_seconds: float
    student_key: str
    reused: bool  # every stage of the cell came from an earlier run's folders
    vs_best: float | None = None  # accuracy difference to the best cell, its 95% interval,
    vs_best_low: float | None = None  # the one-sided p-value of "worse than the best", and
    vs_best_high: float | None = None  # whether it is tied with the best (not significantly
    vs_best_p_worse: float | None = None  # worse)
    tied_with_best: bool | None = None

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields = {k: v for k, v in handler(self).items() if v is not None}
        head = {"cell": fields.pop("cell")} if "cell" in fields else {}  # `include` may omit it
        return head | fields.pop("values", {}) | fields


class RegisteredCell(BaseModel):
    """The cell `--register-best` registered, bundled and put through the promotion gates."""

    model_config = ConfigDict(frozen=True)

    registered_model: str
    model_version: str
    reused: bool
    bundle: str
    promotion: PromotionResult


class SweepSummary(BaseModel):
    """What `distillery sweep` returns and writes as `sweep_summary.json`."""

    model_config = ConfigDict(frozen=True)

    mlflow_run_id: str
    cell_run_ids: list[str]
    cache_key: str
    best_cell: int
    # Among cells not significantly worse than the best: the smallest, then fastest.
    register_cell: int
    rows: list[SweepRow]
    results: list[str]
    registered: RegisteredCell | None = None
    wall_seconds: float


@dataclass(frozen=True)
class Cell:
    index: int
    values: dict[str, str]  # dotted key -> the value as written in the grid

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values.items()]

    @property
    def label(self) -> str:
        return " ".join(self.overrides)


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """`key=v1,v2,...` items -> {key: [v1, v2, ...]}, in the order given."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = [value.strip() for value in raw.split(",")]
        if not sep or not key or not all(values):
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,... (no empty values)")
        if not key.startswith(SWEEPABLE):
            raise ConfigError(
                f"--grid {item!r}: only keys under {', '.join(s[:-1] for s in SWEEPABLE)} can be "
                "swept (every cell shares one data, teacher and logit cache)"
            )
        if key in grid:
            raise ConfigError(f"--grid: key {key!r} is given twice")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item!r}: a value is listed twice")
        grid[key] = values
    if not grid:
        raise ConfigError("--grid: give at least one key=value1,value2,...")
    return grid


def split_sweep_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """`[override ...] --grid key=v1,v2 [key=v1,v2 ...]` -> (overrides, grid items) for
    `parse_grid`; `--grid` may be repeated (or written `--grid=key=v1,v2`), each taking the
    words after it."""
    overrides: list[str] = []
    grid: list[str] = []
    target = overrides
    for arg in args:
        if arg == "--grid":
            target = grid
        elif arg.startswith("--grid="):
            target = grid
            grid.append(arg.removeprefix("--grid="))
        elif arg.startswith("-"):
            raise ConfigError(f"sweep: unknown option {arg!r}")
        else:
            target.append(arg)
    if not grid:
        raise ConfigError("sweep: give the grid, e.g. --grid student.alpha=0.3,0.5")
    return overrides, grid


def grid_cells(grid: dict[str, list[str]]) -> list[Cell]:
    """Every combination, the last key varying fastest."""
    keys = list(grid)
    return [
        Cell(index, dict(zip(keys, combination, strict=True)))
        for index, combination in enumerate(itertools.product(*grid.values()))
    ]


def cell_configs(
    config_path: str | Path, overrides: Sequence[str], cells: Sequence[Cell]
) -> list[PipelineConfig]:
    """Each cell's config (base overrides, then the cell's); a bad value fails here, naming its
    key, before any work starts."""
    return [load_config(config_path, [*overrides, *cell.overrides]) for cell in cells]


def run_cell(config: PipelineConfig, store: Path, upstream: CacheArtifacts) -> RunArtifacts:
    """One cell: student -> evaluation -> export -> quantize from the shared cache."""
    return run_after_cache(config, store, upstream)


def run_cells(
    configs: Sequence[PipelineConfig],
    store: Path,
    upstream: CacheArtifacts,
    fan_out: FanOut = run_each_here,
) -> list[RunArtifacts]:
    works = [functools.partial(run_cell, config, store, upstream) for config in configs]
    return fan_out("sweep-cell", works)


def cell_row(cell: Cell, artifacts: RunArtifacts) -> SweepRow:
    """The results-table row of one cell: its settings and what it measured."""
    student, evaluation, quantized = artifacts.student, artifacts.evaluation, artifacts.quantize
    return SweepRow(
        cell=cell.index,
        values=cell.values,
        val_accuracy=student.manifest.best_val_accuracy,
        test_accuracy=evaluation.manifest.student_accuracy,
        int8_accuracy=quantized.manifest.test_accuracy,
        int8_p50_ms=quantized.manifest.p50_ms,
        fp32_p50_ms=quantized.manifest.fp32_p50_ms,
        int8_bytes=quantized.manifest.bytes,
        retention=evaluation.manifest.retention,
        train_seconds=student.manifest.train_seconds,
        student_key=student.key,
        reused=all(a.reused for a in (student, evaluation, artifacts.export, quantized)),
    )


def best_row(rows: Sequence[SweepRow]) -> SweepRow:
    """The cell with the highest validation accuracy (the first one on a tie)."""
    return max(rows, key=lambda row: row.val_accuracy)


def validation_predictions(artifacts: RunArtifacts) -> np.ndarray:
    """The cell's trained student's predicted labels on the validation split (export stage)."""
    export = artifacts.export
    with np.load(export.file(export.manifest.student_predictions)) as saved:
        return saved["validation"]


def validation_labels(artifacts: RunArtifacts) -> np.ndarray:
    return np.asarray(load_split(artifacts.data.path, "validation")["label"])


def compare_with_best(
    rows: Sequence[SweepRow], predictions: Sequence[np.ndarray], labels: np.ndarray
) -> list[SweepRow]:
    """Each row with its cell's paired comparison against the best cell on the same validation
    texts (`predictions[i]` belongs to `rows[i]`)."""
    best = rows.index(best_row(rows))
    compared = []
    for row, predicted in zip(rows, predictions, strict=True):
        comparison = compare(predictions[best], predicted, labels)
        low, high = comparison.interval
        compared.append(
            SweepRow(
                **{
                    **dict(row),
                    "vs_best": comparison.difference,
                    "vs_best_low": low,
                    "vs_best_high": high,
                    "vs_best_p_worse": comparison.p_worse,
                    "tied_with_best": not comparison.significantly_worse(),
                }
            )
        )
    return compared


def register_row(rows: Sequence[SweepRow]) -> SweepRow:
    """The cell `--register-best` registers: among cells tied with the best (not significantly
    worse on validation; rows without a comparison count only the best), the smallest shipped
    model, then the fastest, then the most accurate."""
    best = best_row(rows)
    tied = [row for row in rows if row.tied_with_best or row is best]
    return min(tied, key=lambda row: (row.int8_bytes, row.int8_p50_ms, -row.val_accuracy, row.cell))


def results_csv(rows: Sequence[SweepRow]) -> str:
    flat = [row.model_dump() for row in rows]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()


def write_results(folder: Path, grid: dict[str, list[str]], rows: Sequence[SweepRow]) -> list[Path]:
    """The table as CSV and JSON and the grid as a PNG, in `folder`; returns the three paths."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULTS_CSV).write_text(results_csv(rows))
    best, registered = best_row(rows), register_row(rows)
    (folder / RESULTS_JSON).write_text(
        json.dumps(
            {
                "grid": grid,
                "best_cell": best.cell,
                "register_cell": registered.cell,
                "rows": [row.model_dump() for row in rows],
            },
            indent=2,
        )
    )
    plot_grid(grid, rows, folder / GRID_PNG)
    return [folder / RESULTS_CSV, folder / RESULTS_JSON, folder / GRID_PNG]


def plot_grid(grid: dict[str, list[str]], rows: Sequence[SweepRow], path: Path) -> None:
    """Validation accuracy: a heatmap over two swept keys, else one bar per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(grid)
    if len(keys) == 2:
        first, second = keys
        table = [
            [
                next(r.val_accuracy for r in rows if r.values[first] == a and r.values[second] == b)
                for b in grid[second]
            ]
            for a in grid[first]
        ]
        figure, axes = plt.subplots(
            figsize=(1.2 * len(grid[second]) + 3, 0.8 * len(grid[first]) + 2)
        )
        image = axes.imshow(table, cmap="viridis")
        axes.set_xticks(range(len(grid[second])), grid[second])
        axes.set_yticks(range(len(grid[first])), grid[first])
        axes.set_xlabel(second)
        axes.set_ylabel(first)
        for i, line in enumerate(table):
            for j, value in enumerate(line):
                axes.text(j, i, f"{value:.3f}", ha="center", va="center", color="white")
        figure.colorbar(image, ax=axes, label="validation accuracy")
    else:
        figure, axes = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 4))
        labels = [", ".join(row.values[key] for key in keys) for row in rows]
        axes.bar(range(len(rows)), [row.val_accuracy for row in rows])
        axes.set_xticks(range(len(rows)), labels, rotation=45, ha="right")
        axes.set_xlabel(", ".join(keys))
        axes.set_ylabel("validation accuracy")
    axes.set_title("Student sweep: validation accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
