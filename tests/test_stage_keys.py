"""Stage keys: one helper, a code version per stage, and upstream keys in every downstream key."""

import dataclasses

import pytest

import deploy.export
import deploy.quantize
import distill.data
import distill.logit_cache
import distill.student
import distill.teacher
from deploy.export import export_key
from deploy.quantize import quantize_key
from distill.augment import augmentation_key
from distill.config import build_config
from distill.data import data_key
from distill.evaluation import evaluation_key
from distill.logit_cache import cache_key
from distill.store import Artifact, stage_key
from distill.student import student_key
from distill.teacher import teacher_key


def chain_keys(config) -> dict[str, str]:
    """Every stage's key for `config`, from stub artifacts that carry only their keys."""

    def stub(stage: str, key: str) -> Artifact:
        return Artifact(stage, key, None, None)

    data = stub("data", data_key(config.data, "tokenizer-id"))
    teacher = stub("teacher", teacher_key(config.teacher, data))
    augmented = stub("augment", augmentation_key(config.augmentation, data))
    cache = stub("logit_cache", cache_key(teacher, data, augmented))
    student = stub("student", student_key(config.student, teacher, cache, data))
    export = stub(
        "export", export_key(config.export, student, data, config.quantize.max_accuracy_drop)
    )
    return {
        "data": data.key,
        "teacher": teacher.key,
        "augment": augmented.key,
        "logit_cache": cache.key,
        "student": student.key,
        "evaluation": evaluation_key(teacher, student, data),
        "export": export.key,
        "quantize": quantize_key(config.quantize, export, data),
    }


@pytest.fixture(scope="module")
def config():
    return build_config({"teacher": {"model": "minilm"}})


def test_stage_key_covers_name_version_and_inputs():
    key = stage_key("teacher", 1, {"lr": 1}, "data-key")
    assert stage_key("student", 1, {"lr": 1}, "data-key") != key
    assert stage_key("teacher", 2, {"lr": 1}, "data-key") != key
    assert stage_key("teacher", 1, {"lr": 2}, "data-key") != key
    assert stage_key("teacher", 1, {"lr": 1}, "other-data") != key
    assert stage_key("teacher", 1, {"lr": 1}, "data-key") == key


@pytest.mark.parametrize(
    "module, first_changed",
    [
        (distill.data, "data"),
        (distill.teacher, "teacher"),
        (distill.logit_cache, "logit_cache"),
        (distill.student, "student"),
        (deploy.export, "export"),
        (deploy.quantize, "quantize"),
    ],
)
def test_bumping_a_version_changes_that_stage_and_everything_downstream(
    config, monkeypatch, module, first_changed
):
    before = chain_keys(config)
    monkeypatch.setattr(module, "VERSION", module.VERSION + 1)
    after = chain_keys(config)
    changed = {stage for stage in before if before[stage] != after[stage]}
    downstream = {
        "data": set(before),
        "teacher": {"teacher", "logit_cache", "student", "evaluation", "export", "quantize"},
        "logit_cache": {"logit_cache", "student", "evaluation", "export", "quantize"},
        "student": {"student", "evaluation", "export", "quantize"},
        "export": {"export", "quantize"},
        "quantize": {"quantize"},
    }[first_changed]
    assert changed == downstream


def test_teacher_key_ignores_student_settings_and_cache_key_ignores_temperature(config):
    base = chain_keys(config)
    other = chain_keys(
        build_config(
            {"teacher": {"model": "minilm"}},
            ["student.alpha=0.1", "student.temperature=5", "student.training.learning_rate=1"],
        )
    )
    assert other["teacher"] == base["teacher"] and other["logit_cache"] == base["logit_cache"]
    assert other["student"] != base["student"]


def test_teacher_key_follows_teacher_settings_and_data(config):
    base = chain_keys(config)
    retrained = chain_keys(
        build_config({"teacher": {"model": "minilm"}}, ["teacher.training.seed=1"])
    )
    assert retrained["teacher"] != base["teacher"] and retrained["data"] == base["data"]
    resplit = chain_keys(build_config({"teacher": {"model": "minilm"}}, ["data.split.seed=1"]))
    assert resplit["data"] != base["data"] and resplit["teacher"] != base["teacher"]


def test_only_the_accuracy_budget_of_the_quantize_settings_keys_the_export(config):
    base = chain_keys(config)
    minilm = {"teacher": {"model": "minilm"}}
    other = chain_keys(build_config(minilm, ["quantize.min_agreement=0.9"]))
    assert other["export"] == base["export"] and other["quantize"] != base["quantize"]
    # The budget also gates vocabulary trimming, which the export stage decides.
    budget = chain_keys(build_config(minilm, ["quantize.max_accuracy_drop=0.02"]))
    assert budget["export"] != base["export"] and budget["quantize"] != base["quantize"]


def test_augmentation_keys_the_cache_when_it_is_on():
    stub = Artifact("x", "k", None, None)
    plain = cache_key(stub, stub)
    assert cache_key(stub, stub, dataclasses.replace(stub, key="augmented")) != plain
