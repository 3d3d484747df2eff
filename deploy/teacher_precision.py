"""Whether PyTorch in bf16 labels the cache instead of the fp32 graph (stage `teacher_precision`).

Where `training.precision: auto` resolves to bf16 (a CPU with bf16 units, `distill.devices`),
PyTorch labels the logit cache under bf16 autocast. On the fine-tuned MPNet that was 1.55x the
fp32 ONNX graph's speed at 99.91% label agreement; on MiniLM fp32 ONNX stayed ahead
(docs/benchmarks.md, labelling-avx512). So `teacher.labelling: auto` takes bf16 PyTorch only
on this stage's evidence, built once per teacher, graph and precision and then read by every
run (the same evidence, the same choice, the same cache):
- its validation logits against fp32 PyTorch's (the graph stage's reference, same batches),
  for the INT8 gate's bounds: bf16 changes the function, as INT8 does;
- its time per batch against the fp32 graph's, batch beside batch on the same validation
  batches (`deploy.latency.paired_speed`): it must be significantly faster by `MIN_GAIN`.
  The batches have the cache's size (`LABELLING_BATCH`) and are timed in this process, under
  the allocator policy the stages run with: at 32 rows the check once found bf16 PyTorch
  0.70x the graph's time where labelling in batches of 128 then ran at half the graph's speed
  (a 2 MiB mmap threshold turns bf16's large transient tensors into page faults; ONNX
  Runtime's own arena does not feel it; docs/benchmarks.md, "Reading the first run").
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np

from deploy.latency import SpeedComparison, machine_load, paired_speed
from deploy.onnx_eval import open_session
from deploy.optimize import MIN_GAIN
from deploy.teacher_onnx import (
    OnnxLabeller,
    TeacherOnnxManifest,
    interleaved,
    sample_feeds,
    split_batches,
    validation_batches,
)
from distill.data import DataManifest
from distill.devices import Runtime
from distill.labelling import CandidateFigures, LabellingGate, TorchLabeller, parity_figures
from distill.logit_cache import LABELLING_BATCH
from distill.models import load_classifier, pad_token_id
from distill.shards import label_batches_with
from distill.store import Artifact, StageManifest, run_stage, stage_key
from distill.teacher import TeacherManifest

STAGE = "teacher_precision"
VERSION = 2  # 2: timed at the cache's batch size (1: at the parity batches' 32)
REFERENCE_FILE = "fp32_validation_logits.npy"
LOGITS_FILE = "validation_logits.npy"
TIMED_BATCHES, ROUNDS = 4, 3  # 12 paired batches of LABELLING_BATCH rows: ~1 minute for MPNet


class PrecisionCheckManifest(StageManifest):
    device: str
    precision: str  # the precision checked; the reference is fp32 PyTorch
    teacher_sha256: str
    graph_key: str  # the fp32 teacher graph it was timed against
    validation_texts: int
    reference_file: str  # fp32 PyTorch's validation logits (the graph stage's batches' order)
    logits_file: str  # ... and the same rows' logits in `precision`
    speed: SpeedComparison  # PyTorch in `precision` against the fp32 graph, per batch
    timed_batch_size: int  # rows per timed batch: the cache's
    faster_than_graph: bool  # significantly faster by MIN_GAIN


def precision_check_key(
    teacher: Artifact[TeacherManifest],
    graph: Artifact[TeacherOnnxManifest],
    runtime: Runtime,
    batch_size: int,
) -> str:
    return stage_key(
        STAGE, VERSION, teacher.key, graph.key, runtime.device_name, runtime.precision, batch_size
    )


def build_check(
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    graph: Artifact[TeacherOnnxManifest],
    runtime: Runtime,
    batch_size: int,
    folder: Path,
) -> PrecisionCheckManifest:
    model = load_classifier(teacher.path)
    pad_id = pad_token_id(model.config)
    validation, batches = validation_batches(data)
    labeller = TorchLabeller(model, runtime)
    logits = label_batches_with(labeller, validation, batches, pad_id).logits
    reference = np.load(graph.file(graph.manifest.reference_file))
    labellers = {
        "torch": labeller,
        "graph": OnnxLabeller(open_session(graph.file(graph.manifest.file))),
    }
    timed = split_batches(validation, batch_size)
    feeds = sample_feeds(validation, timed, pad_id, TIMED_BATCHES)
    seconds, _ = interleaved(labellers, feeds, rounds=ROUNDS)
    speed = paired_speed(seconds["torch"], seconds["graph"], load=machine_load())
    shutil.copyfile(graph.file(graph.manifest.reference_file), folder / REFERENCE_FILE)
    np.save(folder / LOGITS_FILE, logits)
    return PrecisionCheckManifest(
        device=runtime.device_name,
        precision=runtime.precision,
        teacher_sha256=teacher.manifest.weights_sha256,
        graph_key=graph.key,
        validation_texts=len(reference),
        reference_file=REFERENCE_FILE,
        logits_file=LOGITS_FILE,
        speed=speed,
        timed_batch_size=batch_size,
        faster_than_graph=speed.faster_by(MIN_GAIN),
    )


def precision_check_stage(
    store: Path,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    graph: Artifact[TeacherOnnxManifest],
    runtime: Runtime,
    batch_size: int = LABELLING_BATCH,
) -> Artifact[PrecisionCheckManifest]:
    """PyTorch in `runtime`'s precision against fp32 PyTorch and against the fp32 `graph`
    (`data`: the teacher's own data, which the teacher's key already covers), timed in batches
    of `batch_size` rows (the cache's)."""
    return run_stage(
        store,
        STAGE,
        precision_check_key(teacher, graph, runtime, batch_size),
        functools.partial(build_check, teacher, data, graph, runtime, batch_size),
        PrecisionCheckManifest,
    )


def judged_precision(
    check: Artifact[PrecisionCheckManifest], gate: LabellingGate, temperature: float
) -> CandidateFigures:
    """PyTorch in the checked precision: it passes when `gate` passes its logits against fp32
    PyTorch's and it labels significantly faster than the fp32 graph."""
    manifest = check.manifest
    reference = np.load(check.file(manifest.reference_file))
    logits = np.load(check.file(manifest.logits_file))
    verdict = gate.judge(parity_figures("torch", reference, logits, temperature))
    reason = verdict.reason
    if not manifest.faster_than_graph:
        slower = f"not significantly faster than the fp32 graph by {MIN_GAIN:.0%}"
        reason = f"refused: {slower}: {manifest.speed.summary()}; {verdict.reason}"
    reason = f"in {manifest.precision}: {reason}"
    passed = verdict.passed and manifest.faster_than_graph
    return verdict.model_copy(update={"passed": passed, "reason": reason})
