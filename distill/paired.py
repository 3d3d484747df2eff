"""Paired comparison of two models on the same texts: the evidence behind every decision.

Two models scored on the same ~1,000 texts differ by a few texts by chance; a point estimate
against a half-point budget decides on noise. Here both models' predictions on the same rows go
in, and out come the difference, the texts on which exactly one of them is right (the discordant
pairs, `b` and `c`), a 95% interval and one-sided p-values:

- accuracy: exact McNemar, i.e. a binomial test of `c` successes in `b + c` fair coin flips
  (scipy's `binomtest`); the interval is a seeded paired bootstrap over rows;
- macro-F1 (not a sum over rows, so no McNemar): the same paired bootstrap for the interval and
  a seeded paired permutation test (each row's two predictions swapped with probability 1/2).

Pure and deterministic: a fixed seed, numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import binomtest

Metric = Literal["accuracy", "macro_f1"]
ALPHA = 0.05  # one-sided significance level of every decision
RESAMPLES = 2000
SEED = 0


class PairedComparison(BaseModel):
    """`candidate` against `reference` on the same `n` texts (a frozen record for manifests).

    `difference` is candidate minus reference in `metric`; `p_worse` is the one-sided p-value of
    "the candidate is worse" (small: significantly worse), `p_better` of "it is better"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: Metric
    n: int
    reference_score: float
    candidate_score: float
    difference: float
    # Texts only the reference gets right (b) and only the candidate gets right (c).
    only_reference_right: int
    only_candidate_right: int
    interval: tuple[float, float]  # 95% paired bootstrap interval of `difference`
    p_worse: float
    p_better: float
    method: str  # how the p-values were computed

    def significantly_worse(self, alpha: float = ALPHA) -> bool:
        return self.p_worse < alpha

    def significantly_better(self, alpha: float = ALPHA) -> bool:
        return self.p_better < alpha

    def summary(self) -> str:
        """One line for a reason, a tag or a card: "-0.0066 [-0.0113, -0.0019], 7 vs 0 ..."."""
        low, high = self.interval
        return (
            f"{self.metric} difference {self.difference:+.4f} (95% CI {low:+.4f} to {high:+.4f}; "
            f"only reference right {self.only_reference_right}, only candidate right "
            f"{self.only_candidate_right}, of {self.n}; p(worse) = {self.p_worse:.3g}, "
            f"p(better) = {self.p_better:.3g})"
        )


def _as_labels(name: str, values: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2:  # logits or probabilities
        array = array.argmax(-1)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected one label per text, got shape {array.shape}")
    return array.astype(np.int64)


def macro_f1_rows(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of `predicted` [resamples, n] against `labels` [resamples, n],
    averaged over all `num_classes` (a class neither predicted nor present scores 0, like
    scikit-learn's `f1_score(labels=range(k), average="macro", zero_division=0)`)."""
    scores = np.zeros(predicted.shape[0])
    for k in range(num_classes):
        is_predicted, is_true = predicted == k, labels == k
        true_positive = (is_predicted & is_true).sum(-1)
        denominator = is_predicted.sum(-1) + is_true.sum(-1)
        scores += np.divide(
            2 * true_positive, denominator, out=np.zeros(len(scores)), where=denominator > 0
        )
    return scores / num_classes


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def compare(
    reference: Sequence[int] | np.ndarray,
    candidate: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    metric: Metric = "accuracy",
    num_classes: int | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedComparison:
    """`candidate`'s predictions against `reference`'s on the same texts, scored on `labels`.

    Predictions are labels per text, or logits/probabilities (argmax taken)."""
    reference_labels = _as_labels("reference", reference)
    candidate_labels = _as_labels("candidate", candidate)
    truth = _as_labels("labels", labels)
    if not (len(reference_labels) == len(candidate_labels) == len(truth)):
        raise ValueError(
            f"a paired comparison needs one prediction per text from each model: "
            f"{len(reference_labels)} reference, {len(candidate_labels)} candidate predictions "
            f"for {len(truth)} labels"
        )
    n = len(truth)
    if n == 0:
        raise ValueError("a paired comparison of an empty set of texts")
    reference_right, candidate_right = reference_labels == truth, candidate_labels == truth
    b = int(np.sum(reference_right & ~candidate_right))
    c = int(np.sum(candidate_right & ~reference_right))
    rng = np.random.default_rng(seed)
    if metric == "accuracy":
        reference_score = float(reference_right.mean())
        candidate_score = float(candidate_right.mean())
        # Resampling rows only changes how many discordant texts of each kind are drawn.
        drawn = rng.multinomial(n, [b / n, c / n, (n - b - c) / n], size=resamples)
        interval = _percentile_interval((drawn[:, 1] - drawn[:, 0]) / n)
        p_worse, p_better = mcnemar_p_values(b, c)
        method = "exact McNemar (binomial test on discordant pairs)"
    else:
        classes = (
            num_classes or int(max(truth.max(), reference_labels.max(), candidate_labels.max())) + 1
        )
        reference_score = float(macro_f1_rows(reference_labels[None], truth[None], classes)[0])
        candidate_score = float(macro_f1_rows(candidate_labels[None], truth[None], classes)[0])
        rows = rng.integers(0, n, size=(resamples, n))
        interval = _percentile_interval(
            macro_f1_rows(candidate_labels[rows], truth[rows], classes)
            - macro_f1_rows(reference_labels[rows], truth[rows], classes)
        )
        swap = rng.random((resamples, n)) < 0.5
        permuted = macro_f1_rows(
            np.where(swap, reference_labels, candidate_labels), truth[None], classes
        ) - macro_f1_rows(np.where(swap, candidate_labels, reference_labels), truth[None], classes)
        observed = candidate_score - reference_score
        tolerance = 1e-12  # permuted differences equal to the observed one count as extreme
        p_better = float((1 + np.sum(permuted >= observed - tolerance)) / (1 + resamples))
        p_worse = float((1 + np.sum(permuted <= observed + tolerance)) / (1 + resamples))
        method = f"paired permutation test ({resamples} seeded swaps)"
    return PairedComparison(
        metric=metric,
        n=n,
        reference_score=reference_score,
        candidate_score=candidate_score,
        difference=candidate_score - reference_score,
        only_reference_right=b,
        only_candidate_right=c,
        interval=interval,
        p_worse=min(p_worse, 1.0),
        p_better=min(p_better, 1.0),
        method=method,
    )


def mcnemar_p_values(b: int, c: int) -> tuple[float, float]:
    """One-sided exact McNemar p-values (worse, better) for `b` texts only the reference gets
    right and `c` only the candidate gets right; 1.0 each without discordant texts."""
    if b + c == 0:
        return 1.0, 1.0
    worse = binomtest(b, b + c, 0.5, alternative="greater").pvalue
    better = binomtest(c, b + c, 0.5, alternative="greater").pvalue
    return float(worse), float(better)


class ScoreInterval(BaseModel):
    """One model's score on `n` texts with its 95% bootstrap interval (seeded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: Metric
    n: int
    score: float
    interval: tuple[float, float]

    def summary(self) -> str:
        low, high = self.interval
        return f"{self.score:.4f} (95% CI {low:.4f} to {high:.4f})"


def score_interval(
    predicted: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    metric: Metric = "accuracy",
    num_classes: int | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> ScoreInterval:
    """`metric` of `predicted` on `labels` with a seeded percentile bootstrap over texts."""
    guess, truth = _as_labels("predicted", predicted), _as_labels("labels", labels)
    if len(guess) != len(truth):
        raise ValueError(f"{len(guess)} predictions for {len(truth)} labels")
    if not len(truth):
        raise ValueError("a score of an empty set of texts")
    classes = num_classes or int(max(truth.max(), guess.max())) + 1
    rows = np.random.default_rng(seed).integers(0, len(truth), size=(resamples, len(truth)))
    if metric == "accuracy":
        right = guess == truth
        score, resampled = float(right.mean()), right[rows].mean(-1)
    else:
        score = float(macro_f1_rows(guess[None], truth[None], classes)[0])
        resampled = macro_f1_rows(guess[rows], truth[rows], classes)
    return ScoreInterval(
        metric=metric, n=len(truth), score=score, interval=_percentile_interval(resampled)
    )
