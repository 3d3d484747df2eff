"""Promotion gates: configured thresholds and a run's measurements in, one result per gate out.

Pure. This module decides which gates exist, what each compares, and what a missing number or a
missing champion means. Whether a value clears its bound is answered by a `Check` passed in:
`tasks.registry.mlflow_check` answers with MLflow's own `validate_evaluation_results`, so this
module needs neither prefect nor mlflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from distill.config import PromotionConfig

CHAMPION_GATE = "accuracy_vs_champion"


@dataclass(frozen=True)
class Measurements:
    """What a finished run measured; None means "not measured" and fails its gate."""

    parity_passed: bool | None
    retention: float | None
    int8_accuracy_drop: float | None
    latency_ms: float | None
    accuracy: float | None  # the candidate's INT8 accuracy on this run's test split
    champion_version: str | None = None  # None: nothing is champion yet
    champion_accuracy: float | None = None  # the champion's on the same split


@dataclass(frozen=True)
class Gate:
    """One comparison. An absolute gate bounds `value` by `threshold`; a champion gate needs
    `value` to beat `baseline` (the champion's value) by at least `min_improvement`."""

    name: str
    value: float | None
    greater_is_better: bool
    kind: Literal["absolute", "champion"] = "absolute"
    threshold: float | None = None
    baseline: float | None = None
    min_improvement: float = 0.0

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
    parity = None if measured.parity_passed is None else float(measured.parity_passed)
    return [
        Gate("onnx_parity", parity, greater_is_better=True, threshold=1.0),
        Gate("retention", measured.retention, True, threshold=config.min_retention),
        Gate(
            "int8_accuracy_drop",
            measured.int8_accuracy_drop,
            False,
            threshold=config.max_int8_accuracy_drop,
        ),
        Gate("latency_ms", measured.latency_ms, False, threshold=config.max_latency_ms),
        Gate(
            CHAMPION_GATE,
            measured.accuracy,
            True,
            kind="champion",
            baseline=measured.champion_accuracy,
            min_improvement=config.min_improvement,
        ),
    ]


def judge(gate: Gate, check: Check, champion_version: str | None = None) -> GateResult:
    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(gate.name, gate.value, gate.bound, passed, reason)

    if gate.value is None:
        return result(False, f"{gate.name} was not measured (failed or partial run)")
    if gate.kind == "champion" and champion_version is None:
        return result(True, "no champion yet: the first model passing the other gates is promoted")
    if gate.kind == "champion" and gate.baseline is None:
        return result(False, f"champion v{champion_version} could not be scored on this data")
    failure = check(gate)
    if failure is not None:
        return result(False, failure)
    relation = ">=" if gate.greater_is_better else "<="
    against = "" if gate.kind == "absolute" else f" (champion v{champion_version})"
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
