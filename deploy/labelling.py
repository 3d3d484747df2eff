"""`teacher.labelling`: which runtime labels the logit cache (the chooser `deploy.chain` wires).

`torch` labels with PyTorch. `onnx` / `onnx-int8` build (or reuse) the teacher's graph
(`deploy/teacher_onnx.py`), judge its validation logits against PyTorch's with the gates of
`distill/labelling.py`, and label with it when it passes; a refused explicit choice raises
`LabellingRefused` with the measured figures. `auto` judges both graphs and takes the first of
`PREFERENCE` (fastest first, as measured by bench/labelling.py) that passes; a refused runtime
falls back to the next, its figures recorded.
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
from distill.config import ConfigError, PipelineConfig
from distill.data import DataManifest
from distill.devices import resolve_runtime
from distill.labelling import (
    GATES,
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
) -> Labelling:
    """The runtime `config.teacher.labelling` asks for, judged by `gates` (a
    `distill.chain.LabellingChooser` once the gates are bound)."""
    requested, temperature = config.teacher.labelling, config.student.temperature
    if requested == TORCH_RUNTIME:
        return torch_only(requested, temperature)
    if requested == "auto" and resolve_runtime(config.teacher.training).device.type != "cpu":
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
    passed = {TORCH_RUNTIME} | {name for name, verdict in figures.items() if verdict.passed}
    chosen = next(name for name in PREFERENCE if name in passed)
    refused = [n for n in names if not figures[n].passed]
    reason = f"the first of {', '.join(PREFERENCE)} that passes its gate" + (
        f"; refused: {', '.join(refused)}" if refused else ""
    )
    record = LabellingRecord(
        requested=requested,
        runtime=chosen,
        reason=reason,
        temperature=temperature,
        validation_texts=texts,
        candidates=[
            CandidateFigures(runtime=TORCH_RUNTIME, passed=True, reason="the reference"),
            *figures.values(),
        ],
    )
    if chosen == TORCH_RUNTIME:
        return Labelling(record=record)
    return labelling_of(graphs[chosen], record)
