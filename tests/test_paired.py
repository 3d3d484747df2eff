"""Paired comparisons: hand-computed McNemar cases, intervals, macro-F1, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.metrics import f1_score

from distill.paired import PairedComparison, compare, macro_f1_rows


def pairs(both_right: int, only_reference: int, only_candidate: int, both_wrong: int):
    """(reference, candidate, labels) with the given counts of each kind of text (label 1)."""
    reference = [1] * both_right + [1] * only_reference + [0] * only_candidate + [0] * both_wrong
    candidate = [1] * both_right + [0] * only_reference + [1] * only_candidate + [0] * both_wrong
    labels = [1] * len(reference)
    return reference, candidate, labels


def test_five_texts_only_the_candidate_gets_right_give_p_one_in_32():
    result = compare(*pairs(10, 0, 5, 5))
    assert (result.only_reference_right, result.only_candidate_right) == (0, 5)
    assert result.p_better == pytest.approx(1 / 32)
    assert result.p_worse == pytest.approx(1.0)
    assert result.difference == pytest.approx(5 / 20)
    assert result.significantly_better() and not result.significantly_worse()


def test_mcnemar_is_one_sided_and_uses_only_discordant_texts():
    # 7 vs 1: P(X >= 7 | n=8, 1/2) = (8 + 1) / 256, whatever the concordant texts are.
    few = compare(*pairs(5, 7, 1, 0))
    many = compare(*pairs(900, 7, 1, 100))
    assert few.p_worse == pytest.approx(9 / 256)
    assert many.p_worse == pytest.approx(9 / 256)
    assert many.p_better == pytest.approx(1 - 1 / 256)  # P(X >= 1 | n=8, 1/2)
    assert many.difference == pytest.approx(-6 / 1008)


def test_no_discordant_texts_means_no_difference_and_p_one():
    result = compare(*pairs(30, 0, 0, 10))
    assert result.difference == 0.0
    assert result.p_worse == result.p_better == 1.0
    assert result.interval == (0.0, 0.0)


def test_the_interval_brackets_the_difference_and_is_reproducible():
    reference, candidate, labels = pairs(900, 20, 8, 72)
    first, second = compare(reference, candidate, labels), compare(reference, candidate, labels)
    assert first == second
    low, high = first.interval
    assert low < first.difference < high < 0.01
    # Roughly +-1.96 standard errors of (c - b) / n with (b + c) / n^2 as its variance.
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(28) / 1000, rel=0.15)


def test_logits_are_read_as_their_argmax():
    reference = np.array([[0.1, 0.9], [0.8, 0.2]])
    result = compare(reference, [1, 1], [1, 1])
    assert (result.only_reference_right, result.only_candidate_right) == (0, 1)


def test_mismatched_lengths_are_refused_with_the_counts():
    with pytest.raises(ValueError, match="3 reference, 2 candidate predictions for 3 labels"):
        compare([0, 1, 1], [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        compare([], [], [])


def test_macro_f1_rows_match_scikit_learn():
    rng = np.random.default_rng(1)
    predicted, labels = rng.integers(0, 3, (4, 50)), rng.integers(0, 3, (4, 50))
    labels[0] = 0  # classes absent from the truth score 0
    expected = [
        f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0)
        for p, y in zip(predicted, labels, strict=True)
    ]
    assert macro_f1_rows(predicted, labels, 3) == pytest.approx(expected)


def test_macro_f1_comparison_sees_a_collapsed_minority_class():
    labels = np.array([0] * 90 + [1] * 10)
    reference = labels.copy()
    candidate = np.zeros(100, dtype=int)  # never answers the minority class
    result = compare(reference, candidate, labels, metric="macro_f1", num_classes=2)
    assert result.reference_score == pytest.approx(1.0)
    assert result.difference < -0.4
    assert result.significantly_worse() and not result.significantly_better()
    assert result.interval[1] < 0


def test_identical_models_are_indistinguishable_in_macro_f1():
    labels = np.array([0, 1] * 20)
    predictions = np.array([0, 0, 1, 1] * 10)
    result = compare(predictions, predictions, labels, metric="macro_f1", num_classes=2)
    assert result.difference == 0.0
    assert not result.significantly_worse() and not result.significantly_better()


def test_the_record_is_frozen_and_round_trips_through_json():
    result = compare(*pairs(10, 2, 1, 0))
    with pytest.raises(ValidationError):
        result.n = 3
    assert PairedComparison.model_validate_json(result.model_dump_json()) == result
    assert "only reference right 2" in result.summary()


def test_a_score_interval_brackets_the_score_and_narrows_with_more_texts():
    from distill.paired import score_interval

    few = score_interval([1] * 8 + [0] * 2, [1] * 10)
    many = score_interval([1] * 800 + [0] * 200, [1] * 1000)
    assert few.score == many.score == pytest.approx(0.8)
    assert few.interval[0] < 0.8 < few.interval[1] <= 1.0
    assert many.interval[1] - many.interval[0] < few.interval[1] - few.interval[0]
    # ~ +-1.96 * sqrt(0.8 * 0.2 / 1000)
    assert many.interval[1] - many.interval[0] == pytest.approx(2 * 1.96 * 0.01265, rel=0.15)
    f1 = score_interval([0, 1, 1, 0], [0, 1, 0, 0], metric="macro_f1", num_classes=2)
    assert f1.score == pytest.approx(f1_score([0, 1, 0, 0], [0, 1, 1, 0], average="macro"))
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        score_interval([0, 1, 1], [0, 1])
