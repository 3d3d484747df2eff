"""The evaluation stage's teacher gap: is the teacher worth distilling from?"""

import logging

import pytest

from distill.evaluation import evaluate, weak_teacher_warning
from distill.paired import compare

LABELS = [0, 1] * 100


def predictions_right_on(count: int) -> list[int]:
    """Predictions right on the first `count` texts and wrong on the rest."""
    return [label if i < count else 1 - label for i, label in enumerate(LABELS)]


def test_a_clearly_stronger_teacher_gets_no_warning():
    gap = compare(
        reference=predictions_right_on(150), candidate=predictions_right_on(180), labels=LABELS
    )
    assert gap.significantly_better() and gap.difference == pytest.approx(0.15)
    assert weak_teacher_warning(gap) is None


def test_a_teacher_no_better_than_its_student_is_named_with_the_settings_to_change():
    gap = compare(
        reference=predictions_right_on(170), candidate=predictions_right_on(172), labels=LABELS
    )
    warning = weak_teacher_warning(gap)
    assert "not clearly stronger" in warning and "only candidate right 2" in warning
    for setting in ("teacher.training.epochs", "teacher.model", "augmentation.multiplier"):
        assert setting in warning


def test_the_evaluation_records_the_gap_on_validation_and_warns(tiny_stages, tmp_path, caplog):
    """The tiny teacher is random and barely trained: no stronger than its student."""
    with caplog.at_level(logging.WARNING, logger="distill.evaluation"):
        manifest = evaluate(
            tiny_stages.teacher, tiny_stages.student, tiny_stages.data, tmp_path, None
        )
    assert manifest.teacher_gap.n == tiny_stages.data.manifest.sizes["validation"]
    assert not manifest.teacher_clearly_stronger
    assert "not clearly stronger" in caplog.text
