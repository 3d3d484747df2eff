"""The teacher logit cache: written once, checked by the store on reuse, read as a memmap, keyed on
what it depends on."""

import dataclasses
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from distill.data import load_split
from distill.logit_cache import CacheError, cache_key, logit_cache_stage, open_targets
from distill.models import load_classifier
from distill.teacher import teacher_stage
from distill.training import predict_logits


@pytest.fixture(scope="module")
def tiny_teacher(tiny_config, tiny_data):
    return teacher_stage(tiny_config.workdir, tiny_config.teacher, tiny_data)


def test_round_trip_matches_a_fresh_teacher_pass(tiny_config, tiny_data, tiny_teacher):
    cache = logit_cache_stage(tiny_config.workdir, tiny_teacher, tiny_data)
    logits = open_targets(cache).logits
    assert isinstance(logits, np.memmap)
    assert list(logits.shape) == cache.manifest.shape == [280, 2]
    fresh = predict_logits(load_classifier(tiny_teacher.path), load_split(tiny_data.path, "train"))
    np.testing.assert_allclose(logits, fresh, atol=1e-5)


def test_a_truncated_cache_is_rebuilt_by_the_next_run(tiny_config, tiny_data, tiny_teacher):
    store = tiny_config.workdir / "truncated-cache-store"
    cache = logit_cache_stage(store, tiny_teacher, tiny_data)
    logits = cache.file(cache.manifest.file)
    logits.write_bytes(logits.read_bytes()[:100])
    with pytest.raises(CacheError, match=f"logit cache stage folder {cache.path} is corrupt"):
        open_targets(cache)  # the .npy cannot be read at all
    again = logit_cache_stage(store, tiny_teacher, tiny_data)
    assert not again.reused
    assert open_targets(again).logits.shape == (280, 2)


def test_key_depends_on_teacher_and_data_not_on_student_settings(tiny_data, tiny_teacher):
    other_teacher = dataclasses.replace(tiny_teacher, key="another-teacher")
    other_data = dataclasses.replace(tiny_data, key="other-data")
    key = cache_key(tiny_teacher, tiny_data)
    assert cache_key(other_teacher, tiny_data) != key
    assert cache_key(tiny_teacher, other_data) != key
    assert cache_key(tiny_teacher, tiny_data) == key


def test_a_corrupt_cache_on_disk_is_rebuilt_not_a_permanent_failure(tiny_config, tiny_data):
    store = tiny_config.workdir / "corrupt-cache-store"
    teacher = teacher_stage(store, tiny_config.teacher, tiny_data)
    cache = logit_cache_stage(store, teacher, tiny_data)
    path = cache.file(cache.manifest.file)
    original = np.load(path)
    damaged = original.copy()
    damaged[0, 0] += 1.0
    np.save(path, damaged)  # same size, other bytes: only a checksum sees it
    rebuilt = logit_cache_stage(store, teacher, tiny_data)
    assert not rebuilt.reused
    (aside,) = cache.path.parent.glob(f".corrupt-{cache.key}-*")  # kept for inspection
    np.testing.assert_array_equal(np.load(aside / cache.manifest.file), damaged)
    np.testing.assert_array_equal(open_targets(rebuilt).logits, original)
    assert logit_cache_stage(store, teacher, tiny_data).reused


class HashedFiles:
    """Counts the files hashed (`hashlib.file_digest`), by name."""

    def __init__(self, monkeypatch) -> None:
        self.names: list[str] = []
        digest = hashlib.file_digest

        def counting(handle, algorithm):
            self.names.append(Path(handle.name).name)
            return digest(handle, algorithm)

        monkeypatch.setattr(hashlib, "file_digest", counting)

    def take(self) -> Counter:
        names, self.names = Counter(self.names), []
        return names


def test_every_reuse_hashes_each_file_once(tiny_config, tiny_data, tiny_teacher, monkeypatch):
    """The store checks a reused folder's files against its manifest; nothing hashes them again
    (neither reading the targets nor assembling the cache from reused shards)."""
    store = tiny_config.workdir / "hashed-once-store"
    cache = logit_cache_stage(store, tiny_teacher, tiny_data, batch_size=32, shard_rows=96)
    shutil.rmtree(cache.path)  # the cache is assembled again from its three finished shards
    hashed = HashedFiles(monkeypatch)
    logit_cache_stage(store, tiny_teacher, tiny_data, batch_size=32, shard_rows=96)
    shard_files = {"logits.npy", "cls_states.npy", "indices.npy"}
    assert {name: count for name, count in hashed.take().items() if name in shard_files} == {
        name: 3
        for name in shard_files  # once per shard
    }
    again = logit_cache_stage(store, tiny_teacher, tiny_data, batch_size=32, shard_rows=96)
    open_targets(again)
    assert again.reused
    assert hashed.take() == {cache.manifest.file: 1, cache.manifest.cls_file: 1}


def test_overwritten_teacher_weights_are_not_reused(tiny_config, tiny_data):
    store = tiny_config.workdir / "overwritten-teacher-store"
    teacher = teacher_stage(store, tiny_config.teacher, tiny_data)
    cache = logit_cache_stage(store, teacher, tiny_data)
    weights = teacher.file("model.safetensors")
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(blob))
    again = teacher_stage(store, tiny_config.teacher, tiny_data)
    assert not again.reused
    from distill.files import file_sha256

    assert file_sha256(again.file("model.safetensors")) == again.manifest.weights_sha256
    # A cache is reused only when it was computed from the teacher's current weights.
    other = dataclasses.replace(
        again, manifest=again.manifest.model_copy(update={"weights_sha256": "0" * 64})
    )
    assert not logit_cache_stage(store, other, tiny_data).reused
    assert cache.key == cache_key(again, tiny_data)
