"""Graph optimisation: onnxruntime's BERT fusions on the fp32 graph, kept only when they pay.

The fused graph is measured, not assumed: it replaces the exported one only when its logits
match the exported graph's within the parity tolerance and it is significantly faster at batch 1
by more than `MIN_GAIN`: the whole interval of its paired time ratio to the exported graph
(`deploy.latency.paired_speed`) lies below 1 - MIN_GAIN. When the evidence is unclear the
exported graph stays, so a busy machine cannot flip the choice (and the INT8 graphs built on it)
from run to run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deploy.latency import (
    Feeds,
    SpeedComparison,
    machine_load,
    onnx_seconds,
    paired_speed,
    summarize,
)
from deploy.onnx_eval import onnx_logits, open_session
from distill.store import ManifestRecord

OPTIMIZED_FILE = "model.opt.onnx"
# A smaller gain is not worth a second graph to keep in parity (onnxruntime applies most of the
# same fusions itself when it loads a session).
MIN_GAIN = 0.05


class OptimizationResult(ManifestRecord):
    """Whether the fused graph replaced the base one, why, and what was measured."""

    kept: bool
    reason: str
    base_p50_ms: float
    optimized_p50_ms: float
    speed: SpeedComparison  # the fused graph's per-call time against the base graph's
    max_abs_logit_diff: float
    fused_operators: dict[str, int]


def keep_optimized(
    speed: SpeedComparison,
    max_abs_diff: float,
    tolerance: float,
    min_gain: float = MIN_GAIN,
) -> tuple[bool, str]:
    """Whether the optimised graph should replace the base graph, and why."""
    if not max_abs_diff <= tolerance:  # also rejects NaN
        return False, f"logits differ by {max_abs_diff:.3g} > parity tolerance {tolerance:g}"
    if not speed.faster_by(min_gain):
        return False, f"not significantly faster by {min_gain:.0%} at batch 1: {speed.summary()}"
    return True, f"faster at batch 1: {speed.summary()}, logits in parity"


def optimize_bert(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Write the fused graph to `target`; return how many operators of each kind were fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model = optimize_model(
        str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size
    )
    model.save_model_to_file(str(target))
    return {op: n for op, n in model.get_fused_operator_statistics().items() if n}


def try_optimize(
    source: Path,
    folder: Path,
    num_heads: int,
    hidden_size: int,
    parity_ids: Sequence[Sequence[int]],
    parity_mask: Sequence[Sequence[int]],
    feeds: Sequence[Feeds],
    tolerance: float,
) -> tuple[Path, OptimizationResult]:
    """The graph to quantize (the fused one or `source`) and the measured decision."""
    target = folder / OPTIMIZED_FILE
    fused = optimize_bert(source, target, num_heads, hidden_size)
    base = onnx_logits(open_session(source), parity_ids, parity_mask)
    optimized = onnx_logits(open_session(target), parity_ids, parity_mask)
    diff = float(np.abs(base - optimized).max())
    seconds = onnx_seconds({"base": source, "optimized": target}, feeds)
    speed = paired_speed(seconds["optimized"], seconds["base"], load=machine_load())
    kept, reason = keep_optimized(speed, diff, tolerance)
    if not kept:
        target.unlink()
    result = OptimizationResult(
        kept=kept,
        reason=reason,
        base_p50_ms=summarize(seconds["base"]).p50_ms,
        optimized_p50_ms=summarize(seconds["optimized"]).p50_ms,
        speed=speed,
        max_abs_logit_diff=diff,
        fused_operators=fused,
    )
    return (target if kept else source), result
