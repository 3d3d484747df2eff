"""The teacher logit cache: written once, read as a checked memmap, keyed on what it depends on."""

import dataclasses

import numpy as np
import pytest

from distill.data import load_split
from distill.logit_cache import CacheError, cache_key, logit_cache_stage, open_targets
from distill.models import load_classifier
from distill.store import MANIFEST, Artifact
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


def test_a_tampered_cache_is_refused(tiny_config, tiny_data, tiny_teacher, tmp_path):
    cache = logit_cache_stage(tiny_config.workdir, tiny_teacher, tiny_data)
    copy = tmp_path / cache.manifest.file
    data = np.load(cache.file(cache.manifest.file))
    data[0, 0] += 1.0
    np.save(copy, data)
    (tmp_path / MANIFEST).write_text((cache.path / MANIFEST).read_text())
    tampered = Artifact(cache.stage, cache.key, tmp_path, cache.manifest)
    with pytest.raises(CacheError, match=f"{tmp_path}.*sha256.*next run rebuilds it"):
        open_targets(tampered)
    assert not (tmp_path / MANIFEST).exists()  # no longer looks finished: the next run rebuilds


def test_a_truncated_cache_is_rebuilt_by_the_next_run(tiny_config, tiny_data, tiny_teacher):
    store = tiny_config.workdir / "truncated-cache-store"
    cache = logit_cache_stage(store, tiny_teacher, tiny_data)
    logits = cache.file(cache.manifest.file)
    logits.write_bytes(logits.read_bytes()[:100])
    with pytest.raises(CacheError, match=f"logit cache stage folder {cache.path} is corrupt"):
        open_targets(cache, verify=False)  # the .npy cannot be read at all
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
    data = np.load(path)
    data[0, 0] += 1.0
    np.save(path, data)  # same size, other bytes
    with pytest.raises(CacheError):
        open_targets(cache)  # the damaged folder as a reader would see it
    rebuilt = logit_cache_stage(store, teacher, tiny_data)
    assert not rebuilt.reused
    open_targets(rebuilt)  # checks out again
    assert logit_cache_stage(store, teacher, tiny_data).reused


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
    from distill.store import file_sha256

    assert file_sha256(again.file("model.safetensors")) == again.manifest.weights_sha256
    # A cache is reused only when it was computed from the teacher's current weights.
    other = dataclasses.replace(
        again, manifest=again.manifest.model_copy(update={"weights_sha256": "0" * 64})
    )
    assert not logit_cache_stage(store, other, tiny_data).reused
    assert cache.key == cache_key(again, tiny_data)
