"""bench/scale.py in its quick mode on the tiny config: the keys the scaling plan reads, equal
results on one and two workers, and sharded caches byte-identical to the unsharded one."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_CONFIG


@pytest.mark.slow
def test_quick_mode_writes_the_scaling_numbers(prefect_api, tmp_path):
    from bench.scale import main

    output = tmp_path / "scale.json"
    argv = ["--config", str(TINY_CONFIG), "--quick", "--shards", "5", "--no-docs"]
    main([*argv, "--output", str(output), f"workdir={tmp_path / 'work'}"])
    result = json.loads(output.read_text())
    assert {"variants", "workers", "sequential_s", "parallel_s", "cells", "cache"} <= set(result)
    assert result["quick"] and result["variants"] == 4 and result["workers"] == 2
    assert result["sequential_s"] > 0 and result["parallel_s"] > 0
    assert [c["student.alpha"] for c in result["cells"]] == ["0.3", "0.3", "0.7", "0.7"]
    assert result["identical_accuracies"]
    assert all(c["val_accuracy_sequential"] == c["val_accuracy_parallel"] for c in result["cells"])
    cache = result["cache"]
    assert cache["rows"] == cache["train_rows"] + cache["augmented_rows"] == 560
    assert cache["shards"] == 5 and set(cache["runs"]) == {"1", "2"}
    for run in cache["runs"].values():
        assert run["byte_identical"] and run["shards"] == 5
        assert run["per_shard_texts_per_s"] > 0
    assert cache["ratio"] == cache["runs"]["2"]["seconds"] / cache["runs"]["1"]["seconds"]
    # Nothing of the timed runs is left in the store.
    assert not list((tmp_path / "work").glob(".scale-bench-*"))
