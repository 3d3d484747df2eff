"""`teacher.ensemble`: every teacher fine-tuned and labelled as its own stages, the student's
soft targets the weighted mean of theirs."""

import numpy as np
import pytest

from distill.chain import run_student, run_until_cache
from distill.config import ConfigError, load_config
from distill.ensemble import combined_logits
from distill.labelling import softmax
from distill.logit_cache import open_targets
from tests.conftest import TINY_CONFIG

MEMBER = "{model: minilm, weight: 3, random_init: {num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}"  # noqa: E501


def ensemble_config(store, member: str = MEMBER):
    return load_config(TINY_CONFIG, [f"store={store}", f"teacher.ensemble=[{member}]"])


def test_the_combined_soft_targets_are_the_weighted_mean_of_the_teachers():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(5, 3)) * 4, rng.normal(size=(5, 3)) * 4
    combined = combined_logits([first, second], [1.0, 3.0], temperature=2.0)
    expected = (softmax(first, 2.0) + 3 * softmax(second, 2.0)) / 4
    assert combined.dtype == np.float32
    np.testing.assert_allclose(softmax(combined, 2.0), expected, atol=1e-6)
    # One teacher alone: its own soft targets back.
    alone = combined_logits([first], [1.0], temperature=2.0)
    np.testing.assert_allclose(softmax(alone, 2.0), softmax(first, 2.0), atol=1e-6)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("ensemble-store")


@pytest.fixture(scope="module")
def upstream(store):
    config = ensemble_config(store)
    return config, run_until_cache(config, store)


def member_targets(store, key):
    return np.load(store / "logit_cache" / key / "train_logits.npy")


def test_an_ensemble_cache_averages_its_teachers_and_records_them(upstream, store):
    config, artifacts = upstream
    cache = artifacts.cache
    assert cache.stage == "ensemble_cache"
    main, member = cache.manifest.members
    assert (main.weight, member.weight) == (1.0, 3.0)
    assert main.teacher_key == artifacts.teacher.key and member.teacher_key != main.teacher_key
    assert main.teacher_sha256 != member.teacher_sha256  # two different teachers
    teachers = [member_targets(store, record.cache_key) for record in (main, member)]
    assert not np.allclose(teachers[0], teachers[1])
    expected = (softmax(teachers[0], 2.0) + 3 * softmax(teachers[1], 2.0)) / 4
    targets = open_targets(cache)
    np.testing.assert_allclose(softmax(np.asarray(targets.logits), 2.0), expected, atol=1e-5)
    assert cache.manifest.temperature == config.student.temperature
    main_states = np.load(store / "logit_cache" / main.cache_key / "train_cls_states.npy")
    np.testing.assert_array_equal(targets.cls_states, main_states)  # the main teacher's


def test_a_student_trains_from_an_ensemble_cache(upstream, store):
    config, artifacts = upstream
    student = run_student(config.student, store, artifacts)
    assert student.manifest.cache_key == artifacts.cache.key
    assert student.manifest.steps > 0


def test_a_repeat_reuses_every_teacher_and_a_new_weight_only_recombines(upstream, store):
    config, artifacts = upstream
    again = run_until_cache(config, store)
    assert again.cache.reused and again.cache.key == artifacts.cache.key
    equal_weights = ensemble_config(store, MEMBER.replace("weight: 3", "weight: 1"))
    reweighted = run_until_cache(equal_weights, store)
    assert not reweighted.cache.reused and reweighted.cache.key != artifacts.cache.key
    teachers = [path for path in (store / "teacher").iterdir() if not path.name.startswith(".")]
    assert len(teachers) == 2  # the two teachers, trained once
    assert [m.cache_key for m in reweighted.cache.manifest.members] == [
        m.cache_key for m in artifacts.cache.manifest.members
    ]


def test_a_member_weight_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="weight"):
        ensemble_config(tmp_path, "{model: minilm, weight: 0}")


def test_the_model_card_names_every_teacher_of_the_ensemble(upstream):
    from tasks.model_card import ensemble_lines

    _, artifacts = upstream
    intro, table = ensemble_lines(artifacts.cache.manifest)
    assert "weighted mean of 2 teachers" in intro and "T = 2" in intro
    assert table.count("| minilm |") == 2 and "| minilm | 3 |" in table
    config = load_config(TINY_CONFIG, [f"store={upstream[0].store}"])
    main_only = run_until_cache(config, config.store_dir)
    assert ensemble_lines(main_only.cache.manifest) == []


def test_preflight_names_a_member_that_cannot_be_found(tmp_path):
    from distill.preflight import check_inputs

    config = ensemble_config(tmp_path, "{model: /nonexistent/teacher}")
    with pytest.raises(ConfigError, match=r"teacher\.ensemble\[0\]\.model"):
        check_inputs(config)
