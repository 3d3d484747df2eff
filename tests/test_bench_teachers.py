"""bench/teachers.py: the plan it runs, and one tiny run through the library's own wiring."""

from __future__ import annotations

import json

from bench import teachers
from tests.conftest import REPO, TINY_CONFIG


def test_dry_run_plans_the_issue_grid_on_the_shipped_profiles(capsys):
    teachers.main(["--dry-run"])
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(runs) == 12  # four arms, seeds 1 2 3
    assert [r["seed"] for r in runs[:4]] == [1, 1, 1, 1]
    by_arm = {r["arm"]: r for r in runs if r["seed"] == 2}
    assert set(by_arm) == {"labels", "kd_minilm", "kd_mpnet", "kd_mpnet_augment"}
    student = {"kind": "pretrained", "model": "minilm", "layers": [0, 2, 5]}
    for run in runs:
        assert run["student_init"]["kind"] == "pretrained"
        assert {k: run["student_init"][k] for k in student} == student
        assert run["store"].endswith("runs/store")  # shares the default run's teacher
    assert by_arm["labels"]["alpha"] == 1.0 and by_arm["kd_minilm"]["alpha"] == 0.5
    assert by_arm["labels"]["teacher"] == by_arm["kd_minilm"]["teacher"] == "minilm"
    assert by_arm["kd_mpnet"]["teacher"] == "mpnet" and by_arm["kd_mpnet"]["augmentation"] == 0
    assert by_arm["kd_mpnet_augment"]["augmentation"] == 1.0
    # The MPNet profile trains with alpha 0.1 for two epochs; the arms keep the default recipe.
    kd_arms = [r for r in by_arm.values() if r["arm"] != "labels"]
    assert {(r["alpha"], r["epochs"]) for r in kd_arms} == {(0.5, 3)}


def test_the_alpha_arms_change_only_their_own_settings(capsys):
    arms = [
        "kd_mpnet_augment4",
        "kd_mpnet_augment4_alpha01",
        "kd_mpnet_augment4_alpha01_3ep",
        "kd_mpnet_augment8_alpha01",
    ]
    teachers.main(["--dry-run", "--seeds", "1", "--arms", *arms])
    runs = {r["arm"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    settings = {arm: (r["alpha"], r["epochs"], r["augmentation"]) for arm, r in runs.items()}
    assert settings == {
        "kd_mpnet_augment4": (0.5, 2, 4.0),
        "kd_mpnet_augment4_alpha01": (0.1, 2, 4.0),
        "kd_mpnet_augment4_alpha01_3ep": (0.1, 3, 4.0),
        "kd_mpnet_augment8_alpha01": (0.1, 2, 8.0),
    }


def test_transfer_arm_needs_and_uses_a_file(capsys, tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="--unlabeled"):
        teachers.main(["--dry-run", "--arms", "kd_mpnet_transfer"])
    teachers.main(
        ["--dry-run", "--arms", "kd_mpnet_transfer", "--unlabeled", "x.csv", "--seeds", "1"]
    )
    (run,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert run["unlabeled"] == "x.csv" and run["teacher"] == "mpnet"


def test_tiny_run_writes_rows_and_teachers(tiny_config, tmp_path):
    strong = tmp_path / "strong.yaml"
    strong.write_text(
        f"extends: {TINY_CONFIG}\n"
        "teacher:\n  random_init: {num_layers: 2, hidden_size: 48, num_heads: 2, "
        "intermediate_size: 64}\n"
    )
    output = tmp_path / "teachers.json"
    teachers.main(
        [
            "--minilm-config", str(TINY_CONFIG),
            "--mpnet-config", str(strong),
            "--arms", "labels", "kd_mpnet_augment",
            "--seeds", "1",
            "--student-init", "{kind: teacher_layers, layers: [0]}",
            "--output", str(output),
            "--section", "",
            f"workdir={tiny_config.workdir}",
            "augmentation.multiplier=0.25",  # the arms' own settings win over this
        ]
    )  # fmt: skip
    result = json.loads(output.read_text())
    rows = {row["arm"]: row for row in result["rows"]}
    assert set(rows) == {"labels", "kd_mpnet_augment"}
    for row in rows.values():
        assert set(row) >= {
            "teacher", "student_init", "transfer", "seed", "test_accuracy", "macro_f1",
            "teacher_accuracy", "retention", "int8_accuracy", "params", "seconds",
        }  # fmt: skip
        assert 0 <= row["test_accuracy"] <= 1 and row["params"] > 0
    assert rows["labels"]["teacher"] == "none"
    # The labels arm trains on the train split only; the augment arm adds teacher-labelled rows.
    assert rows["labels"]["training_rows"]["augmented"] == 0
    assert rows["kd_mpnet_augment"]["training_rows"]["augmented"] == 280
    assert len(result["teachers"]) == 2  # two different teachers, each scored once
    assert str(REPO) in teachers.__file__


def test_every_transfer_arm_is_held_to_the_goals_none_is_picked():
    def row(arm: str, accuracy: float, int8: float) -> dict:
        return {"arm": arm, "test_accuracy": accuracy, "int8_accuracy": int8}

    rows = [
        row("labels", 0.80, 0.80),
        row("labels", 0.82, 0.82),
        row("kd_mpnet_augment", 0.83, 0.83),
        row("kd_mpnet_augment4", 0.84, 0.86),
        row("kd_mpnet_augment4", 0.86, 0.86),
    ]
    scored = [
        {"teacher": "minilm", "test_accuracy": 0.84},
        {"teacher": "/cache/mpnet", "test_accuracy": 0.91},
    ]
    measured = teachers.goals(rows, scored)
    assert measured["met"] == {"mpnet_teacher": True}
    assert set(measured["arms"]) == {"kd_mpnet_augment", "kd_mpnet_augment4"}
    one, four = measured["arms"]["kd_mpnet_augment"], measured["arms"]["kd_mpnet_augment4"]
    assert round(one["over_labels_points"], 6) == 2.0 and one["seeds"] == 1
    assert one["met"] == {"over_labels_points": False, "over_minilm_teacher_points": False}
    assert round(four["over_labels_points"], 6) == 4.0 and four["seeds"] == 2
    assert round(four["over_minilm_teacher_points"], 6) == 2.0
    assert four["met"] == {"over_labels_points": True, "over_minilm_teacher_points": True}
    text = teachers.render_goals(measured)
    assert "kd_mpnet_augment4 over labels only >= 3.0 points (PyTorch, 2 seeds): +4.00" in text
    missed = "kd_mpnet_augment shipped INT8 over the MiniLM teacher >= 1.0 point (1 seed): -1.00"
    assert f"{missed} points, **not met**" in text


def test_merging_runs_orders_rows_by_arm_then_seed_and_keeps_each_teacher_once():
    def run(*cells: tuple[str, int]) -> dict:
        rows = [{"arm": arm, "seed": seed} for arm, seed in cells]
        return {"rows": rows, "teachers": [{"key": "mpnet"}, {"key": "minilm"}]}

    rows, scored = teachers.merged(
        [run(("kd_mpnet_augment", 2), ("labels", 2)), run(("labels", 1), ("kd_minilm", 1))]
    )
    assert [(r["arm"], r["seed"]) for r in rows] == [
        ("labels", 1), ("labels", 2), ("kd_minilm", 1), ("kd_mpnet_augment", 2),
    ]  # fmt: skip
    assert [t["key"] for t in scored] == ["mpnet", "minilm"]
