"""The graph-optimisation decision: fused graph only when in parity and significantly faster."""

import math

import numpy as np
import onnx
import pytest

import deploy.optimize as optimize
from deploy.latency import batch1_feeds, paired_speed
from deploy.optimize import OPTIMIZED_FILE, keep_optimized, try_optimize


def speed(ratio: float, spread: float = 0.01, pairs: int = 48):
    """A paired time comparison whose per-call ratios spread evenly around `ratio`."""
    ratios = np.linspace(ratio - spread, ratio + spread, pairs)
    return paired_speed(ratios, np.ones(pairs))


def test_keeps_a_clearly_faster_graph_in_parity():
    kept, reason = keep_optimized(speed(0.75), max_abs_diff=1e-6, tolerance=1e-3)
    assert kept and "faster" in reason and "48 paired calls" in reason


@pytest.mark.parametrize("diff", [2e-3, math.nan])
def test_keeps_the_unoptimised_graph_when_parity_fails_even_if_faster(diff):
    kept, reason = keep_optimized(speed(0.25), max_abs_diff=diff, tolerance=1e-3)
    assert not kept and "parity" in reason


@pytest.mark.parametrize(
    "ratio, spread",
    [(1.1, 0.01), (1.0, 0.01), (0.97, 0.01), (0.9, 0.2)],  # slower, equal, small gain, noise
)
def test_keeps_the_unoptimised_graph_when_not_clearly_faster(ratio, spread):
    kept, reason = keep_optimized(speed(ratio, spread), max_abs_diff=0.0, tolerance=1e-3)
    assert not kept and "not significantly faster by 5%" in reason


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from deploy.export import export_onnx
    from distill.config import RandomArchitecture
    from distill.models import random_classifier

    arch = RandomArchitecture(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    model = random_classifier(arch, 2000, 64, ["a", "b"], seed=3).eval()
    path = tmp_path_factory.mktemp("optimize") / "model.onnx"
    export_onnx(model, path, opset=20, max_length=32)
    return path


def rows():
    ids = [[101, 1000 + i, 1500 + i, 102] for i in range(6)]
    return ids, [[1] * len(row) for row in ids]


def test_try_optimize_keeps_the_exported_graph_when_the_fused_one_breaks_parity(
    exported, tmp_path, monkeypatch
):
    def broken_optimizer(source, target, num_heads, hidden_size):
        model = onnx.load(str(source))
        for tensor in model.graph.initializer:  # flip the classifier: every logit flips sign
            if tensor.name.endswith("classifier.weight"):
                flipped = -onnx.numpy_helper.to_array(tensor)
                tensor.CopyFrom(onnx.numpy_helper.from_array(flipped, tensor.name))
        onnx.save(model, str(target))
        return {"Broken": 1}

    monkeypatch.setattr(optimize, "optimize_bert", broken_optimizer)
    ids, mask = rows()
    chosen, result = try_optimize(
        exported, tmp_path, 2, 32, ids, mask, batch1_feeds(ids, mask), tolerance=1e-3
    )
    assert chosen == exported
    assert not result.kept and result.max_abs_logit_diff > 1e-3
    assert "parity" in result.reason
    assert not (tmp_path / OPTIMIZED_FILE).exists()


def test_try_optimize_runs_the_real_bert_fusions_in_parity(exported, tmp_path):
    ids, mask = rows()
    chosen, result = try_optimize(
        exported, tmp_path, 2, 32, ids, mask, batch1_feeds(ids, mask), tolerance=1e-3
    )
    assert result.max_abs_logit_diff <= 1e-3
    assert result.fused_operators, "the BERT optimizer fused nothing"
    # The decision's evidence is recorded: every text timed 3 times beside the other graph.
    assert result.speed.pairs == 3 * len(ids)
    # Whichever graph was chosen exists; a rejected fused graph is not left behind.
    assert chosen.is_file()
    assert (tmp_path / OPTIMIZED_FILE).exists() == result.kept
