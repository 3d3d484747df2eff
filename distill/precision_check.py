"""Whether the teacher labels in low precision as it does in fp32 (stage `teacher_precision`).

Where `training.precision: auto` resolves to bf16 (a CPU with bf16 units, `distill.devices`),
PyTorch labels the logit cache under bf16 autocast: 2.9x fp32 PyTorch and 1.6x fp32 ONNX
Runtime on the fine-tuned MPNet teacher (docs/benchmarks.md, labelling-avx512). bf16 changes
the function, as INT8 does, so `teacher.labelling: auto` judges it as it judges an INT8 graph:
on the teacher's validation logits in both precisions, computed here once per teacher and
precision and kept, so a later run decides from the same evidence without recomputing it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from distill.batching import sorted_batches
from distill.data import DataManifest, load_split
from distill.devices import Runtime
from distill.labelling import CandidateFigures, LabellingGate, TorchLabeller, parity_figures
from distill.models import load_classifier, pad_token_id
from distill.shards import label_batches_with
from distill.store import Artifact, StageManifest, run_stage, stage_key
from distill.teacher import TeacherManifest

STAGE = "teacher_precision"
VERSION = 1
BATCH = 32
REFERENCE_FILE = "fp32_validation_logits.npy"
LOGITS_FILE = "validation_logits.npy"


class PrecisionCheckManifest(StageManifest):
    device: str
    precision: str  # the low precision checked; the reference is fp32 on the same device
    teacher_sha256: str
    validation_texts: int
    reference_file: str  # fp32 PyTorch's validation logits (length-sorted batches' order) ...
    logits_file: str  # ... and the same rows' logits in `precision`


def precision_check_key(teacher: Artifact[TeacherManifest], runtime: Runtime) -> str:
    return stage_key(STAGE, VERSION, teacher.key, runtime.device_name, runtime.precision)


def build_check(
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    runtime: Runtime,
    folder: Path,
) -> PrecisionCheckManifest:
    model = load_classifier(teacher.path)
    validation = load_split(data.path, "validation")
    batches = sorted_batches([len(ids) for ids in validation["input_ids"]], BATCH)
    pad_id = pad_token_id(model.config)

    def logits_in(precision: Runtime) -> np.ndarray:
        labeller = TorchLabeller(model, precision)
        return label_batches_with(labeller, validation, batches, pad_id).logits

    reference, logits = logits_in(Runtime(runtime.device, "fp32")), logits_in(runtime)
    np.save(folder / REFERENCE_FILE, reference)
    np.save(folder / LOGITS_FILE, logits)
    return PrecisionCheckManifest(
        device=runtime.device_name,
        precision=runtime.precision,
        teacher_sha256=teacher.manifest.weights_sha256,
        validation_texts=len(reference),
        reference_file=REFERENCE_FILE,
        logits_file=LOGITS_FILE,
    )


def precision_check_stage(
    store: Path,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    runtime: Runtime,
) -> Artifact[PrecisionCheckManifest]:
    """The teacher's validation logits in fp32 and in `runtime`'s precision (`data`: the
    teacher's own data, which the teacher's key already covers)."""
    return run_stage(
        store,
        STAGE,
        precision_check_key(teacher, runtime),
        functools.partial(build_check, teacher, data, runtime),
        PrecisionCheckManifest,
    )


def judged_precision(
    check: Artifact[PrecisionCheckManifest], gate: LabellingGate, temperature: float
) -> CandidateFigures:
    """PyTorch in the checked precision against fp32 PyTorch, judged by `gate`; the reason says
    which precision was judged."""
    reference = np.load(check.file(check.manifest.reference_file))
    logits = np.load(check.file(check.manifest.logits_file))
    runtime = f"torch ({check.manifest.precision})"
    verdict = gate.judge(parity_figures(runtime, reference, logits, temperature))
    return verdict.model_copy(
        update={"runtime": "torch", "reason": f"in {check.manifest.precision}: {verdict.reason}"}
    )
