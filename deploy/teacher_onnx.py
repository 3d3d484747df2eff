"""Teacher ONNX stage: the fine-tuned teacher as an ONNX graph that labels the logit cache.

One stage folder per runtime (`teacher_onnx/<key>`), keyed on the teacher stage, the runtime
and VERSION, so the graph is exported once and every later cache reuses it:
- `onnx`: the teacher exported fp32 with two outputs, the logits and the [CLS] state after the
  embeddings and after every layer (what the cache holds). onnxruntime's BERT fusions replace
  the exported graph only when the fused graph's validation logits stay within the fp32 gate's
  bound of PyTorch's and it labels significantly faster (paired batch times, interleaved:
  `deploy.latency.paired_speed`), so a busy machine cannot flip the choice between runs.
- `onnx-int8`: the unfused fp32 graph of the `onnx` folder quantized dynamically (signed
  per-channel 7-bit weights, as the student's INT8 candidates: `deploy/quantize.py`).

Each folder also holds the graph's validation logits and PyTorch's, the parity evidence the
labelling gates (`distill/labelling.py`) decide on at any distillation temperature.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoConfig

from deploy.export import export_onnx
from deploy.latency import machine_load, paired_speed
from deploy.onnx_eval import open_session
from deploy.optimize import MIN_GAIN, optimize_bert
from deploy.quantize import quantize_int8
from distill.batching import collate, sorted_batches
from distill.data import DataManifest, load_split
from distill.labelling import ONNX_GATE, BatchLabeller, TorchLabeller
from distill.memory import in_child_process
from distill.models import load_classifier, pad_token_id
from distill.shards import label_batches_with
from distill.store import Artifact, StageManifest, file_sha256, run_stage, stage_key
from distill.teacher import TeacherManifest

STAGE = "teacher_onnx"
VERSION = 2  # bump when the graph or the evidence written for the same teacher changes
# (2: the fused graph is kept only when significantly faster, from paired batch times)
ONNX_FILE = "teacher.onnx"
EXPORTED_FILE = "teacher.exported.onnx"  # the unfused graph, kept for INT8
REFERENCE_FILE = "torch_validation_logits.npy"
LOGITS_FILE = "validation_logits.npy"
OPSET = 18
PARITY_BATCH = 32
# A teacher this large is exported and quantized in a child process: the exporter's transient
# memory (MPNet, 110M parameters: 0.45 -> 4.2 GiB in a fresh process) then goes back to the
# system instead of staying in the run's heap through labelling. A smaller teacher (MiniLM, 23M)
# is built here, where starting a process would cost more time than the memory it returns.
APART_FROM_PARAMS = 50_000_000
Runtime = Literal["onnx", "onnx-int8"]


class TeacherOnnxManifest(StageManifest):
    runtime: str
    file: str
    sha256: str
    bytes: int
    opset: int
    teacher_sha256: str
    fused: bool  # onnxruntime's BERT fusions kept (fp32 only)
    fusion_reason: str
    validation_texts: int
    reference_file: str  # PyTorch's validation logits (in the batches' order) ...
    logits_file: str  # ... and this graph's, same rows and padding
    max_abs_logit_diff: float
    agreement: float


class OnnxLabeller:
    """A teacher graph as a `distill.labelling.BatchLabeller`."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        logits, states = self.session.run(["logits", "cls_states"], feeds)
        return logits.astype(np.float32, copy=False), states


@functools.lru_cache(maxsize=2)
def open_labeller(path: str, threads: int = 0) -> BatchLabeller:
    """One session per worker process and graph (picklable as `functools.partial`)."""
    return OnnxLabeller(open_session(Path(path), threads))


class TargetsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> (logits, [CLS] states of the embeddings and every layer)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        return out.logits, torch.stack([h[:, 0] for h in out.hidden_states], 1)


def export_teacher(model: torch.nn.Module, path: Path, max_length: int) -> None:
    """The teacher with the cache's two outputs: its logits and its [CLS] states."""
    outputs = ("logits", "cls_states")
    export_onnx(model, path, OPSET, max_length, wrapper=TargetsOnly(model), output_names=outputs)


def teacher_onnx_key(teacher: Artifact[TeacherManifest], runtime: Runtime) -> str:
    return stage_key(STAGE, VERSION, teacher.key, runtime)


def teacher_onnx_stage(
    store: Path,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    runtime: Runtime,
) -> Artifact[TeacherOnnxManifest]:
    """The teacher's graph for `runtime`, built once per teacher (INT8 from the fp32 folder).

    `data` gives the validation split of the parity evidence; it is the teacher's own data, so
    the teacher's key already covers it."""
    if runtime == "onnx":
        build = functools.partial(build_fp32, teacher, data)
    else:
        fp32 = teacher_onnx_stage(store, teacher, data, "onnx")
        build = functools.partial(build_int8, teacher, data, fp32)
    if teacher.manifest.params >= APART_FROM_PARAMS:
        build = functools.partial(built_apart, build)
    return run_stage(store, STAGE, teacher_onnx_key(teacher, runtime), build, TeacherOnnxManifest)


def built_apart(build: Callable[[Path], TeacherOnnxManifest], folder: Path) -> TeacherOnnxManifest:
    """`build(folder)` in a child process (`distill.memory.in_child_process`)."""
    return in_child_process(functools.partial(build, folder))


def split_batches(split, batch_size: int) -> list[np.ndarray]:
    """A tokenized split's length-sorted batches of `batch_size` rows (row indices)."""
    return sorted_batches([len(ids) for ids in split["input_ids"]], batch_size)


def validation_batches(data: Artifact[DataManifest]):
    """The validation split and its length-sorted batches of PARITY_BATCH rows (the parity
    figures' batches; the cache labels in larger ones)."""
    validation = load_split(data.path, "validation")
    return validation, split_batches(validation, PARITY_BATCH)


def graph_logits(path: Path, data: Artifact[DataManifest], pad_id: int) -> np.ndarray:
    validation, batches = validation_batches(data)
    labeller = OnnxLabeller(open_session(path))
    return label_batches_with(labeller, validation, batches, pad_id).logits


Feed = tuple[np.ndarray, np.ndarray]  # one padded batch: input_ids, attention_mask


def sample_feeds(split, batches, pad_id: int, count: int) -> list[Feed]:
    """`count` of the length-sorted `batches`, evenly spaced (short and long texts alike)."""
    picked = [batches[i * len(batches) // count] for i in range(min(count, len(batches)))]
    collated = (collate(split, indices, pad_id) for indices in picked)
    return [(b["input_ids"].numpy(), b["attention_mask"].numpy()) for b in collated]


def interleaved(
    labellers: Mapping[str, BatchLabeller], feeds: Sequence[Feed], rounds: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]]]:
    """Seconds each labeller spent on each batch over `rounds` passes of `feeds` (the i-th of
    every labeller measured side by side), and its logits per feed (of the last round).
    Interleaved batch by batch, the order rotating, so a slow moment of a shared machine hits
    every labeller alike; one warm-up batch each first."""
    names = list(labellers)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    logits: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for labeller in labellers.values():
        labeller(*feeds[0])
    for _ in range(rounds):
        logits = {name: [] for name in names}
        for number, (ids, mask) in enumerate(feeds):
            turn = number % len(names)
            for name in names[turn:] + names[:turn]:
                started = time.perf_counter()
                logits[name].append(labellers[name](ids, mask)[0])
                seconds[name].append(time.perf_counter() - started)
    return seconds, logits


def build_fp32(
    teacher: Artifact[TeacherManifest], data: Artifact[DataManifest], folder: Path
) -> TeacherOnnxManifest:
    model = load_classifier(teacher.path)
    model.set_attn_implementation("eager")  # plain MatMul/Softmax: what the fusions match
    pad_id = pad_token_id(model.config)
    export_teacher(model, folder / EXPORTED_FILE, data.manifest.max_length)
    validation, batches = validation_batches(data)
    reference = label_batches_with(TorchLabeller(model), validation, batches, pad_id).logits
    config = model.config
    del model  # from here on the graphs are scored: MPNet's weights alone are 438 MiB
    exported = graph_logits(folder / EXPORTED_FILE, data, pad_id)
    fused, reason = _try_fusion(config, folder, data, pad_id, reference, batches, validation)
    graph = folder / (ONNX_FILE if fused else EXPORTED_FILE)
    logits = graph_logits(graph, data, pad_id) if fused else exported
    return _manifest("onnx", folder, teacher, fused, reason, reference, logits, graph)


def _try_fusion(config, folder: Path, data, pad_id, reference, batches, validation):
    """Fuse into `folder/ONNX_FILE`; keep it only when in parity with PyTorch and faster."""
    target = folder / ONNX_FILE
    try:
        fused_ops = optimize_bert(
            folder / EXPORTED_FILE,
            target,
            config.num_attention_heads,
            config.hidden_size,
        )
    except Exception as err:  # an architecture the optimizer cannot read: keep the export
        target.unlink(missing_ok=True)
        return False, f"fusion failed ({type(err).__name__}: {err})"
    if not fused_ops:
        target.unlink(missing_ok=True)
        return False, "no operator fused"
    diff = float(np.abs(graph_logits(target, data, pad_id) - reference).max())
    if not diff <= ONNX_GATE.max_abs_logit_diff:
        target.unlink()
        return False, f"fused logits differ from PyTorch by {diff:.3g}: not in parity"
    labellers = {
        "exported": OnnxLabeller(open_session(folder / EXPORTED_FILE)),
        "fused": OnnxLabeller(open_session(target)),
    }
    seconds, _ = interleaved(labellers, sample_feeds(validation, batches, pad_id, 4), rounds=3)
    speed = paired_speed(seconds["fused"], seconds["exported"], load=machine_load())
    if not speed.faster_by(MIN_GAIN):
        target.unlink()
        return False, (
            f"fused {fused_ops}, not significantly faster by {MIN_GAIN:.0%}: {speed.summary()}"
        )
    return True, f"fused {fused_ops}: {speed.summary()}, max |diff| {diff:.3g}"


def build_int8(
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
    fp32: Artifact[TeacherOnnxManifest],
    folder: Path,
) -> TeacherOnnxManifest:
    """Dynamic INT8 of the unfused fp32 graph; the fp32 folder's PyTorch logits are the
    reference (copied, so this folder holds its own evidence)."""
    quantize_int8(fp32.file(EXPORTED_FILE), folder / ONNX_FILE, per_channel=True)
    reference = np.load(fp32.file(fp32.manifest.reference_file))
    pad_id = pad_token_id(AutoConfig.from_pretrained(teacher.path))
    logits = graph_logits(folder / ONNX_FILE, data, pad_id)
    reason = "INT8 from the unfused fp32 graph"
    return _manifest(
        "onnx-int8", folder, teacher, False, reason, reference, logits, folder / ONNX_FILE
    )


def _manifest(
    runtime: str,
    folder: Path,
    teacher: Artifact[TeacherManifest],
    fused: bool,
    reason: str,
    reference: np.ndarray,
    logits: np.ndarray,
    graph: Path,
) -> TeacherOnnxManifest:
    np.save(folder / REFERENCE_FILE, reference)
    np.save(folder / LOGITS_FILE, logits)
    return TeacherOnnxManifest(
        runtime=runtime,
        file=graph.name,
        sha256=file_sha256(graph),
        bytes=graph.stat().st_size,
        opset=OPSET,
        teacher_sha256=teacher.manifest.weights_sha256,
        fused=fused,
        fusion_reason=reason,
        validation_texts=len(reference),
        reference_file=REFERENCE_FILE,
        logits_file=LOGITS_FILE,
        max_abs_logit_diff=float(np.abs(reference - logits).max()),
        agreement=float(np.mean(reference.argmax(-1) == logits.argmax(-1))),
    )
