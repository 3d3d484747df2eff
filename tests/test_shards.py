"""Sharded teacher labelling: byte-identical to the unsharded cache, resumable shard by shard."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from distill.fan_out import run_each_here
from distill.files import file_sha256
from distill.logit_cache import logit_cache_stage
from distill.shards import SHARD_STAGE, ShardError, assemble, plan_shards
from distill.teacher import teacher_stage


@pytest.fixture(scope="module")
def tiny_teacher(tiny_config, tiny_data):
    return teacher_stage(tiny_config.workdir, tiny_config.teacher, tiny_data)


def cache_bytes(cache) -> tuple[str, str]:
    """sha256 of the cache's two .npy files, read from disk."""
    manifest = cache.manifest
    return file_sha256(cache.file(manifest.file)), file_sha256(cache.file(manifest.cls_file))


class Recording:
    """A fan-out that runs each unit here and remembers what it got back."""

    def __init__(self) -> None:
        self.results = []

    def __call__(self, name, works):
        self.results = run_each_here(name, works)
        return self.results


def test_plan_cuts_whole_sorted_batches_and_covers_every_row_once():
    lengths = [5, 3, 9, 1, 7, 2, 8, 4, 6, 10, 11]
    shards = plan_shards(lengths, batch_size=2, shard_rows=3)  # 3 rows -> 2 whole batches
    assert [len(shard.indices) for shard in shards] == [4, 4, 3]
    every = np.concatenate([shard.indices for shard in shards])
    assert sorted(every.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in every] == sorted(lengths)  # one global length order
    (one,) = plan_shards(lengths, batch_size=2, shard_rows=1000)
    assert [b.tolist() for b in one.batches] == [b.tolist() for s in shards for b in s.batches]
    with pytest.raises(ValueError, match="shard_rows"):
        plan_shards(lengths, batch_size=2, shard_rows=0)


def test_sharded_cache_is_byte_identical_to_the_unsharded_one(tiny_data, tiny_teacher, tmp_path):
    whole = Recording()
    unsharded = logit_cache_stage(
        tmp_path / "one", tiny_teacher, tiny_data, batch_size=32, fan_out=whole
    )
    sharded_run = Recording()
    sharded = logit_cache_stage(
        tmp_path / "many",
        tiny_teacher,
        tiny_data,
        batch_size=32,
        shard_rows=64,
        fan_out=sharded_run,
    )
    assert len(whole.results) == 1 and len(sharded_run.results) == 5  # 280 rows, 64 per shard
    assert sharded.key == unsharded.key  # the shard size is not part of what the cache is
    assert cache_bytes(sharded) == cache_bytes(unsharded)
    assert sharded.manifest == unsharded.manifest


def test_a_killed_run_recomputes_only_the_missing_shard(tiny_data, tiny_teacher, tmp_path):
    first = Recording()
    cache = logit_cache_stage(
        tmp_path, tiny_teacher, tiny_data, batch_size=32, shard_rows=96, fan_out=first
    )
    expected = cache_bytes(cache)
    assert len(first.results) == 3 and not any(shard.reused for shard in first.results)
    # A run killed after its shards but before assembling, one shard lost with it.
    shutil.rmtree(cache.path)
    lost = first.results[1]
    shutil.rmtree(lost.path)
    rerun = Recording()
    again = logit_cache_stage(
        tmp_path, tiny_teacher, tiny_data, batch_size=32, shard_rows=96, fan_out=rerun
    )
    assert [shard.reused for shard in rerun.results] == [True, False, True]
    assert rerun.results[1].key == lost.key
    assert cache_bytes(again) == expected
    assert sorted(
        p.name for p in (tmp_path / SHARD_STAGE).iterdir() if not p.name.startswith(".")
    ) == sorted(shard.key for shard in first.results)


def test_assembling_refuses_shards_that_miss_rows(tiny_data, tiny_teacher, tmp_path):
    run = Recording()
    logit_cache_stage(tmp_path, tiny_teacher, tiny_data, batch_size=32, shard_rows=96, fan_out=run)
    with pytest.raises(ShardError, match="cover 192 of 280 rows"):
        assemble(run.results[:2], 280)
    with pytest.raises(ShardError, match="repeated"):
        assemble([run.results[0], run.results[0]], 280)
