"""Graph optimisation: onnxruntime's BERT fusions on the fp32 graph, kept only when they pay.

The fused graph is measured, not assumed: it replaces the exported one only when its batch-1
latency is lower and its logits match the exported graph's within the parity tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deploy.latency import Feeds, compare_onnx_latency
from deploy.onnx_eval import onnx_logits, open_session
from distill.store import ManifestRecord

OPTIMIZED_FILE = "model.opt.onnx"
# Smaller gains are within this shared machine's timing noise (and onnxruntime applies most of
# the same fusions itself when it loads a session), so they would only flip the choice at random.
MIN_GAIN = 0.05


class OptimizationResult(ManifestRecord):
    """Whether the fused graph replaced the base one, why, and what was measured."""

    kept: bool
    reason: str
    base_p50_ms: float
    optimized_p50_ms: float
    max_abs_logit_diff: float
    fused_operators: dict[str, int]


def keep_optimized(
    base_ms: float,
    optimized_ms: float,
    max_abs_diff: float,
    tolerance: float,
    min_gain: float = MIN_GAIN,
) -> tuple[bool, str]:
    """Whether the optimised graph should replace the base graph, and why."""
    if not max_abs_diff <= tolerance:  # also rejects NaN
        return False, f"logits differ by {max_abs_diff:.3g} > parity tolerance {tolerance:g}"
    if optimized_ms > base_ms * (1 - min_gain):
        return False, (
            f"not faster by {min_gain:.0%}: {optimized_ms:.3f} ms vs {base_ms:.3f} ms at batch 1"
        )
    return True, f"faster: {optimized_ms:.3f} ms vs {base_ms:.3f} ms at batch 1, logits in parity"


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
    timing = compare_onnx_latency({"base": source, "optimized": target}, feeds)
    base_ms, optimized_ms = timing["base"].p50_ms, timing["optimized"].p50_ms
    kept, reason = keep_optimized(base_ms, optimized_ms, diff, tolerance)
    if not kept:
        target.unlink()
    result = OptimizationResult(
        kept=kept,
        reason=reason,
        base_p50_ms=base_ms,
        optimized_p50_ms=optimized_ms,
        max_abs_logit_diff=diff,
        fused_operators=fused,
    )
    return (target if kept else source), result
