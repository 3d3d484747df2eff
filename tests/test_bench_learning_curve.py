"""bench/learning_curve.py: the runs it plans, and goals that claim nothing from a partial curve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import learning_curve


def test_dry_run_plans_sizes_then_seeds_then_arms_cheap_first(capsys):
    learning_curve.main(["--dry-run", "--sizes", "2000", "all", "--seeds", "1", "2"])
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["size"], r["seed"], r["arm"]) for r in runs[:5]] == [
        ("2000", 1, "labels"),
        ("2000", 1, "default"),
        ("2000", 1, "mpnet_after"),
        ("2000", 1, "mpnet_today"),
        ("2000", 2, "labels"),
    ]
    assert len(runs) == 16
    for run in runs:  # a seed is the whole run's; validation and test never change with size
        assert run["teacher"]["training"]["seed"] == run["student"]["training"]["seed"]
        assert run["seed"] == run["student"]["training"]["seed"]
        subsample = run["data"]["split"]["max_train_examples"]
        assert subsample == (None if run["size"] == "all" else 2000)
        assert {k: run["data"]["split"][k] for k in ("validation", "test", "seed")} == {
            "validation": 0.1,
            "test": 0.1,
            "seed": 13,
        }
    arm = {r["arm"]: r for r in runs if r["size"] == "2000" and r["seed"] == 1}
    carved = {"kind": "pretrained", "model": "minilm", "layers": [0, 2, 5]}
    labels = arm["labels"]["student"]
    assert labels["alpha"] == 1.0 and arm["labels"]["augmentation"]["multiplier"] == 0
    assert {k: labels["init"][k] for k in carved} == carved
    assert arm["default"]["student"]["init"]["kind"] == "teacher_layers"
    today, after = arm["mpnet_today"]["teacher"], arm["mpnet_after"]["teacher"]
    assert today["model"] == after["model"] == "mpnet"
    assert (today["training"]["epochs"], today["training"]["patience"]) == (1, None)
    assert (after["training"]["epochs"], after["training"]["patience"]) == (4, 2)
    assert after["training"]["eval_every_steps"] == 100
    # Besides the teacher's stopping, mpnet_after is the MPNet profile as it is.
    assert arm["mpnet_after"]["student"] == arm["mpnet_today"]["student"]


def rows(size: int, accuracies: dict[str, float], seed: int = 1) -> list[dict]:
    return [
        {"size": size, "seed": seed, "arm": arm, "student_accuracy": accuracy}
        for arm, accuracy in accuracies.items()
    ]


MEETS = {"labels": 0.80, "default": 0.81, "mpnet_after": 0.83}


def test_goals_are_mean_differences_over_the_seeds_both_arms_ran():
    # mpnet_after's second seed has no default or labels run beside it: it is not compared.
    one = rows(2000, MEETS) + rows(2000, {"mpnet_after": 0.85}, seed=2)
    measured = learning_curve.goals(one, full=8452)
    size = measured["sizes"]["2000"]
    assert size["over_default_points"] == 2.0 and size["over_labels_points"] == 3.0
    assert size["compared_seeds"] == {"over_default_points": [1], "over_labels_points": [1]}
    assert size["seeds"] == {"labels": 1, "default": 1, "mpnet_today": 0, "mpnet_after": 2}
    assert all(size["met"].values())
    assert not measured["complete"] and measured["met"] is False


def seeds(size: int, accuracies: dict[str, float]) -> list[dict]:
    return [row for seed in (1, 2, 3) for row in rows(size, accuracies, seed)]


def test_goals_are_met_only_when_every_size_meets_every_goal_over_three_seeds():
    full = {**MEETS, "mpnet_after": 0.86}
    curve = seeds(2000, MEETS) + seeds(4000, MEETS) + seeds(8452, full)
    measured = learning_curve.goals(curve, full=8452)
    assert measured["complete"] and measured["met"] is True
    one_seed = rows(2000, MEETS) + rows(4000, MEETS) + rows(8452, full)
    assert learning_curve.goals(one_seed, full=8452)["complete"] is False
    below_floor = seeds(2000, MEETS) + seeds(4000, MEETS) + seeds(8452, MEETS)  # 0.83 < 0.853
    assert learning_curve.goals(below_floor, full=8452)["met"] is False
    close = seeds(2000, {**MEETS, "default": 0.825}) + seeds(4000, MEETS) + seeds(8452, full)
    measured = learning_curve.goals(close, full=8452)
    assert measured["sizes"]["2000"]["met"]["over_default_points"] is False
    assert measured["met"] is False


def test_mpnet_after_is_compared_pairwise_with_each_arm_of_its_size_and_seed(tmp_path):
    from datasets import Dataset, DatasetDict

    labels = [0, 1, 1, 0, 1, 0]
    DatasetDict({"test": Dataset.from_dict({"label": labels})}).save_to_disk(
        str(tmp_path / "data" / "dataset")
    )

    def evaluation(name: str, predicted: list[int]) -> str:
        folder = tmp_path / name
        folder.mkdir()
        np.save(folder / "student_test_logits.npy", np.eye(2, dtype=np.float32)[predicted])
        return str(folder)

    def row(arm: str, predicted: list[int], seed: int = 1) -> dict:
        where = {
            "evaluation": evaluation(f"{arm}{seed}", predicted),
            "data": str(tmp_path / "data"),
        }
        return {"size": 2000, "seed": seed, "arm": arm, **where}

    rows = [
        row("default", [0, 1, 1, 1, 0, 1]),  # 3 of 6 right
        row("mpnet_after", [0, 1, 1, 0, 1, 1]),  # 5 of 6 right
        {"size": 2000, "seed": 1, "arm": "labels"},  # measured before folders were recorded
        row("default", labels, seed=2),  # another seed: no mpnet_after to compare with
    ]
    (pair,) = learning_curve.paired(rows, learning_curve.split_labels(rows[0]))
    assert (pair["size"], pair["seed"], pair["reference"]) == (2000, 1, "default")
    comparison = pair["comparison"]
    assert comparison["n"] == 6
    assert comparison["difference"] == pytest.approx(2 / 6)
    assert (comparison["only_reference_right"], comparison["only_candidate_right"]) == (0, 2)


def test_recorded_predictions_outlive_the_store_and_lost_pairs_keep_their_earlier_result():
    labels = [0, 1, 1, 0, 1, 0]
    gone = {"evaluation": "/nonexistent/evaluation", "data": "/nonexistent/data"}
    rows = [
        {"size": 2000, "seed": 2, "arm": "labels", "test_predictions": [0, 0, 0, 0, 0, 0], **gone},
        {"size": 2000, "seed": 2, "arm": "mpnet_after", "test_predictions": labels, **gone},
        {"size": 2000, "seed": 1, "arm": "default", **gone},  # its store was wiped
        {"size": 2000, "seed": 1, "arm": "mpnet_after", **gone},
    ]
    earlier = [{"size": 2000, "seed": 1, "reference": "default", "comparison": {"n": 1057}}]
    computed, kept = learning_curve.paired(rows, labels, earlier)
    assert (computed["seed"], computed["reference"]) == (2, "labels")
    assert computed["comparison"]["only_candidate_right"] == 3  # the three positives
    assert kept == earlier[0]
    assert learning_curve.paired(rows, labels) == [computed]  # nothing earlier: nothing kept


def test_a_run_on_another_test_split_is_refused():
    assert learning_curve.same_test_labels(None, [0, 1]) == [0, 1]
    assert learning_curve.same_test_labels([0, 1], [0, 1]) == [0, 1]
    with pytest.raises(ValueError, match="test split differs"):
        learning_curve.same_test_labels([0, 1], [1, 1])


def test_the_ensemble_is_reported_beside_mpnet_alone_with_their_paired_test():
    rows = [
        {"size": 2000, "seed": 1, "arm": "mpnet_after", "student_accuracy": 0.81},
        {"size": 2000, "seed": 1, "arm": "mpnet_ensemble", "student_accuracy": 0.80},
        {"size": 2000, "seed": 2, "arm": "mpnet_ensemble", "student_accuracy": 0.79},
    ]
    pairs = [{"size": 2000, "seed": 1, "reference": "mpnet_ensemble", "comparison": {"n": 6}}]
    first, second = learning_curve.ensemble_results(rows, pairs)
    assert first["mpnet_alone"]["arm"] == "mpnet_after" and first["paired"] == {"n": 6}
    assert (second["seed"], second["mpnet_alone"], second["paired"]) == (2, None, None)
    assert learning_curve.ensemble_results(rows[:1], pairs) == []


def test_a_run_s_row_holds_its_scores_predictions_and_what_precision_ran(tiny_config, tiny_stages):
    row = learning_curve.measure("default", 7, tiny_config)  # the tiny stages, reused
    assert (row["arm"], row["seed"], row["size"]) == (
        "default",
        7,
        tiny_stages.data.manifest.sizes["train"],
    )
    assert row["student_accuracy"] == tiny_stages.evaluation.manifest.student_accuracy
    assert row["precision"] == {"teacher": "fp32", "student": "fp32"}  # tiny.yaml pins fp32
    labels = learning_curve.split_labels(row)
    assert len(row["test_predictions"]) == len(labels)
    right = sum(p == t for p, t in zip(row["test_predictions"], labels, strict=True)) / len(labels)
    assert right == pytest.approx(row["student_accuracy"])
