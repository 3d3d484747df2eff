"""Small latency measurements of ONNX models: batch 1, one example at a time.

Models that are compared are timed call beside call on the same texts (the order rotating from
text to text), so a burst of load from other jobs on a shared machine slows both calls of a pair
alike instead of the model that happened to run then. A decision on speed reads the pairs, not
two medians: `paired_speed` gives the median per-text time ratio with a distribution-free
interval, and a graph counts as faster (or slower) only when that interval says so. Without the
interval a decision near its threshold flips from run to run on a busy machine, and the same
stage key would then hold different artifacts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import binom

from deploy.onnx_eval import open_session
from distill.paired import ALPHA
from distill.store import ManifestRecord

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p95_ms: float
    samples: int


def summarize(seconds: Sequence[float]) -> Timing:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return Timing(float(np.median(ms)), float(np.percentile(ms, 95)), len(ms))


def batch1_feeds(
    input_ids: Sequence[Sequence[int]], attention_mask: Sequence[Sequence[int]]
) -> list[Feeds]:
    """One feed dict per example, as an edge device receives them (no padding)."""
    return [
        {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.asarray([mask], dtype=np.int64),
        }
        for ids, mask in zip(input_ids, attention_mask, strict=True)
    ]


def time_calls(run: Callable[[Feeds], object], feeds: Sequence[Feeds]) -> list[float]:
    seconds = []
    for feed in feeds:
        started = time.perf_counter()
        run(feed)
        seconds.append(time.perf_counter() - started)
    return seconds


def onnx_seconds(
    models: Mapping[str, Path], feeds: Sequence[Feeds], rounds: int = 3, threads: int = 1
) -> dict[str, list[float]]:
    """Seconds per batch-1 call of each model over the same `feeds`, side by side
    (`interleaved_seconds`: pair them with `paired_speed`, summarize them with `summarize`)."""
    runners = {
        name: (_runner(open_session(path, threads=threads)), feeds) for name, path in models.items()
    }
    return interleaved_seconds(runners, rounds)


def compare_onnx_latency_each(
    models: Mapping[str, tuple[Path, Sequence[Feeds]]], rounds: int = 3, threads: int = 1
) -> dict[str, Timing]:
    """Batch-1 latency of each model over its own feeds (models with different tokenizers see
    the same texts as different ids, so as many feeds each), timed side by side."""
    runners = {
        name: (_runner(open_session(path, threads=threads)), feeds)
        for name, (path, feeds) in models.items()
    }
    seconds = interleaved_seconds(runners, rounds)
    return {name: summarize(values) for name, values in seconds.items()}


def interleaved_seconds(
    runners: Mapping[str, tuple[Callable[[Feeds], object], Sequence[Feeds]]], rounds: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each runner over its own feeds (any callables: ONNX sessions, PyTorch
    models), after a short warm-up, in `rounds` passes. Within a pass the runners take turns
    text by text, the order rotating, so the i-th seconds of every runner were measured side by
    side (the pairs `paired_speed` reads)."""
    counts = {len(feeds) for _, feeds in runners.values()}
    if 0 in counts:
        raise ValueError("cannot time a model on zero examples")
    if len(counts) > 1:
        raise ValueError(f"models timed side by side need as many feeds each, got {counts}")
    for run, feeds in runners.values():  # warm-up: first calls allocate and pick kernels
        time_calls(run, feeds[:3])
    names = list(runners)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    calls = counts.pop()
    for _ in range(rounds):
        for index in range(calls):
            turn = index % len(names)
            for name in names[turn:] + names[:turn]:
                run, feeds = runners[name]
                seconds[name] += time_calls(run, feeds[index : index + 1])
    return seconds


class MachineLoad(ManifestRecord):
    """The machine's 1-minute load average as a timing ended, and the CPUs this process may
    use: pairs timed beside other work (a load well above the CPUs) can favour one runtime, and
    a stage keeps its timing's verdict for every later run."""

    average: float
    cpus: int


def machine_load() -> MachineLoad | None:
    """Now's load (None where the system has no load average)."""
    try:
        average = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    return MachineLoad(average=round(average, 2), cpus=len(os.sched_getaffinity(0)))


class SpeedComparison(ManifestRecord):
    """A candidate's per-call time against a reference's, call beside call on the same inputs.

    `median_ratio` is the median over pairs of candidate seconds / reference seconds (below 1:
    the candidate is faster); `interval` is its distribution-free two-sided interval (order
    statistics of the ratios, binomial), each side holding the one-sided level `ALPHA`; None
    when there are too few pairs for one, and then nothing is significant."""

    pairs: int
    median_ratio: float
    interval: tuple[float, float] | None = None
    load: MachineLoad | None = None  # as the pairs ended (None: not recorded)

    def faster_by(self, gain: float) -> bool:
        """Whether the candidate is significantly more than `gain` (a fraction) faster."""
        return self.interval is not None and self.interval[1] < 1.0 - gain

    def slower(self) -> bool:
        """Whether the candidate is significantly slower than the reference."""
        return self.interval is not None and self.interval[0] > 1.0

    def summary(self) -> str:
        load = f", load {self.load.average:.1f} on {self.load.cpus} CPUs" if self.load else ""
        if self.interval is None:
            return (
                f"time ratio {self.median_ratio:.3f} ({self.pairs} paired calls: no interval{load})"
            )
        low, high = self.interval
        return (
            f"time ratio {self.median_ratio:.3f} (interval {low:.3f} to {high:.3f}, "
            f"{self.pairs} paired calls{load})"
        )


def paired_speed(
    candidate_seconds: Sequence[float],
    reference_seconds: Sequence[float],
    alpha: float = ALPHA,
    load: MachineLoad | None = None,
) -> SpeedComparison:
    """The median time ratio of paired calls with its interval (see `SpeedComparison`), with
    the machine's `load` as they were timed when given."""
    candidate = np.asarray(candidate_seconds, dtype=np.float64)
    reference = np.asarray(reference_seconds, dtype=np.float64)
    if candidate.shape != reference.shape or not candidate.size:
        raise ValueError(f"need paired calls, got {candidate.size} and {reference.size} times")
    ratios = np.sort(candidate / reference)
    pairs = len(ratios)
    # The k-th smallest and k-th largest ratios bound the median with probability
    # >= 1 - 2 P(Binomial(pairs, 1/2) < k); take the largest k keeping each side <= alpha.
    # (binom.ppf gives the smallest k with P(B <= k) >= alpha, so P(B <= k - 1) < alpha.)
    k = int(binom.ppf(alpha, pairs, 0.5))
    interval = (float(ratios[k - 1]), float(ratios[pairs - k])) if k >= 1 else None
    median = float(np.median(ratios))
    return SpeedComparison(pairs=pairs, median_ratio=median, interval=interval, load=load)


def _runner(session) -> Callable[[Feeds], object]:
    return lambda feed: session.run(["logits"], feed)
