"""bench/frontier.py: the runs it plans and the shape it picks for the speed goal."""

from __future__ import annotations

import pytest

from bench import frontier


@pytest.mark.parametrize("shape", list(frontier.SHAPES))
def test_each_shape_is_the_mpnet_profile_with_only_its_student_changed(shape):
    distilled = frontier.config_for(shape, "distilled", seed=2, size="2000", overrides=[])
    labels = frontier.config_for(shape, "labels", seed=2, size="2000", overrides=[])
    layers, width = frontier.SHAPES[shape]
    for config in (distilled, labels):
        init = config.student.init
        assert (init.kind, init.model, init.layers, init.intermediate_size) == (
            "pretrained", "minilm", layers, width,
        )  # fmt: skip
        assert config.teacher.model == "mpnet" and config.teacher.training.seed == 2
        assert config.student.training.seed == 2
        assert config.data.split.max_train_examples == 2000
    # The distilled recipe is the profile's; labels alone drops the teacher and the copies.
    assert (distilled.student.alpha, distilled.augmentation.multiplier) == (0.1, 8.0)
    assert (labels.student.alpha, labels.augmentation.multiplier) == (1.0, 0)
    # Both read the same teacher, so the comparison differs in the recipe only.
    assert distilled.teacher == labels.teacher


def test_every_train_text_is_kept_at_size_all():
    config = frontier.config_for("3L", "distilled", seed=1, size="all", overrides=[])
    assert config.data.split.max_train_examples is None


def shape(name: str, accuracy: float, speed: float) -> dict:
    return {
        "shape": name,
        "distilled_int8_accuracy": accuracy,
        "meets_speed_goal": speed >= frontier.SPEED_GOAL,
    }


def test_the_pick_is_the_most_accurate_shape_that_meets_the_speed_goal():
    shapes = [shape("2L", 0.82, 150), shape("2L-ff512", 0.80, 190), shape("3L", 0.85, 60)]
    assert frontier.pick(shapes)["shape"] == "2L"
    assert frontier.pick([shape("3L", 0.85, 60), shape("4L", 0.86, 45)]) is None


def test_shape_lines_average_over_seeds_and_carry_their_speed():
    rows = [
        {"shape": "2L", "recipe": recipe, "seed": seed, "params": 10,
         "student_accuracy": accuracy, "int8_accuracy": accuracy - 0.01}
        for recipe, seed, accuracy in (
            ("distilled", 1, 0.80), ("distilled", 2, 0.82), ("labels", 1, 0.78), ("labels", 2, 0.78)
        )
    ]  # fmt: skip
    speed = [
        {"model": "2L", "batch": 1, "seq_len": 25, "p50_ms": 0.5, "speed_vs_mpnet": 120.0},
        {"model": "2L", "batch": 1, "seq_len": 64, "p50_ms": 1.0, "speed_vs_mpnet": 90.0},
        {"model": "2L", "batch": 32, "seq_len": 25, "p50_ms": 9.0, "speed_vs_mpnet": 30.0},
    ]
    (line,) = frontier.summarize_shapes(rows, pairs=[], speed=speed)
    assert line["distilled_student_accuracy"] == pytest.approx(0.81)
    assert line["labels_int8_accuracy"] == pytest.approx(0.77)
    assert line["seeds"] == 2
    assert (line["speed_vs_mpnet_25"], line["speed_vs_mpnet_64"]) == (120.0, 90.0)
    assert line["meets_speed_goal"] is True
