"""Promotion gates: configured thresholds and a run's measurements in, one result per gate out.

Pure. This module decides which gates exist, what each compares, and what a missing number or a
missing champion means. Whether a value clears its bound is answered by a `Check` passed in:
`tasks.registry.mlflow_check` answers with MLflow's own `validate_evaluation_results`, so this
module needs neither prefect nor mlflow.

The champion gate is decided on paired evidence when both models' predictions on the same test
texts are at hand (`Measurements.champion_comparison`, from `distill.paired`): a challenger
significantly worse is not promoted, one significantly better is, and between the two (the
models cannot be told apart on these texts) `promotion.on_tie` decides, so a retrain does not
replace or keep the champion on a chance difference of a few texts.

Every gate here can fail on a real run. Checks that earlier stages already enforce more strictly
are not repeated (ONNX parity: export refuses a graph out of parity; the INT8 accuracy drop: the
quantize stage's own gate ships fp32 instead).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sklearn.metrics import accuracy_score, f1_score

from distill.config import OnTie, PromotionConfig
from distill.constants import EPSILON
from distill.paired import ALPHA, PairedComparison

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
    # This model (candidate) against the champion (reference), paired on the same test texts,
    # and whether this model was trained on other data than the champion (its fingerprint).
    champion_comparison: PairedComparison | None = None
    data_changed: bool = True


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
    # Paired evidence, for the champion gate only (see `champion_decision`).
    comparison: PairedComparison | None = None
    on_tie: OnTie = "keep"
    data_changed: bool = True

    @property
    def bound(self) -> float | None:
        """The number `value` is held against, for people reading the result."""
        if self.kind == "absolute":
            return self.threshold
        return None if self.baseline is None else self.baseline + self.min_improvement


class GateResult(BaseModel):
    """One gate's verdict, as the promotion result, `gates.json` and the summary record it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str
    comparison: PairedComparison | None = None  # the paired evidence it was decided on

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Latency(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    p50: float
    p95: float


class PromotionResult(BaseModel):
    """What `gate_and_promote` decided for one registered version (the summary's gate fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    promoted: bool
    reused: bool  # the very same model was registered before
    alias: str  # champion, challenger, or "" (neither)
    replaced_version: str | None  # the champion it replaced, now `previous`
    champion_before: str | None
    reason: str
    metric: str
    latency_ms: Latency  # the INT8 model, batch 1
    gates: tuple[GateResult, ...]
    # The challenger against the champion, paired on the same test texts (None: no champion).
    vs_champion: PairedComparison | None


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
            comparison=measured.champion_comparison,
            on_tie=config.on_tie,
            data_changed=measured.data_changed,
        ),
    ]


def two_sided_p(comparison: PairedComparison) -> float:
    """The two-sided p-value of "the two models differ", from the one-sided ones."""
    return min(1.0, 2 * min(comparison.p_worse, comparison.p_better))


def champion_decision(
    comparison: PairedComparison,
    min_improvement: float,
    on_tie: OnTie,
    data_changed: bool,
    alpha: float = ALPHA,
) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, on their paired comparison (challenger as
    candidate, champion as reference), and why.

    Significantly worse: kept out. Significantly better by at least `min_improvement`: promoted.
    Otherwise the two are indistinguishable on these texts and `on_tie` decides: `keep` the
    champion, `replace` it, or `replace_if_data_changed` (a model of new data replaces an equal
    champion; the same data with another seed does not)."""
    counts = (
        f"{comparison.only_candidate_right} texts only the challenger gets right, "
        f"{comparison.only_reference_right} only the champion, of {comparison.n}"
    )
    if comparison.significantly_worse(alpha):
        return False, (
            f"significantly worse, p = {comparison.p_worse:.2g} ({counts}): champion kept"
        )
    if (
        comparison.significantly_better(alpha)
        and comparison.difference >= min_improvement - EPSILON
    ):
        return True, (
            f"significantly better, p = {comparison.p_better:.2g} ({counts}): champion replaced"
        )
    tie = f"indistinguishable, p = {two_sided_p(comparison):.2g} ({counts})"
    if comparison.significantly_better(alpha):  # better, but by less than asked for
        tie += f", better by less than promotion.min_improvement {min_improvement:g}"
    if on_tie == "replace_if_data_changed":
        if data_changed:
            return True, f"{tie}, data changed: champion replaced"
        return False, f"{tie}, data unchanged: champion kept"
    if on_tie == "replace":
        return True, f"{tie}: champion replaced (promotion.on_tie=replace)"
    return False, f"{tie}: champion kept (promotion.on_tie=keep)"


def judge(gate: Gate, check: Check, champion_version: str | None = None) -> GateResult:
    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(
            name=gate.name,
            value=gate.value,
            threshold=gate.bound,
            passed=passed,
            reason=reason,
            comparison=gate.comparison,
        )

    is_champion_gate = gate.name.endswith("_vs_champion")
    if gate.value is None:
        return result(False, f"{gate.name} was not measured (failed or partial run)")
    if is_champion_gate and champion_version is None:
        return result(True, "no champion yet: the first model passing the other gates is promoted")
    if is_champion_gate and gate.baseline is None:
        return result(False, f"champion v{champion_version} could not be scored on this data")
    if gate.kind == "relative" and gate.baseline is None:
        return result(False, f"the {gate.against} of {gate.name} was not measured")
    if is_champion_gate and gate.comparison is not None:
        return result(
            *champion_decision(
                gate.comparison, gate.min_improvement, gate.on_tie, gate.data_changed
            )
        )
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
