"""Promotion gates: which gates a run faces, how each is judged, and what missing numbers mean.

The comparisons themselves are MLflow's (`validate_evaluation_results`), called for real."""

import pytest

from distill.config import PromotionConfig, build_config
from distill.gates import (
    CHAMPION_GATE,
    Gate,
    Measurements,
    all_passed,
    build_gates,
    evaluate_gates,
    failure_summary,
    judge,
)
from tasks.registry import mlflow_check

CONFIG = PromotionConfig(
    min_retention=0.9, max_int8_accuracy_drop=0.01, max_latency_ms=10.0, min_improvement=0.02
)
GOOD = Measurements(
    parity_passed=True,
    retention=0.95,
    int8_accuracy_drop=0.004,
    latency_ms=2.5,
    accuracy=0.85,
    champion_version="3",
    champion_accuracy=0.82,
)


def by_name(results):
    return {result.name: result for result in results}


def evaluate(config=CONFIG, **changes):
    measured = Measurements(**{**GOOD.__dict__, **changes})
    return by_name(evaluate_gates(config, measured, mlflow_check))


def test_every_gate_is_reported_once_in_a_fixed_order():
    names = [gate.name for gate in build_gates(CONFIG, GOOD)]
    assert names == ["onnx_parity", "retention", "int8_accuracy_drop", "latency_ms", CHAMPION_GATE]


def test_a_good_candidate_passes_every_gate_with_its_numbers_recorded():
    results = evaluate()
    assert all(result.passed for result in results.values())
    assert results["retention"].value == 0.95 and results["retention"].threshold == 0.9
    assert results["latency_ms"].threshold == 10.0
    assert results[CHAMPION_GATE].threshold == pytest.approx(0.84)  # champion 0.82 + 0.02
    assert "champion v3" in results[CHAMPION_GATE].reason
    assert all_passed(results.values())
    assert failure_summary(results.values()) == "all gates passed"


@pytest.mark.parametrize(
    ("change", "gate"),
    [
        ({"parity_passed": False}, "onnx_parity"),
        ({"retention": 0.89}, "retention"),
        ({"int8_accuracy_drop": 0.011}, "int8_accuracy_drop"),
        ({"latency_ms": 10.5}, "latency_ms"),
        ({"accuracy": 0.83}, CHAMPION_GATE),  # better than 0.82, but not by 0.02
        ({"accuracy": 0.80}, CHAMPION_GATE),
    ],
)
def test_one_number_over_its_bound_fails_exactly_that_gate(change, gate):
    results = evaluate(**change)
    failed = [name for name, result in results.items() if not result.passed]
    assert failed == [gate]
    assert gate in results[gate].reason  # MLflow's message names the metric
    assert not all_passed(results.values())
    assert failure_summary(results.values()).startswith(f"{gate}: ")


def test_bounds_are_inclusive():
    results = evaluate(retention=0.9, int8_accuracy_drop=0.01, latency_ms=10.0)
    assert all(result.passed for result in results.values())


def test_without_min_improvement_matching_the_champion_is_enough():
    config = CONFIG.model_copy(update={"min_improvement": 0.0})
    assert evaluate(config, accuracy=0.82)[CHAMPION_GATE].passed
    assert not evaluate(config, accuracy=0.81)[CHAMPION_GATE].passed


def test_the_first_model_only_faces_the_absolute_gates():
    results = evaluate(champion_version=None, champion_accuracy=None, accuracy=0.1)
    assert results[CHAMPION_GATE].passed
    assert "no champion yet" in results[CHAMPION_GATE].reason
    assert not evaluate(champion_version=None, champion_accuracy=None, retention=0.5)[
        "retention"
    ].passed


def test_a_champion_that_cannot_be_scored_on_this_data_blocks_promotion():
    result = evaluate(champion_accuracy=None)[CHAMPION_GATE]
    assert not result.passed and "could not be scored" in result.reason


@pytest.mark.parametrize("missing", ["parity_passed", "retention", "latency_ms", "accuracy"])
def test_a_number_missing_from_a_partial_run_fails_its_gate(missing):
    results = evaluate(**{missing: None})
    failed = [result for result in results.values() if not result.passed]
    assert len(failed) == 1 and "not measured" in failed[0].reason


def test_judge_never_asks_the_check_about_a_missing_value():
    asked = []

    def check(gate):
        asked.append(gate.name)
        return None

    result = judge(Gate("latency_ms", None, False, threshold=1.0), check)
    assert not result.passed and asked == []


def test_no_gates_means_no_promotion():
    assert not all_passed([])


def test_thresholds_come_from_the_config_and_are_validated():
    config = build_config({}, ["promotion.max_latency_ms=3.5", "promotion.min_improvement=0.01"])
    assert config.promotion.max_latency_ms == 3.5
    assert config.promotion.min_improvement == 0.01
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'promotion.max_latency'"):
        build_config({}, ["promotion.max_latency=3"])
    with pytest.raises(ConfigError, match="promotion.max_latency_ms"):
        build_config({}, ["promotion.max_latency_ms=0"])
