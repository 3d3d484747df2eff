"""`teacher.labelling`: the logit cache labelled by the teacher's ONNX graph (fp32 or INT8),
gated on parity with PyTorch, keyed on the runtime, float32 on disk."""

import dataclasses
import math

import numpy as np
import pytest

from deploy import teacher_onnx
from deploy.labelling import (
    LOW_PRECISION_PREFERENCE,
    PREFERENCE,
    LabellingRefused,
    choose_labelling,
)
from deploy.teacher_onnx import open_labeller, teacher_onnx_stage
from deploy.teacher_precision import (
    ROUNDS,
    TIMED_BATCHES,
    judged_precision,
    precision_check_stage,
)
from distill import devices, memory, shards
from distill.batching import sorted_batches
from distill.chain import run_until_cache
from distill.config import ConfigError
from distill.data import load_split
from distill.devices import resolve_runtime
from distill.labelling import (
    INT8_GATE,
    ONNX_GATE,
    LabellingGate,
    TorchLabeller,
    mean_kl,
    parity_figures,
)
from distill.logit_cache import LABELLING_BATCH, logit_cache_stage, open_targets
from distill.models import load_classifier
from distill.shards import label_batches, label_batches_with
from distill.teacher import teacher_stage

# Bounds no real graph meets: INT8 always moves some logit and some soft target a little.
IMPOSSIBLE_INT8 = LabellingGate(min_agreement=1.0, max_abs_logit_diff=0.0, max_mean_kl=0.0)


def with_labelling(config, runtime: str):
    return config.model_copy(
        update={"teacher": config.teacher.model_copy(update={"labelling": runtime})}
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("labelling-store")


@pytest.fixture(scope="module")
def teacher(tiny_config, tiny_data, store):
    return teacher_stage(store, tiny_config.teacher, tiny_data)


def with_teacher_training(config, training):
    return config.model_copy(
        update={"teacher": config.teacher.model_copy(update={"training": training})}
    )


def with_teacher_precision(config, precision: str):
    """The precision the teacher's runtime resolves to: what PyTorch would label in (the
    teacher stage itself stays the module's fp32 one: only the choice reads this)."""
    training = config.teacher.training.model_copy(update={"precision": precision})
    return with_labelling(with_teacher_training(config, training), "auto")


# Bounds any logits meet, and bounds no low-precision logits meet.
ANY = LabellingGate(min_agreement=0.0)
IMPOSSIBLE_BF16 = IMPOSSIBLE_INT8


def cache_for(store, config, teacher, data, runtime: str, **gates):
    labelling = choose_labelling(store, with_labelling(config, runtime), teacher, data, **gates)
    return logit_cache_stage(store, teacher, data, labelling=labelling)


# --- the gates: pure decisions on measured numbers ------------------------------------------


def test_mean_kl_matches_a_hand_computed_value():
    reference, candidate = np.array([[0.0, 0.0]]), np.array([[math.log(3.0), 0.0]])
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln(2)
    assert mean_kl(reference, candidate, 1.0) == pytest.approx(0.5 * math.log(4 / 3))
    assert mean_kl(reference, reference, 2.0) == pytest.approx(0.0, abs=1e-15)


def test_the_gates_name_every_figure_they_refuse_on():
    reference = np.array([[1.0, 0.0], [0.0, 1.0]] * 500)
    flipped = reference.copy()
    flipped[0] = [0.0, 1.0]  # one label in 1000 flips: 99.9% agreement, logits off by 1
    onnx = ONNX_GATE.judge(parity_figures("onnx", reference, flipped, 2.0))
    assert not onnx.passed
    assert "max |logit diff| 1 > 0.001" in onnx.reason
    assert "agreement" not in onnx.reason.split("(measured")[0]  # 99.9% is within its bound
    int8 = INT8_GATE.judge(parity_figures("onnx-int8", reference, flipped, 2.0))
    assert int8.passed, int8.reason  # 99.9% >= 99.5%, mean KL ~1e-4 <= 0.01
    close = ONNX_GATE.judge(parity_figures("onnx", reference, reference + 1e-6, 2.0))
    assert close.passed and close.max_abs_logit_diff == pytest.approx(1e-6)


def test_the_onnx_labeller_path_matches_the_torch_path(tiny_data, teacher):
    """`label_batches_with` over a PyTorch labeller gives `label_batches`' targets."""
    model = load_classifier(teacher.path)
    rows = load_split(tiny_data.path, "train")
    batches = sorted_batches([len(ids) for ids in rows["input_ids"]], 32)
    plain = label_batches(model, rows, batches)
    through = label_batches_with(TorchLabeller(model), rows, batches, pad_id=0)
    np.testing.assert_allclose(through.logits, plain.logits, atol=1e-6)
    assert through.cls_states.dtype == np.float16


# --- the cache labelled by a graph ----------------------------------------------------------


def test_a_large_teachers_graphs_are_built_in_a_child_process(
    monkeypatch, tmp_path, tiny_data, teacher, store
):
    """Past APART_FROM_PARAMS the export's transient memory stays in a child process; the
    graphs and their parity evidence are the same as built here."""
    here = teacher_onnx_stage(store, teacher, tiny_data, "onnx")
    apart = []

    def spied(work):
        apart.append(work)
        return memory.in_child_process(work)

    monkeypatch.setattr(teacher_onnx, "APART_FROM_PARAMS", 0)
    monkeypatch.setattr(teacher_onnx, "in_child_process", spied)
    fp32 = teacher_onnx_stage(tmp_path, teacher, tiny_data, "onnx")
    assert len(apart) == 1  # (INT8 is built the same way, from this graph)
    assert fp32.manifest.agreement == 1.0
    assert fp32.manifest.max_abs_logit_diff <= ONNX_GATE.max_abs_logit_diff
    for name in ("reference_file", "logits_file"):
        np.testing.assert_allclose(
            np.load(fp32.file(getattr(fp32.manifest, name))),
            np.load(here.file(getattr(here.manifest, name))),
            atol=1e-5,
        )


def test_an_onnx_cache_records_its_parity_and_stays_float32(tiny_config, tiny_data, teacher, store):
    torch_cache = cache_for(store, tiny_config, teacher, tiny_data, "torch")
    onnx_cache = cache_for(store, tiny_config, teacher, tiny_data, "onnx")
    manifest = onnx_cache.manifest
    assert manifest.labelling_runtime == "onnx" and manifest.dtype == "float32"
    assert manifest.labelling_agreement == 1.0
    assert manifest.labelling_max_abs_logit_diff <= ONNX_GATE.max_abs_logit_diff
    assert manifest.labelling_mean_kl < 1e-8
    assert manifest.labelling.validation_texts == 60
    assert manifest.labelling.temperature == tiny_config.student.temperature
    targets, reference = open_targets(onnx_cache), open_targets(torch_cache)
    assert targets.logits.dtype == np.float32
    np.testing.assert_allclose(targets.logits, reference.logits, atol=1e-4)
    np.testing.assert_allclose(targets.cls_states, reference.cls_states, atol=1e-2)
    assert torch_cache.manifest.labelling_runtime == "torch"
    assert torch_cache.manifest.labelling_agreement is None  # PyTorch is the reference


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_a_built_cache_lets_go_of_what_labelled_it(
    runtime, tiny_config, tiny_data, teacher, tmp_path
):
    # The labeller is kept open across one cache's shards, then closed: an ONNX session and
    # its arena held ~0.6 GB through the rest of the default run.
    cache = cache_for(tmp_path, tiny_config, teacher, tiny_data, runtime)
    assert not cache.reused and cache.manifest.rows["train"] == len(
        load_split(tiny_data.path, "train")
    )
    assert open_labeller.cache_info().currsize == 0
    assert shards._teacher.cache_info().currsize == 0


def test_the_cache_key_names_the_runtime_and_a_repeat_reuses(
    tiny_config, tiny_data, teacher, store
):
    first = {
        runtime: cache_for(store, tiny_config, teacher, tiny_data, runtime)
        for runtime in ("torch", "onnx", "onnx-int8")
    }
    assert len({cache.key for cache in first.values()}) == 3
    assert len({cache.path for cache in first.values()}) == 3
    again = cache_for(store, tiny_config, teacher, tiny_data, "onnx-int8")
    assert again.reused and again.key == first["onnx-int8"].key
    graph = teacher_onnx_stage(store, teacher, tiny_data, "onnx-int8")
    assert graph.reused  # exported once
    assert again.manifest.labelling_graph_key == graph.key  # tagged, so gc keeps the graph
    # The fp32 graph's fusion decision names its evidence: a failed fusion, or paired times.
    fusion = teacher_onnx_stage(store, teacher, tiny_data, "onnx").manifest.fusion_reason
    assert "fusion failed" in fusion or "no operator fused" in fusion or "paired calls" in fusion
    assert open_targets(again).logits.dtype == np.float32


def test_an_explicit_refused_runtime_raises_with_its_figures(
    tiny_config, tiny_data, teacher, store
):
    config = with_labelling(tiny_config, "onnx-int8")
    with pytest.raises(LabellingRefused, match=r"teacher.labelling.*onnx-int8 refused") as error:
        choose_labelling(store, config, teacher, tiny_data, gates={"onnx-int8": IMPOSSIBLE_INT8})
    assert "mean KL" in str(error.value) and "agreement" in str(error.value)


def test_auto_falls_back_from_a_refused_int8_and_records_why(
    tiny_config, tiny_data, teacher, store
):
    config = with_labelling(tiny_config, "auto")
    labelling = choose_labelling(
        store, config, teacher, tiny_data, gates={"onnx-int8": IMPOSSIBLE_INT8}
    )
    record = labelling.record
    assert labelling.runtime == record.runtime == "torch"  # the only runtime left
    assert labelling.open is None and labelling.graph_key is None
    int8 = next(c for c in record.candidates if c.runtime == "onnx-int8")
    assert not int8.passed and int8.reason.startswith("refused")
    assert "refused: onnx-int8" in record.reason


def test_auto_takes_the_fastest_runtime_that_passes_and_the_same_one_every_time(
    tiny_config, tiny_data, teacher, store
):
    config = with_labelling(tiny_config, "auto")
    labelling = choose_labelling(store, config, teacher, tiny_data)
    passed = [c.runtime for c in labelling.record.candidates if c.passed]
    assert labelling.runtime == next(r for r in PREFERENCE if r in passed)
    # No timing in the choice: a repeat picks the same runtime, so it reuses the same cache.
    assert choose_labelling(store, config, teacher, tiny_data).runtime == labelling.runtime


def test_the_core_alone_labels_with_torch_and_refuses_onnx(tiny_config, tiny_data, store):
    upstream = run_until_cache(with_labelling(tiny_config, "auto"), store)
    # (a PyTorch cache built earlier for `torch` is the same cache: its record says so)
    assert upstream.cache.manifest.labelling_runtime == "torch"
    with pytest.raises(ConfigError, match="teacher.labelling"):
        run_until_cache(with_labelling(tiny_config, "onnx"), store)


# --- PyTorch in bf16 (auto precision on a CPU with bf16 units) -----------------------------


def test_auto_on_a_bf16_teacher_takes_pytorch_before_fp32_onnx_only_when_faster(
    tiny_config, tiny_data, teacher, store
):
    config = with_teacher_precision(tiny_config, "bf16")
    refuse_int8 = {"onnx-int8": IMPOSSIBLE_INT8, "onnx": ONNX_GATE}
    labelling = choose_labelling(
        store, config, teacher, tiny_data, gates=refuse_int8, low_precision_gate=ANY
    )
    assert LOW_PRECISION_PREFERENCE.index("torch") < LOW_PRECISION_PREFERENCE.index("onnx")
    # The evidence is a stage of the store: the next run's choice reads it, not recomputes it.
    graph = teacher_onnx_stage(store, teacher, tiny_data, "onnx")
    runtime = resolve_runtime(config.teacher.training)
    check = precision_check_stage(store, teacher, tiny_data, graph, runtime)
    assert check.reused and check.manifest.precision == "bf16"
    assert check.manifest.validation_texts == len(load_split(tiny_data.path, "validation"))
    assert check.manifest.speed.pairs >= 3  # batch beside batch, every round
    assert check.manifest.speed.load is not None  # how busy the machine was, kept beside it
    # Which one is faster depends on the CPU; the choice must follow the recorded evidence.
    faster = check.manifest.faster_than_graph
    assert labelling.runtime == ("torch" if faster else "onnx")
    torch_figures = next(c for c in labelling.record.candidates if c.runtime == "torch")
    assert torch_figures.passed == faster and torch_figures.reason.startswith("in bf16: ")
    assert 0.0 <= torch_figures.agreement <= 1.0 and torch_figures.mean_kl >= 0.0


def test_the_bf16_check_is_timed_in_batches_of_the_size_the_cache_labels_in(
    tiny_config, tiny_data, teacher, store
):
    # Speed per text differs between batch sizes (and bf16 PyTorch's more than the graph's), so
    # evidence timed at another batch than the cache's says nothing about the cache.
    graph = teacher_onnx_stage(store, teacher, tiny_data, "onnx")
    runtime = resolve_runtime(with_teacher_precision(tiny_config, "bf16").teacher.training)
    check = precision_check_stage(store, teacher, tiny_data, graph, runtime)
    assert check.manifest.timed_batch_size == LABELLING_BATCH
    texts = len(load_split(tiny_data.path, "validation"))

    def pairs(batch: int) -> int:  # every round times the same evenly spaced batches
        return ROUNDS * min(TIMED_BATCHES, math.ceil(texts / batch))

    assert check.manifest.speed.pairs == pairs(LABELLING_BATCH)
    smaller = precision_check_stage(store, teacher, tiny_data, graph, runtime, batch_size=4)
    assert not smaller.reused and smaller.key != check.key  # other batches, other evidence
    assert smaller.manifest.timed_batch_size == 4
    assert smaller.manifest.speed.pairs == pairs(4) > pairs(LABELLING_BATCH)


def test_bf16_pytorch_needs_both_its_gate_and_a_significant_speed_gain(
    tiny_config, tiny_data, teacher, store
):
    graph = teacher_onnx_stage(store, teacher, tiny_data, "onnx")
    runtime = resolve_runtime(with_teacher_precision(tiny_config, "bf16").teacher.training)
    check = precision_check_stage(store, teacher, tiny_data, graph, runtime)

    def judged(faster: bool, gate: LabellingGate):
        manifest = check.manifest.model_copy(update={"faster_than_graph": faster})
        return judged_precision(dataclasses.replace(check, manifest=manifest), gate, 2.0)

    assert judged(True, ANY).passed
    slow = judged(False, ANY)
    assert not slow.passed and "not significantly faster than the fp32 graph" in slow.reason
    assert "time ratio" in slow.reason
    assert not judged(True, IMPOSSIBLE_BF16).passed


def test_auto_passes_over_a_bf16_pytorch_its_gate_refuses(tiny_config, tiny_data, teacher, store):
    config = with_teacher_precision(tiny_config, "bf16")
    refuse_int8 = {"onnx-int8": IMPOSSIBLE_INT8, "onnx": ANY}
    labelling = choose_labelling(
        store, config, teacher, tiny_data, gates=refuse_int8, low_precision_gate=IMPOSSIBLE_BF16
    )
    assert labelling.runtime == "onnx"  # fp32 ONNX: the next of LOW_PRECISION_PREFERENCE
    torch_figures = next(c for c in labelling.record.candidates if c.runtime == "torch")
    assert not torch_figures.passed and torch_figures.reason.startswith("in bf16: refused")
    assert "refused: onnx-int8, torch" in labelling.record.reason


def test_an_fp32_teacher_is_the_reference_and_never_judged(tiny_config, tiny_data, teacher, store):
    config = with_teacher_precision(tiny_config, "fp32")
    refuse_graphs = {"onnx-int8": IMPOSSIBLE_INT8, "onnx": IMPOSSIBLE_INT8}
    labelling = choose_labelling(
        store, config, teacher, tiny_data, gates=refuse_graphs, low_precision_gate=IMPOSSIBLE_BF16
    )
    assert labelling.runtime == "torch"
    torch_figures = next(c for c in labelling.record.candidates if c.runtime == "torch")
    assert torch_figures.passed and torch_figures.reason == "the reference"


def test_auto_with_every_candidate_refused_labels_in_fp32_not_the_refused_bf16(
    tiny_config, tiny_data, teacher, store
):
    config = with_teacher_precision(tiny_config, "bf16")
    refuse_all = {"onnx-int8": IMPOSSIBLE_INT8, "onnx": IMPOSSIBLE_INT8}
    labelling = choose_labelling(
        store, config, teacher, tiny_data, gates=refuse_all, low_precision_gate=IMPOSSIBLE_BF16
    )
    assert labelling.runtime == "torch" and labelling.precision == "fp32"
    assert "none passed: PyTorch in fp32" in labelling.record.reason
    cache = logit_cache_stage(
        store, teacher, tiny_data, training=config.teacher.training, labelling=labelling
    )
    assert cache.manifest.precision == "fp32"


def bf16_cpu(monkeypatch) -> None:
    """A CPU where `precision: auto` resolves to bf16 (bf16 units, AVX-512 kernels)."""
    monkeypatch.setattr(devices, "fast_cpu_bf16", lambda: True)


def test_pytorch_asked_for_under_auto_precision_labels_in_fp32_on_a_bf16_cpu(
    monkeypatch, tiny_config, tiny_data, teacher, store
):
    bf16_cpu(monkeypatch)
    training = tiny_config.teacher.training.model_copy(
        update={"device": "cpu", "precision": "auto"}
    )
    assert resolve_runtime(training).precision == "bf16"  # what training runs in
    config = with_labelling(with_teacher_training(tiny_config, training), "torch")
    labelling = choose_labelling(store, config, teacher, tiny_data)
    # bf16 soft targets only on the evidence `auto` gathers; asked for PyTorch, the reference.
    assert labelling.precision == "fp32" and "in fp32, the reference" in labelling.record.reason
    cache = logit_cache_stage(store, teacher, tiny_data, training=training, labelling=labelling)
    assert cache.manifest.precision == "fp32"
    # The core's own chooser (PyTorch only) follows the same rule for `auto`.
    core = run_until_cache(
        with_labelling(with_teacher_training(tiny_config, training), "auto"), store
    )
    assert core.cache.manifest.precision == "fp32"


def test_a_precision_the_config_names_is_the_one_pytorch_labels_in(
    tiny_config, tiny_data, teacher, store
):
    training = tiny_config.teacher.training.model_copy(
        update={"device": "cpu", "precision": "bf16"}
    )
    config = with_labelling(with_teacher_training(tiny_config, training), "torch")
    labelling = choose_labelling(store, config, teacher, tiny_data)
    assert labelling.precision is None  # the teacher's own: bf16, as asked
    cache = logit_cache_stage(store, teacher, tiny_data, training=training, labelling=labelling)
    assert cache.manifest.precision == "bf16"
