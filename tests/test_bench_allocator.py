"""bench/allocator.py: every threshold in its own process, step times paired by round and step,
and one real measured child on the tiny config."""

from __future__ import annotations

import argparse

import pytest

from bench import allocator
from distill.config import load_config
from distill.logit_cache import LABELLING_BATCH
from distill.teacher import teacher_stage
from tests.conftest import TINY_CONFIG


def fake_run(round_number: int, threshold: str, seconds: list[float], growth: float) -> dict:
    return {"round": round_number, "threshold": threshold, "start_mib": 600.0,
            "peak_growth_mib": growth, "step_seconds": seconds, "batch_size": 32}  # fmt: skip


def arguments(tiny_config, **settings) -> argparse.Namespace:
    values = {"model": "student", "thresholds": [allocator.GLIBC, "2097152"], "rounds": 1,
              "steps": 3, "warmup": 1, "config": str(TINY_CONFIG),
              "overrides": [f"workdir={tiny_config.workdir}"]}  # fmt: skip
    return argparse.Namespace(**(values | settings))


def test_each_threshold_runs_in_its_own_process_the_order_rotating(tiny_config, monkeypatch):
    started = []
    monkeypatch.setattr(
        allocator, "run_child", lambda args, threshold: started.append(threshold) or {}
    )
    thresholds = [allocator.GLIBC, "2097152", "1048576"]
    runs = allocator.measure(arguments(tiny_config, thresholds=thresholds, rounds=3), tiny_config)
    assert started == [
        "glibc", "2097152", "1048576", "2097152", "1048576", "glibc", "1048576", "glibc", "2097152"
    ]  # fmt: skip
    assert [run["round"] for run in runs] == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_step_times_pair_by_round_and_step_after_the_warmup():
    runs = [
        fake_run(1, "glibc", [9.0, 1.0, 2.0, 3.0], 900),
        fake_run(1, "2097152", [0.1, 0.5, 1.0, 1.5], 700),
        fake_run(2, "2097152", [0.1, 0.5, 1.0, 1.5], 720),
        fake_run(2, "glibc", [0.2, 1.0, 2.0, 3.0], 930),
    ]
    glibc, fixed = allocator.summarize(runs, ["glibc", "2097152"], warmup=1)
    assert glibc["peak_growth_mib"] == [900, 930] and "vs_first" not in glibc
    assert glibc["measured_seconds"] == [6.0, 6.0]  # the warm-up step is not counted
    assert fixed["vs_first"]["pairs"] == 6
    assert fixed["vs_first"]["median_ratio"] == pytest.approx(0.5)  # every pair is half
    table = allocator.render(
        {
            "model": "student",
            "config": "tiny.yaml",
            "steps": 4,
            "warmup": 1,
            "rounds": 2,
            "batch_size": 32,
            "summary": [glibc, fixed],
            "load_before": (1.0, 1.0, 1.0),
            "load_after": (1.0, 1.0, 1.0),
        }  # fmt: skip
    )
    assert "| glibc | 900 / 930 |" in table and "| 2 MiB | 700 / 720 |" in table


def test_a_child_trains_the_steps_and_reports_its_memory(tiny_config, tiny_data):
    run = allocator.run_child(arguments(tiny_config), "2097152")  # a real subprocess
    assert run["threshold"] == "2097152" and run["batch_size"] == 32
    assert len(run["step_seconds"]) == 3 and all(t > 0 for t in run["step_seconds"])
    assert run["start_mib"] > 100  # torch and transformers are loaded
    assert run["peak_growth_mib"] >= 0


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_the_trained_model_is_the_stage_s_own_shape(tiny_config, tiny_data, which):
    model, settings = allocator.model_and_settings(tiny_config, which, tiny_data)
    layers = model.config.num_hidden_layers
    assert layers == (1 if which == "student" else 2)  # tiny.yaml: teacher 2 layers, student [1]
    expected = tiny_config.student if which == "student" else tiny_config.teacher
    assert settings == expected.training


def test_a_labelling_child_needs_the_fine_tuned_teacher_in_the_store(tmp_path):
    empty_store = load_config(TINY_CONFIG, [f"workdir={tmp_path}"])
    with pytest.raises(SystemExit, match="no fine-tuned teacher"):
        allocator.train_steps(empty_store, "labelling", allocator.GLIBC, steps=2)


def test_a_labelling_child_labels_batches_of_the_cache_s_size(tiny_config, tiny_data):
    teacher_stage(tiny_config.store_dir, tiny_config.teacher, tiny_data)  # built or reused
    run = allocator.run_child(arguments(tiny_config, model="labelling"), "2097152")
    assert run["threshold"] == "2097152" and run["batch_size"] == LABELLING_BATCH
    assert 1 <= len(run["step_seconds"]) <= 3 and all(t > 0 for t in run["step_seconds"])
    assert run["peak_growth_mib"] >= 0
