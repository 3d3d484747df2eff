"""bench/precision.py: what it trains (the student, or the teacher before fine-tuning), the
timed blocks it alternates, and results kept per CPU."""

from __future__ import annotations

import pytest

from bench import precision


@pytest.mark.parametrize("which, layers", [("student", 1), ("teacher", 2)])
def test_it_trains_the_stage_s_untrained_model(tiny_config, tiny_data, which, layers):
    start, settings, data = precision.starting_point(tiny_config, which)
    assert start.config.num_hidden_layers == layers  # tiny.yaml: teacher 2 layers, student [1]
    assert settings == getattr(tiny_config, which).training
    assert data.manifest.label_names == tiny_data.manifest.label_names


def test_both_precisions_train_the_same_batches_in_alternating_blocks(tiny_config, tiny_data):
    from distill.batching import collate
    from distill.data import load_split

    start, settings, data = precision.starting_point(tiny_config, "student")
    pair = precision.trainers(start, settings, total_steps=4)
    assert set(pair) == {"fp32", "bf16"}
    assert pair["fp32"][1].runtime.precision == "fp32"
    assert pair["bf16"][1].runtime.precision == "bf16"
    train = load_split(data.path, "train")
    batches = [collate(train, list(range(i * 8, i * 8 + 8))) for i in range(4)]
    per_step = precision.timed_blocks(pair, batches, rounds=2, steps=2)
    assert {name: len(times) for name, times in per_step.items()} == {"fp32": 2, "bf16": 2}
    assert pair["fp32"][1].step == pair["bf16"][1].step == 4


def test_rows_are_kept_per_cpu_and_an_old_single_row_is_kept_under_its_cpu(monkeypatch):
    old = {"cpu_capability": "AVX2", "bf16_speedup": 0.06}
    monkeypatch.setattr(precision.bench, "read_results", lambda name: {"precision": old})
    rows = precision.per_cpu("precision", {"cpu_capability": "AVX512", "bf16_speedup": 1.4})
    assert rows == {"AVX2": old, "AVX512": {"cpu_capability": "AVX512", "bf16_speedup": 1.4}}
    monkeypatch.setattr(precision.bench, "read_results", lambda name: {"precision": rows})
    again = precision.per_cpu("precision", {"cpu_capability": "AVX2", "bf16_speedup": 0.1})
    assert again["AVX2"]["bf16_speedup"] == 0.1 and again["AVX512"] == rows["AVX512"]
