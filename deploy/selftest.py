"""Self-test of a loaded bundle on this machine: golden examples, then batch-1 latency.

Torch-free like the runtime, so it runs on the edge device itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from deploy.runtime import Bundle, predict

DEFAULT_TOLERANCE = 1e-3  # largest |probability difference| from the build machine's run


@dataclass(frozen=True)
class SelftestReport:
    checked: int
    failures: tuple[str, ...]
    max_difference: float
    p50_ms: float
    p95_ms: float
    runs: int

    @property
    def passed(self) -> bool:
        return self.checked > 0 and not self.failures


def check_golden(bundle: Bundle, tolerance: float) -> tuple[list[str], float]:
    """Failures (one line each) and the largest probability difference seen.

    Each example runs alone (batch 1), as at build time: INT8 activations are quantized per
    batch, so batch-mates would shift the probabilities slightly.
    """
    if not bundle.golden:
        return ["bundle has no golden examples"], 0.0
    failures: list[str] = []
    worst = 0.0
    for number, example in enumerate(bundle.golden, 1):
        where = f"golden example {number} ({example['text'][:40]!r})"
        result = predict(bundle, [example["text"]])[0]
        if "error" in result:
            failures.append(f"{where}: {result['error']}")
            continue
        expected, actual = example["probabilities"], result["probabilities"]
        if set(expected) != set(actual):
            failures.append(
                f"{where}: expects labels {sorted(expected)}, model has {sorted(actual)}"
            )
            continue
        difference = max(abs(actual[label] - expected[label]) for label in expected)
        worst = max(worst, difference)
        if difference > tolerance:
            failures.append(
                f"{where}: probabilities differ by {difference:.3g} (tolerance {tolerance:g})"
            )
    return failures, worst


def measure_latency(bundle: Bundle, text: str, runs: int, warmup: int = 3) -> list[float]:
    """Milliseconds per batch-1 prediction of `text`, tokenization included."""
    for _ in range(warmup):
        predict(bundle, [text])
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        predict(bundle, [text])
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def selftest(
    bundle: Bundle, tolerance: float = DEFAULT_TOLERANCE, runs: int = 50
) -> SelftestReport:
    failures, worst = check_golden(bundle, tolerance)
    text = bundle.golden[0]["text"] if bundle.golden else "a short example sentence"
    timings = measure_latency(bundle, text, runs)
    return SelftestReport(
        checked=len(bundle.golden),
        failures=tuple(failures),
        max_difference=worst,
        p50_ms=float(np.percentile(timings, 50)),
        p95_ms=float(np.percentile(timings, 95)),
        runs=runs,
    )
