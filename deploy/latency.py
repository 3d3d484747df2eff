"""Small latency measurements of ONNX models: batch 1, one example at a time.

Models that are compared are timed in interleaved rounds on the same texts, so a burst of load
from other jobs on a shared machine slows all of them alike instead of the one that ran then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.onnx_eval import open_session

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


def compare_onnx_latency(
    models: Mapping[str, Path], feeds: Sequence[Feeds], rounds: int = 3, threads: int = 1
) -> dict[str, Timing]:
    """Batch-1 latency of each model over the same `feeds`, timed in interleaved rounds."""
    return compare_onnx_latency_each(
        {name: (path, feeds) for name, path in models.items()}, rounds, threads
    )


def compare_onnx_latency_each(
    models: Mapping[str, tuple[Path, Sequence[Feeds]]], rounds: int = 3, threads: int = 1
) -> dict[str, Timing]:
    """Batch-1 latency of each model over its own feeds (models with different tokenizers see
    the same texts as different ids), timed in `rounds` interleaved rounds."""
    runners = {
        name: (_runner(open_session(path, threads=threads)), feeds)
        for name, (path, feeds) in models.items()
    }
    seconds = interleaved_seconds(runners, rounds)
    return {name: summarize(values) for name, values in seconds.items()}


def interleaved_seconds(
    runners: Mapping[str, tuple[Callable[[Feeds], object], Sequence[Feeds]]], rounds: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each runner over its own feeds, after a short warm-up, in `rounds`
    rounds that alternate between the runners (any callables: ONNX sessions, PyTorch models)."""
    if any(not feeds for _, feeds in runners.values()):
        raise ValueError("cannot time a model on zero examples")
    for run, feeds in runners.values():  # warm-up: first calls allocate and pick kernels
        time_calls(run, feeds[:3])
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, (run, feeds) in runners.items():
            seconds[name] += time_calls(run, feeds)
    return seconds


def _runner(session) -> Callable[[Feeds], object]:
    return lambda feed: session.run(["logits"], feed)
