"""`teacher.labelling`: which runtime labels the logit cache (the chooser `deploy.chain` wires).

`torch` labels with PyTorch. `onnx` / `onnx-int8` build (or reuse) the teacher's graph
(`deploy/teacher_onnx.py`), judge its validation logits against PyTorch's with the gates of
`distill/labelling.py`, and label with it when it passes; a refused explicit choice raises
`LabellingRefused` with the measured figures. `auto` judges both graphs, measures the throughput
of PyTorch and of every graph that passes on a small validation sample (interleaved), and picks
the fastest; a runtime that was refused falls back silently, its figures recorded.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from deploy.onnx_eval import open_session
from deploy.teacher_onnx import (
    OnnxLabeller,
    TeacherOnnxManifest,
    measure_throughput,
    open_labeller,
    sample_feeds,
    teacher_onnx_stage,
    validation_batches,
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
    TorchLabeller,
    parity_figures,
    torch_only,
)
from distill.models import load_classifier, pad_token_id
from distill.store import Artifact
from distill.teacher import TeacherManifest

SAMPLE_BATCHES = 3  # validation batches (of 32) per runtime and round in `auto`'s measurement
ROUNDS = 3


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
    )


def choose_labelling(
    store: Path,
    config: PipelineConfig,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    gates: Mapping[str, LabellingGate] = GATES,
    sample_batches: int = SAMPLE_BATCHES,
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
    passing = [name for name in names if figures[name].passed]
    speeds, sample = _throughput(teacher, data, {n: graphs[n] for n in passing}, sample_batches)
    fastest = max(speeds, key=speeds.__getitem__)
    candidates = [
        CandidateFigures(
            runtime=TORCH_RUNTIME,
            texts_per_second=speeds[TORCH_RUNTIME],
            passed=True,
            reason="the reference",
        ),
        *(f.model_copy(update={"texts_per_second": speeds.get(n)}) for n, f in figures.items()),
    ]
    refused = [n for n in names if not figures[n].passed]
    reason = f"fastest that passes its gate ({speeds[fastest]:.1f} texts/s)" + (
        f"; refused: {', '.join(refused)}" if refused else ""
    )
    record = LabellingRecord(
        requested=requested,
        runtime=fastest,
        reason=reason,
        temperature=temperature,
        validation_texts=texts,
        throughput_texts=sample,
        candidates=candidates,
    )
    if fastest == TORCH_RUNTIME:
        return Labelling(record=record)
    return labelling_of(graphs[fastest], record)


def _throughput(
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    graphs: Mapping[str, Artifact[TeacherOnnxManifest]],
    sample_batches: int,
) -> tuple[dict[str, float], int]:
    """Texts/s of PyTorch and each graph on the same validation batches, interleaved."""
    model = load_classifier(teacher.path)
    validation, batches = validation_batches(data)
    feeds = sample_feeds(validation, batches, pad_token_id(model.config), sample_batches)
    labellers = {TORCH_RUNTIME: TorchLabeller(model)} | {
        name: OnnxLabeller(open_session(graph.file(graph.manifest.file)))
        for name, graph in graphs.items()
    }
    return measure_throughput(labellers, feeds, ROUNDS), sum(len(ids) for ids, _ in feeds)
