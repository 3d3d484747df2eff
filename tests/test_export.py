"""ONNX export: dynamic axes, parity with PyTorch on padded batches, INT8 quantization."""

import copy

import numpy as np
import onnx
import pytest
import torch

from deploy.export import export_onnx, parity, replace_initializer
from deploy.onnx_eval import onnx_logits, open_session
from deploy.quantize import quantize_int8
from distill.padding import pad


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from distill.config import RandomArchitecture
    from distill.models import random_classifier

    arch = RandomArchitecture(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
    model = random_classifier(arch, 30522, 128, ["a", "b", "c"], seed=1).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, opset=20, max_length=64)
    return model, path


def ragged_batch(seed, rows=6, max_len=40):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, rows)
    ids = [rng.integers(1000, 30000, n).tolist() for n in lengths]
    return ids, [[1] * n for n in lengths]


def test_graph_has_dynamic_batch_and_sequence_axes(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(d, str) and d for d in dims), dims


def test_onnx_matches_pytorch_on_padded_batches_of_any_shape(exported):
    model, path = exported
    session = open_session(path)
    for seed, rows in ((0, 1), (1, 7), (2, 33)):
        ids, mask = ragged_batch(seed, rows)
        with torch.inference_mode():
            reference = model(
                input_ids=torch.from_numpy(pad(ids)),
                attention_mask=torch.from_numpy(pad(mask)),
            ).logits.numpy()
        # onnx_logits regroups rows by length: padding must not change any row's logits.
        candidate = onnx_logits(session, ids, mask, batch_size=4)
        result = parity(reference, candidate)
        assert result["max_abs_logit_diff"] < 1e-4
        assert result["label_agreement"] == 1.0


def test_int8_model_is_smaller_and_close(exported, tmp_path):
    _, path = exported
    target = tmp_path / "model.int8.onnx"
    quantize_int8(path, target, per_channel=True)
    assert target.stat().st_size < path.stat().st_size / 2
    ids, mask = ragged_batch(3, rows=16)
    fp32 = onnx_logits(open_session(path), ids, mask)
    int8 = onnx_logits(open_session(target), ids, mask)
    assert np.abs(fp32 - int8).max() < 0.5
    assert not (tmp_path / "prepared.onnx").exists()


def test_a_trimmed_embedding_swapped_into_the_graph_matches_the_trimmed_model(exported, tmp_path):
    from deploy.vocab_trim import slice_word_embeddings

    model, path = exported
    trimmed = copy.deepcopy(model)
    full = model.get_input_embeddings().weight.detach().numpy()
    kept = [0, 100, 101, 102, *range(1000, 30000, 7)]
    slice_word_embeddings(trimmed, kept)
    target = tmp_path / "trimmed.onnx"
    assert replace_initializer(
        path, target, full, trimmed.get_input_embeddings().weight.detach().numpy()
    )
    # No stale shape of the old table is left for shape inference (INT8 pre-processing) to trip on.
    onnx.shape_inference.infer_shapes(onnx.load(str(target)), strict_mode=True)
    ids, mask = ragged_batch(4, rows=5)
    ids = [[kept.index(i) if i in kept else 1 for i in row] for row in ids]
    with torch.inference_mode():
        reference = trimmed(
            input_ids=torch.from_numpy(pad(ids)), attention_mask=torch.from_numpy(pad(mask))
        ).logits.numpy()
    assert (
        parity(reference, onnx_logits(open_session(target), ids, mask))["max_abs_logit_diff"] < 1e-4
    )


def test_no_initializer_is_swapped_unless_exactly_one_equals_the_old_table(exported, tmp_path):
    _, path = exported
    target = tmp_path / "trimmed.onnx"
    assert not replace_initializer(path, target, np.zeros((30522, 32), np.float32), np.zeros(1))
    assert not target.exists()


def test_an_exported_model_can_be_freed(tmp_path):
    # The exporter's module-level rewrite rules kept the last graph, and so every weight of the
    # exported model (the teacher's 127-438 MiB) alive for the rest of the run.
    import gc
    import weakref

    from distill.config import RandomArchitecture
    from distill.models import random_classifier

    arch = RandomArchitecture(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    model = random_classifier(arch, 1000, 64, ["a", "b"], seed=2).eval()
    weights = weakref.ref(model.get_input_embeddings().weight)
    export_onnx(model, tmp_path / "model.onnx", opset=20, max_length=32)
    del model
    gc.collect()
    assert weights() is None
