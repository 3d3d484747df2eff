"""`teacher.labelling`: which runtime labels the logit cache (the chooser `deploy.chain` wires).

`torch` labels with PyTorch. `onnx` / `onnx-int8` build (or reuse) the teacher's graph
(`deploy/teacher_onnx.py`), judge its validation logits against PyTorch's with the gates of
`distill/labelling.py`, and label with it when it passes; a refused explicit choice raises
`LabellingRefused` with the measured figures. `auto` judges both graphs and takes the first of
`PREFERENCE` (fastest first, as measured by bench/labelling.py) that passes; a refused runtime
falls back to the next, its figures recorded. Where the teacher's precision resolves to bf16
(a CPU with bf16 units), PyTorch labels in bf16, which can beat the fp32 graph there: `auto`
then follows `LOW_PRECISION_PREFERENCE` and takes bf16 PyTorch only when it passes the INT8
gate's bounds and labelled significantly faster than the fp32 graph
(`deploy/teacher_precision.py`, evidence built once per teacher). Without that evidence
PyTorch labels a CPU cache in fp32, the reference: when `auto` refused bf16 and every graph,
and for an explicit `torch` under `precision: auto` (`distill.labelling.torch_precision`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from deploy.teacher_onnx import (
    TeacherOnnxManifest,
    open_labeller,
    teacher_onnx_stage,
)
from deploy.teacher_precision import judged_precision, precision_check_stage
from distill.config import ConfigError, PipelineConfig
from distill.data import DataManifest
from distill.devices import resolve_runtime
from distill.labelling import (
    GATES,
    INT8_GATE,
    TORCH_RUNTIME,
    CandidateFigures,
    Labelling,
    LabellingGate,
    LabellingRecord,
    parity_figures,
    torch_only,
)
from distill.store import Artifact
from distill.teacher import TeacherManifest

# `auto`: the first of these that passes its gate. The order is the runtimes' speed on CPU,
# measured by bench/labelling.py (docs/benchmarks.md, "Teacher labelling"; 2 threads, batch 32:
# INT8 2.4-3.1x PyTorch, fp32 ONNX 1.5-2.3x, for MPNet and MiniLM), not timed again in each run:
# a choice timed per run could flip between runtimes within noise of each other and build a
# second cache of the same rows.
PREFERENCE = ("onnx-int8", "onnx", TORCH_RUNTIME)
# Where PyTorch runs in bf16 on the CPU (auto precision there): measured on an AMD EPYC with
# AVX512-BF16, fine-tuned MPNet, validation split, 2 threads (docs/benchmarks.md,
# labelling-avx512): INT8 126 texts/s, PyTorch bf16 96, fp32 ONNX 61, fp32 PyTorch 33 (on
# MiniLM fp32 ONNX stayed ahead of bf16: hence bf16 is also timed against the graph).
LOW_PRECISION_PREFERENCE = ("onnx-int8", TORCH_RUNTIME, "onnx")


# fp32 PyTorch: what every other runtime is judged against.
REFERENCE = CandidateFigures(runtime=TORCH_RUNTIME, passed=True, reason="the reference")


class LabellingRefused(ConfigError):
    """An explicitly requested labelling runtime failed its gate; the message says the figures."""


def judged(
    graph: Artifact[TeacherOnnxManifest], gate: LabellingGate, temperature: float
) -> CandidateFigures:
    """A graph's validation logits against PyTorch's, judged by `gate`."""
    reference = np.load(graph.file(graph.manifest.reference_file))
    logits = np.load(graph.file(graph.manifest.logits_file))
    return gate.judge(parity_figures(graph.manifest.runtime, reference, logits, temperature))


def labelling_of(graph: Artifact[TeacherOnnxManifest], record: LabellingRecord) -> Labelling:
    path = str(graph.file(graph.manifest.file))
    return Labelling(
        runtime=graph.manifest.runtime,
        graph_key=graph.key,
        open=functools.partial(open_labeller, path),
        record=record,
        release=open_labeller.cache_clear,
    )


def choose_labelling(
    store: Path,
    config: PipelineConfig,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    gates: Mapping[str, LabellingGate] = GATES,
    low_precision_gate: LabellingGate = INT8_GATE,
) -> Labelling:
    """The runtime `config.teacher.labelling` asks for, judged by `gates` (a
    `distill.chain.LabellingChooser` once the gates are bound); PyTorch in a low precision, a
    candidate of `auto` only, by `low_precision_gate`."""
    requested, temperature = config.teacher.labelling, config.student.temperature
    if requested == TORCH_RUNTIME:
        return torch_only(requested, temperature, config.teacher.training)
    runtime = resolve_runtime(config.teacher.training, "teacher.training")
    if requested == "auto" and runtime.device.type != "cpu":
        record = LabellingRecord(
            requested=requested,
            runtime=TORCH_RUNTIME,
            reason="the teacher runs on an accelerator; ONNX labelling runs on the CPU",
            temperature=temperature,
        )
        return Labelling(record=record)
    names = list(gates) if requested == "auto" else [requested]
    graphs = {name: teacher_onnx_stage(store, teacher, data, name) for name in names}
    figures = {name: judged(graph, gates[name], temperature) for name, graph in graphs.items()}
    texts = next(iter(graphs.values())).manifest.validation_texts
    if requested != "auto":
        verdict = figures[requested]
        if not verdict.passed:
            raise LabellingRefused(f"config key 'teacher.labelling': {requested} {verdict.reason}")
        record = LabellingRecord(
            requested=requested,
            runtime=requested,
            reason=f"asked for; {verdict.reason}",
            temperature=temperature,
            validation_texts=texts,
            candidates=[verdict],
        )
        return labelling_of(graphs[requested], record)
    low_precision = runtime.precision != "fp32"  # PyTorch would label in bf16
    preference = LOW_PRECISION_PREFERENCE if low_precision else PREFERENCE
    candidates = dict(figures)
    chosen = TORCH_RUNTIME  # nothing passed (broken graphs): the reference, fp32 PyTorch
    for name in (n for n in preference if n in candidates or n == TORCH_RUNTIME):
        if name == TORCH_RUNTIME:  # judged only when reached; fp32 is the reference
            candidates[name] = REFERENCE
            if low_precision:
                graph = graphs.get("onnx") or teacher_onnx_stage(store, teacher, data, "onnx")
                check = precision_check_stage(store, teacher, data, graph, runtime)
                candidates[name] = judged_precision(check, low_precision_gate, temperature)
        if candidates[name].passed:
            chosen = name
            break
    refused = [name for name in preference if name in candidates and not candidates[name].passed]
    reason = f"the first of {', '.join(preference)} that passes its gate" + (
        f"; refused: {', '.join(refused)}" if refused else ""
    )
    # Never a low precision its own check refused.
    reference_only = chosen == TORCH_RUNTIME and not candidates[TORCH_RUNTIME].passed
    if reference_only:
        reason += "; none passed: PyTorch in fp32, the reference"
    record = LabellingRecord(
        requested=requested,
        runtime=chosen,
        reason=reason,
        temperature=temperature,
        validation_texts=texts,
        candidates=list(candidates.values()),
    )
    if chosen == TORCH_RUNTIME:
        return Labelling(record=record, precision="fp32" if reference_only else None)
    return labelling_of(graphs[chosen], record)
