"""Promotion gates: configured thresholds and a run's measurements in, one result per gate out.

Pure. This module decides which gates exist, what each compares, and what a missing number or a
missing champion means. Whether a value clears its bound is answered by a `Check` passed in:
`tasks.registry.mlflow_check` answers with MLflow's own `validate_evaluation_results`, so this
module needs neither prefect nor mlflow.

Every gate here can fail on a real run. Checks that earlier stages already enforce more strictly
are not repeated (ONNX parity: export refuses a graph out of parity; the INT8 accuracy drop: the
quantize stage's own gate ships fp32 instead).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sklearn.metrics import accuracy_score, f1_score

from distill.config import PromotionConfig

Metric = Literal["accuracy", "macro_f1"]


def champion_gate(metric: Metric) -> str:
    return f"{metric}_vs_champion"


def baseline_gate(metric: Metric) -> str:
    return f"{metric}_over_baseline"


CHAMPION_GATE = champion_gate("accuracy")  # the default metric's name, as tags have it


def score(
    metric: Metric, labels: Sequence[int], predicted: Sequence[int], num_labels: int
) -> float:
    """`metric` of `predicted` against `labels`. Macro-F1 averages over every class the model
    knows, so a class the model never predicts counts as 0, not as absent."""
    if metric == "accuracy":
        return float(accuracy_score(labels, predicted))
    classes = list(range(num_labels))
    return float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0))


def majority_baseline(
    metric: Metric, train_labels: Sequence[int], test_labels: Sequence[int], num_labels: int
) -> float:
    """The score of always answering the most frequent train label, on the test labels."""
    if not train_labels:
        raise ValueError("the majority-class baseline needs at least one train label")
    majority = Counter(train_labels).most_common(1)[0][0]
    return score(metric, test_labels, [majority] * len(test_labels), num_labels)


@dataclass(frozen=True)
class Measurements:
    """What a finished run measured, every score in the configured metric; None means "not
    measured" and fails its gate."""

    retention: float | None  # student score / teacher score (PyTorch)
    latency_ms: float | None
    score: float | None  # the shipped model's score on this run's test split
    baseline_score: float | None  # always answering the majority train label, same split
    champion_version: str | None = None  # None: nothing is champion yet
    champion_score: float | None = None  # the champion's on the same split


@dataclass(frozen=True)
class Gate:
    """One comparison. An absolute gate bounds `value` by `threshold`; a relative gate needs
    `value` to beat `baseline` by at least `min_improvement`."""

    name: str
    value: float | None
    greater_is_better: bool
    kind: Literal["absolute", "relative"] = "absolute"
    threshold: float | None = None
    baseline: float | None = None
    min_improvement: float = 0.0
    against: str = ""  # what `baseline` is, for people reading the result

    @property
    def bound(self) -> float | None:
        """The number `value` is held against, for people reading the result."""
        if self.kind == "absolute":
            return self.threshold
        return None if self.baseline is None else self.baseline + self.min_improvement


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Check = Callable[[Gate], str | None]  # why `gate` fails, or None when it passes


def build_gates(config: PromotionConfig, measured: Measurements) -> list[Gate]:
    champion = measured.champion_version
    return [
        Gate("retention", measured.retention, True, threshold=config.min_retention),
        Gate(
            baseline_gate(config.metric),
            measured.score,
            True,
            kind="relative",
            baseline=measured.baseline_score,
            min_improvement=config.min_margin_over_baseline,
            against="majority-class baseline",
        ),
        Gate("latency_ms", measured.latency_ms, False, threshold=config.max_latency_ms),
        Gate(
            champion_gate(config.metric),
            measured.score,
            True,
            kind="relative",
            baseline=measured.champion_score,
            min_improvement=config.min_improvement,
            against=f"champion v{champion}",
        ),
    ]


def judge(gate: Gate, check: Check, champion_version: str | None = None) -> GateResult:
    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(gate.name, gate.value, gate.bound, passed, reason)

    is_champion_gate = gate.name.endswith("_vs_champion")
    if gate.value is None:
        return result(False, f"{gate.name} was not measured (failed or partial run)")
    if is_champion_gate and champion_version is None:
        return result(True, "no champion yet: the first model passing the other gates is promoted")
    if is_champion_gate and gate.baseline is None:
        return result(False, f"champion v{champion_version} could not be scored on this data")
    if gate.kind == "relative" and gate.baseline is None:
        return result(False, f"the {gate.against} of {gate.name} was not measured")
    failure = check(gate)
    if failure is not None:
        return result(False, failure)
    relation = ">=" if gate.greater_is_better else "<="
    against = f" ({gate.against} {gate.baseline:.4g})" if gate.kind == "relative" else ""
    return result(True, f"{gate.name} = {gate.value:.4g} {relation} {gate.bound:.4g}{against}")


def evaluate_gates(
    config: PromotionConfig, measured: Measurements, check: Check
) -> list[GateResult]:
    return [judge(gate, check, measured.champion_version) for gate in build_gates(config, measured)]


def all_passed(results: Iterable[GateResult]) -> bool:
    results = list(results)
    return bool(results) and all(result.passed for result in results)


def failure_summary(results: Iterable[GateResult]) -> str:
    failed = [f"{result.name}: {result.reason}" for result in results if not result.passed]
    return "; ".join(failed) if failed else "all gates passed"
