"""`distillery sweep` and sharded labelling: the grid, and real runs on a Dask cluster.

The grid tests are pure. The engine tests run the sweep flow (real Prefect, real SQLite MLflow)
with a 2-cell grid and a 3-shard cache against a real `dask scheduler` and two `dask worker`
processes, and against `local:2`; both must give the sequential, in-process results: equal cell
accuracies and a cache byte-identical to the unsharded one.
"""

from __future__ import annotations

import json
import time

import distributed
import pytest
from typer.testing import CliRunner

from distill.chain import run_until_cache
from distill.config import ConfigError, load_config
from distill.files import file_sha256
from distill.shards import SHARD_STAGE
from flows.cli import app
from flows.sweep_grid import (
    GRID_PNG,
    RESULTS_CSV,
    SweepRow,
    cell_configs,
    cell_row,
    compare_with_best,
    grid_cells,
    parse_grid,
    register_row,
    run_cells,
    split_sweep_args,
    write_results,
)
from tests.conftest import TINY_CONFIG

GRID = ["student.alpha=0.3,0.7"]
SHARD_ROWS = 96  # the tiny train split has 280 rows: 3 shards


# --- the grid -------------------------------------------------------------------------------


def test_grid_is_the_product_of_the_listed_values_last_key_fastest():
    grid = parse_grid(["student.alpha=0.3,0.5", "student.temperature=1, 2 ,4"])
    assert grid == {"student.alpha": ["0.3", "0.5"], "student.temperature": ["1", "2", "4"]}
    cells = grid_cells(grid)
    assert [cell.index for cell in cells] == list(range(6))
    assert cells[1].overrides == ["student.alpha=0.3", "student.temperature=2"]
    assert cells[5].values == {"student.alpha": "0.5", "student.temperature": "4"}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["teacher.model=minilm,mpnet"], r"'teacher\.model=minilm,mpnet': only keys under student"),
        (["student.alpha"], r"'student\.alpha': expected key=value1,value2"),
        (["student.alpha=0.3,"], "no empty values"),
        (["student.alpha=0.3", "student.alpha=0.5"], r"'student\.alpha' is given twice"),
        (["student.alpha=0.3,0.3"], "listed twice"),
        ([], "at least one"),
    ],
)
def test_bad_grids_are_refused_naming_the_item(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(items)


def test_a_bad_cell_value_fails_before_any_work_naming_its_key():
    cells = grid_cells(parse_grid(["student.alpha=0.5,lots"]))
    with pytest.raises(ConfigError, match=r"student\.alpha"):
        cell_configs(TINY_CONFIG, [], cells)


def test_sweep_arguments_split_into_overrides_and_grid():
    args = ["workdir=/tmp/x", "--grid", "student.alpha=0.3,0.5", "student.temperature=1,2"]
    assert split_sweep_args(args) == (
        ["workdir=/tmp/x"],
        ["student.alpha=0.3,0.5", "student.temperature=1,2"],
    )
    assert split_sweep_args(["--grid=student.alpha=1,2", "--grid", "export.opset=18,20"]) == (
        [],
        ["student.alpha=1,2", "export.opset=18,20"],
    )
    with pytest.raises(ConfigError, match="give the grid"):
        split_sweep_args(["workdir=/tmp/x"])
    with pytest.raises(ConfigError, match="unknown option '--gird'"):
        split_sweep_args(["--gird", "student.alpha=1,2"])


def test_cli_refuses_a_grid_over_the_teacher_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app, ["sweep", str(TINY_CONFIG), f"workdir={tmp_path}", "--grid", "data.max_length=16,32"]
    )
    assert result.exit_code != 0
    assert "only keys under student" in result.output and "Traceback" not in result.output


def measured(cell: int, val_accuracy: float, values=None, **more) -> SweepRow:
    """A results row with made-up measurements: what the table code reads, and only that."""
    numbers = {
        "test_accuracy": 0.5,
        "int8_accuracy": 0.5,
        "int8_p50_ms": 1.0,
        "fp32_p50_ms": 2.0,
        "int8_bytes": 100,
        "retention": 0.9,
        "train_seconds": 3.0,
        "student_key": f"key{cell}",
        "reused": False,
    }
    return SweepRow(cell=cell, values=values or {}, val_accuracy=val_accuracy, **(numbers | more))


def test_results_table_and_grid_png(tmp_path):
    grid = parse_grid(["student.alpha=0.3,0.5", "student.temperature=1,2"])
    rows = [
        measured(c.index, acc, c.values)
        for c, acc in zip(grid_cells(grid), [0.5, 0.75, 0.6, 0.7], strict=True)
    ]
    paths = write_results(tmp_path, grid, rows)
    assert [p.name for p in paths] == [RESULTS_CSV, "sweep_results.json", GRID_PNG]
    lines = (tmp_path / RESULTS_CSV).read_text().splitlines()
    # The swept settings are columns beside the numbers; a row without a comparison has none.
    assert lines[0].startswith("cell,student.alpha,student.temperature,val_accuracy,")
    assert "vs_best" not in lines[0]
    assert lines[2].startswith("1,0.3,2,0.75,")
    assert json.loads(paths[1].read_text())["rows"][1]["student.temperature"] == "2"
    assert json.loads(paths[1].read_text())["best_cell"] == 1
    assert json.loads(paths[1].read_text())["register_cell"] == 1
    assert (tmp_path / GRID_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_register_best_takes_the_smallest_then_fastest_cell_tied_with_the_best():
    import numpy as np

    labels = np.ones(1000, dtype=int)

    def wrong_on(start, count):
        predicted = labels.copy()
        predicted[start : start + count] = 0
        return predicted

    rows = [
        measured(0, 0.990, int8_bytes=900, int8_p50_ms=2.0),
        measured(1, 0.984, int8_bytes=500, int8_p50_ms=3.0),
        measured(2, 0.984, int8_bytes=500, int8_p50_ms=1.5),
        measured(3, 0.960, int8_bytes=100, int8_p50_ms=1.0),
    ]
    # The best cell misses texts 0-9. Cells 1 and 2 miss 16 others (16 lost, 10 gained against
    # the best: p = 0.16, tied); cell 3 misses 40 others (40 against 10: significantly worse).
    predictions = [wrong_on(0, 10), wrong_on(10, 16), wrong_on(500, 16), wrong_on(100, 40)]
    compared = compare_with_best(rows, predictions, labels)
    assert [row.tied_with_best for row in compared] == [True, True, True, False]
    assert compared[0].vs_best == 0.0 and compared[0].vs_best_p_worse == 1.0
    assert compared[1].vs_best == pytest.approx(-0.006)
    assert compared[1].vs_best_low < -0.006 < compared[1].vs_best_high
    assert 0.05 < compared[1].vs_best_p_worse < 0.2
    assert compared[3].vs_best_p_worse < 0.001
    # The smallest tied cells are 1 and 2; cell 2 is faster. Cell 3 is smaller but worse.
    assert register_row(compared).cell == 2
    assert register_row(rows).cell == 0  # without comparisons: the most accurate only


# --- real engine ----------------------------------------------------------------------------


def tiny(workdir, *more: str):
    return [f"workdir={workdir}", f"compute.shard_rows={SHARD_ROWS}", *more]


def cache_bytes(cache) -> tuple[str, str]:
    manifest = cache.manifest
    return file_sha256(cache.file(manifest.file)), file_sha256(cache.file(manifest.cls_file))


def accuracies(rows) -> list[tuple]:
    return [
        (r.cell, r.values["student.alpha"], r.val_accuracy, r.test_accuracy, r.int8_accuracy)
        for r in rows
    ]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: an unsharded cache and both cells, one after another in this process."""
    workdir = tmp_path_factory.mktemp("sweep-sequential")
    overrides = [f"workdir={workdir}"]  # default shard size: one shard
    config = load_config(TINY_CONFIG, overrides)
    upstream = run_until_cache(config, config.store_dir)
    cells = grid_cells(parse_grid(GRID))
    results = run_cells(cell_configs(TINY_CONFIG, overrides, cells), config.store_dir, upstream)
    rows = [cell_row(cell, artifacts) for cell, artifacts in zip(cells, results, strict=True)]
    return cache_bytes(upstream.cache), rows


class TaskStream:
    """What the scheduler ran from now on, and where (Dask's task-stream plugin)."""

    def __init__(self, address: str) -> None:
        self.client = distributed.Client(address, timeout=30, set_as_default=False)
        self.client.get_task_stream()  # installs the plugin
        self.start = time.time()

    def workers(self) -> list[str]:
        """The worker of every task finished since this stream was opened."""
        with self.client:
            return [record["worker"] for record in self.client.get_task_stream(start=self.start)]


def check_against_sequential(summary, workdir, sequential) -> None:
    cache_sha, rows = sequential
    config = load_config(TINY_CONFIG, [f"workdir={workdir}"])
    (cache_folder,) = [p for p in (config.store_dir / "logit_cache").iterdir() if p.is_dir()]
    assert cache_folder.name == summary.cache_key
    manifest = json.loads((cache_folder / "manifest.json").read_text())
    sharded = (
        file_sha256(cache_folder / manifest["file"]),
        file_sha256(cache_folder / manifest["cls_file"]),
    )
    assert sharded == cache_sha  # byte-identical to the unsharded, in-process cache
    shards = [p for p in (config.store_dir / SHARD_STAGE).iterdir() if not p.name.startswith(".")]
    assert len(shards) == 3
    assert accuracies(summary.rows) == accuracies(rows)


def check_mlflow(summary, workdir) -> None:
    from tasks.tracking import mlflow_client, sqlite_uri

    client = mlflow_client(sqlite_uri(workdir))
    parent = client.get_run(summary.mlflow_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(r.info.run_id for r in children) == sorted(summary.cell_run_ids)
    by_cell = {int(r.data.tags["sweep.cell"]): r for r in children}
    for row in summary.rows:
        run = by_cell[row.cell]
        # The cell's overrides, plus the device and precision its student actually used.
        overrides = {k: v for k, v in run.data.params.items() if not k.startswith("resolved.")}
        assert overrides == row.values
        assert run.data.params["resolved.student.device"] == "cpu"
        assert run.data.metrics["val_accuracy"] == pytest.approx(row.val_accuracy)
        assert run.data.metrics["int8_accuracy"] == pytest.approx(row.int8_accuracy)
        assert "int8_p50_ms" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/sweep_results.csv", "sweep/sweep_grid.png"} <= logged


@pytest.mark.slow
def test_sweep_on_a_real_scheduler_and_two_workers(prefect_api, dask_cluster, sequential, tmp_path):
    from flows.sweep import run_sweep
    from tasks.tracking import mlflow_client, sqlite_uri

    address, workers = dask_cluster
    stream = TaskStream(address)
    summary = run_sweep(
        str(TINY_CONFIG), tiny(tmp_path, f"compute.cluster={address}"), GRID, register_best=True
    )
    # 3 shards and 2 cells went through the scheduler to the two workers.
    ran_on = stream.workers()
    assert len(ran_on) >= 5 and set(ran_on) <= workers, ran_on
    check_against_sequential(summary, tmp_path, sequential)
    check_mlflow(summary, tmp_path)
    best = max(summary.rows, key=lambda r: r.val_accuracy)
    assert summary.best_cell == best.cell
    registered = summary.registered
    client = mlflow_client(sqlite_uri(tmp_path))
    version = client.get_model_version(registered.registered_model, registered.model_version)
    # --register-best: the smallest, then fastest, cell not significantly worse than the best.
    chosen = summary.rows[summary.register_cell]
    assert chosen.tied_with_best and summary.rows[best.cell].vs_best == 0.0
    assert all(
        (chosen.int8_bytes, chosen.int8_p50_ms) <= (row.int8_bytes, row.int8_p50_ms)
        for row in summary.rows
        if row.tied_with_best
    )
    assert version.run_id == summary.cell_run_ids[summary.register_cell]
    assert set(version.aliases) & {"challenger", "champion"}
    assert registered.promotion.alias in ("challenger", "champion")
    # sweep_summary.json is the summary, rows flat as in the results table.
    written = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert written["rows"] == [row.model_dump() for row in summary.rows]
    assert written["rows"][0]["student.alpha"] == summary.rows[0].values["student.alpha"]
    assert written["register_cell"] == summary.register_cell
    assert written["registered"]["promotion"]["alias"] == registered.promotion.alias
    # A rerun reuses every cell and shard: the same students, nothing trained again.
    again = run_sweep(str(TINY_CONFIG), tiny(tmp_path, f"compute.cluster={address}"), GRID)
    assert [r.student_key for r in again.rows] == [r.student_key for r in summary.rows]
    assert [r.reused for r in again.rows] == [True, True]
    assert not any(r.reused for r in summary.rows)
    assert accuracies(again.rows) == accuracies(summary.rows)


@pytest.mark.slow
def test_sweep_on_local_2(prefect_api, sequential, tmp_path):
    from flows.sweep import run_sweep

    summary = run_sweep(str(TINY_CONFIG), tiny(tmp_path, "compute.cluster=local:2"), GRID)
    check_against_sequential(summary, tmp_path, sequential)
    check_mlflow(summary, tmp_path)
    assert summary.registered is None
    assert "registered" not in json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
