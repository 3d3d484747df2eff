"""Quantize stage: INT8 candidates behind an accuracy gate, with fp32 as the last resort.

Candidates, in order of preference: static INT8 (QDQ, calibrated on a seeded sample of the
train split), dynamic INT8 per-channel, and dynamic INT8 of the MatMul weights only (the
embedding lookup and the pooler/classifier stay fp32). Each is scored on the test split against
the fp32 graph and timed at batch 1 on one thread beside it. The first candidate that keeps
accuracy within `quantize.max_accuracy_drop`, agrees with fp32 on at least `quantize.min_agreement`
of the labels and is not slower than fp32 ships; when none does, fp32 ships. Every candidate's
numbers and the reason it was passed over go into the manifest.

Before that, onnxruntime's BERT fusions may replace the fp32 graph (deploy/optimize.py).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from deploy.export import ExportManifest
from deploy.latency import Timing, batch1_feeds, compare_onnx_latency
from deploy.onnx_eval import onnx_logits, open_session
from deploy.optimize import try_optimize
from deploy.vocab_trim import tokenized_split
from distill.config import QuantizeConfig
from distill.data import DataManifest, load_split
from distill.metrics import accuracy
from distill.padding import pad
from distill.store import Artifact, StageManifest, file_sha256, run_stage, stage_key

INT8_FILE = "model.int8.onnx"
FP32_FILE = "model.fp32.onnx"
TOKENIZER_FILE = "tokenizer.json"
CALIBRATION_BATCH = 32
# Float tolerance for comparing measured shares with thresholds (1 of 1000 texts is 1e-3).
EPSILON = 1e-9
VERSION = 1  # bump when the shipped model changes for the same settings and export


class QuantizeManifest(StageManifest):
    file: str
    sha256: str
    bytes: int
    method: str  # "static", "dynamic", "dynamic_matmul_only" or "fp32"
    weight_type: str
    per_channel: bool
    quant_format: str | None
    test_accuracy: float
    fp32_test_accuracy: float
    accuracy_drop: float
    label_agreement_with_fp32: float
    p50_ms: float
    fp32_p50_ms: float
    fp32_bytes: int
    latency_samples: int
    gate: dict[str, Any]
    candidates: dict[str, dict[str, Any]]
    # Candidate name -> its file in the folder, when `quantize.keep_candidates` is on.
    candidate_files: dict[str, str]
    calibration: dict[str, Any]
    optimization: dict[str, Any] | None
    # The tokenizer the shipped graph's input ids come from (trimmed or not): bundle this.
    tokenizer: str
    tokenizer_sha256: str


@dataclass(frozen=True)
class Measured:
    """One model's numbers on the test split."""

    name: str
    test_accuracy: float
    agreement: float  # share of test texts where its label equals the fp32 graph's label
    p50_ms: float  # batch 1, one thread
    p95_ms: float
    bytes: int


# --- the gate: pure decisions on measured numbers -----------------------------------------


def rejection(
    candidate: Measured,
    fp32: Measured,
    max_accuracy_drop: float,
    min_agreement: float,
    reject_slower: bool = True,
) -> str | None:
    """Why `candidate` may not ship instead of `fp32`, or None when it may."""
    drop = fp32.test_accuracy - candidate.test_accuracy
    if drop > max_accuracy_drop + EPSILON:
        return f"accuracy drop {drop:.4f} > max_accuracy_drop {max_accuracy_drop:g}"
    if candidate.agreement < min_agreement - EPSILON:
        return (
            f"label agreement with fp32 {candidate.agreement:.4f} < min_agreement {min_agreement:g}"
        )
    if reject_slower and candidate.p50_ms > fp32.p50_ms:
        return f"slower than fp32: p50 {candidate.p50_ms:.3f} ms > {fp32.p50_ms:.3f} ms"
    return None


def choose(
    candidates: Sequence[Measured],
    fp32: Measured,
    max_accuracy_drop: float,
    min_agreement: float,
    reject_slower: bool = True,
) -> tuple[str, dict[str, str]]:
    """The first candidate (in order) that passes the gate, else "fp32"; and why each other
    candidate was not chosen."""
    winner = fp32.name
    reasons: dict[str, str] = {}
    for candidate in candidates:
        if winner != fp32.name:
            reasons[candidate.name] = f"not needed: '{winner}' passed the gate first"
            continue
        reason = rejection(candidate, fp32, max_accuracy_drop, min_agreement, reject_slower)
        if reason is None:
            winner = candidate.name
        else:
            reasons[candidate.name] = reason
    return winner, reasons


# --- building the candidates ---------------------------------------------------------------


class BatchReader(CalibrationDataReader):
    """Feeds prepared calibration batches to `quantize_static`, once."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def calibration_batches(
    split: Mapping[str, Sequence], samples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """A seeded sample of rows, sorted by length and padded per batch (padding is masked)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(split["input_ids"]), min(samples, len(split["input_ids"])), False)
    rows = sorted(rows.tolist(), key=lambda row: len(split["input_ids"][row]))
    batches = []
    for start in range(0, len(rows), CALIBRATION_BATCH):
        chosen = rows[start : start + CALIBRATION_BATCH]
        batches.append(
            {
                "input_ids": pad([split["input_ids"][row] for row in chosen]),
                "attention_mask": pad([split["attention_mask"][row] for row in chosen]),
            }
        )
    return batches


@contextlib.contextmanager
def quiet_root_logger(level: int = logging.ERROR) -> Iterator[None]:
    """onnxruntime's quantization tools log chatter through the root logger: raise its level for
    the duration of the call only, then restore it (never mute the process for good)."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


def prepare(source: Path, target: Path) -> None:
    # Symbolic shape inference fails on BERT graphs; ONNX shape inference is enough here.
    with quiet_root_logger():
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


def quantize_int8(source: Path, target: Path, per_channel: bool) -> None:
    """Pre-process `source` and quantize it with `quantize_dynamic_all`."""
    prepared = target.with_name("prepared.onnx")
    prepare(source, prepared)
    quantize_dynamic_all(prepared, target, per_channel)
    prepared.unlink()


def quantize_dynamic_all(prepared: Path, target: Path, per_channel: bool) -> None:
    """Dynamic INT8 of every op it supports: MatMul weights and the embedding lookup."""
    quantize_dynamic(
        str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=per_channel
    )


def quantize_dynamic_matmul(prepared: Path, target: Path, per_channel: bool) -> None:
    """Dynamic INT8 of the MatMul weights only: the embedding Gather (whose one per-tensor scale
    spans every word's vector) and the pooler/classifier Gemms stay fp32."""
    quantize_dynamic(
        str(prepared),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=["MatMul"],
    )


def quantize_static_int8(
    prepared: Path, target: Path, batches: Sequence[dict[str, np.ndarray]]
) -> None:
    """Static INT8, QDQ format: weights of MatMuls and the embedding lookup, activations with
    ranges calibrated (min/max) on `batches`.

    Measured on the fine-tuned 6-layer MiniLM teacher (movie reviews, this CPU): quantizing every
    op the QDQ quantizer knows (LayerNorm, Where, Softmax ...) cost 18 accuracy points, and
    per-channel weights ran 3x slower than fp32, so: per-tensor weights, only MatMuls with
    constant weights (not the attention-score MatMuls), and the embedding Gather.
    """
    quantize_static(
        str(prepared),
        str(target),
        BatchReader(batches),
        quant_format=QuantFormat.QDQ,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        per_channel=False,
        op_types_to_quantize=["MatMul", "Gather"],
        extra_options={"MatMulConstBOnly": True},
    )


# Candidate name -> (how it is described in the manifest). Order is the order of preference.
CANDIDATES = {
    "static": {"weight_type": "QInt8", "per_channel": False, "quant_format": "QDQ"},
    "dynamic": {"weight_type": "QInt8", "quant_format": "QOperator"},
    "dynamic_matmul_only": {"weight_type": "QInt8", "quant_format": "QOperator"},
}


def build_candidates(
    prepared: Path,
    folder: Path,
    config: QuantizeConfig,
    batches: Sequence[dict[str, np.ndarray]],
) -> tuple[dict[str, Path], dict[str, str]]:
    """Candidate name -> its file, and name -> error for candidates that could not be built."""
    builders: dict[str, Callable[[Path], None]] = {
        "static": lambda target: quantize_static_int8(prepared, target, batches),
        "dynamic": lambda target: quantize_dynamic_all(prepared, target, config.per_channel),
        "dynamic_matmul_only": lambda target: quantize_dynamic_matmul(
            prepared, target, config.per_channel
        ),
    }
    built, failed = {}, {}
    for name, build in builders.items():
        target = folder / f"candidate-{name}.onnx"
        try:
            with quiet_root_logger():
                build(target)
            built[name] = target
        except Exception as err:  # noqa: BLE001 - a candidate that cannot be built is skipped
            failed[name] = f"could not be built: {type(err).__name__}: {err}"[:300]
    return built, failed


# --- the stage -----------------------------------------------------------------------------


def quantize_key(
    config: QuantizeConfig, export: Artifact[ExportManifest], data: Artifact[DataManifest]
) -> str:
    return stage_key("quantize", VERSION, config.model_dump(mode="json"), export.key, data.key)


def quantize_stage(
    store: Path,
    config: QuantizeConfig,
    export: Artifact[ExportManifest],
    data: Artifact[DataManifest],
) -> Artifact[QuantizeManifest]:
    return run_stage(
        store,
        "quantize",
        quantize_key(config, export, data),
        lambda folder: build_quantized(config, export, data, folder),
        QuantizeManifest,
    )


def model_split(export: Artifact[ExportManifest], data: Artifact[DataManifest], split: str):
    """A split as the exported graph expects it: re-tokenized when the vocabulary was trimmed."""
    rows = load_split(data.path, split)
    if export.manifest.trimmed:
        tokenizer = export.file(export.manifest.tokenizer)
        return tokenized_split(tokenizer, rows, data.manifest.max_length)
    return rows


def score(
    name: str, path: Path, test, fp32_labels: np.ndarray | None, timing: Mapping[str, Timing]
) -> tuple[Measured, np.ndarray]:
    predicted = onnx_logits(open_session(path), test["input_ids"], test["attention_mask"])
    labels = predicted.argmax(-1)
    agreement = 1.0 if fp32_labels is None else float(np.mean(labels == fp32_labels))
    measured = Measured(
        name=name,
        test_accuracy=accuracy(labels, test["label"]),
        agreement=agreement,
        p50_ms=timing[name].p50_ms,
        p95_ms=timing[name].p95_ms,
        bytes=path.stat().st_size,
    )
    return measured, labels


def build_quantized(
    config: QuantizeConfig,
    export: Artifact[ExportManifest],
    data: Artifact[DataManifest],
    folder: Path,
) -> QuantizeManifest:
    exported = export.file(export.manifest.file)
    test = model_split(export, data, "test")
    count = min(config.latency_samples, len(test))
    feeds = batch1_feeds(test["input_ids"][:count], test["attention_mask"][:count])

    base, optimization = exported, None
    if export.manifest.optimize_graph:
        base, result = try_optimize(
            exported,
            folder,
            export.manifest.num_heads,
            export.manifest.hidden_size,
            test["input_ids"],
            test["attention_mask"],
            feeds,
            export.manifest.parity_tolerance,
        )
        optimization = result.record()

    prepared = folder / "prepared.onnx"
    prepare(base, prepared)
    batches = calibration_batches(
        model_split(export, data, "train"), config.calibration_samples, config.calibration_seed
    )
    built, failed = build_candidates(prepared, folder, config, batches)
    prepared.unlink()

    timing = compare_onnx_latency({"fp32": base, **built}, feeds)
    fp32, fp32_labels = score("fp32", base, test, None, timing)
    measured = [score(name, path, test, fp32_labels, timing)[0] for name, path in built.items()]
    winner, reasons = choose(
        measured, fp32, config.max_accuracy_drop, config.min_agreement, config.reject_slower_int8
    )
    reasons.update(failed)

    shipped = folder / (FP32_FILE if winner == "fp32" else INT8_FILE)
    source = base if winner == "fp32" else built[winner]
    shutil.copyfile(source, shipped)
    if not config.keep_candidates:
        for path in built.values():
            path.unlink()
    if base.parent == folder:
        base.unlink()  # the optimised fp32 graph: shipped (as a copy) or not needed
    shutil.copyfile(export.file(export.manifest.tokenizer), folder / TOKENIZER_FILE)

    chosen = fp32 if winner == "fp32" else next(m for m in measured if m.name == winner)
    return QuantizeManifest(
        file=shipped.name,
        sha256=file_sha256(shipped),
        bytes=shipped.stat().st_size,
        method=winner,
        **describe_method(winner, config),
        test_accuracy=chosen.test_accuracy,
        fp32_test_accuracy=fp32.test_accuracy,
        accuracy_drop=fp32.test_accuracy - chosen.test_accuracy,
        label_agreement_with_fp32=chosen.agreement,
        p50_ms=chosen.p50_ms,
        fp32_p50_ms=fp32.p50_ms,
        fp32_bytes=fp32.bytes,
        latency_samples=count,
        gate={
            "max_accuracy_drop": config.max_accuracy_drop,
            "min_agreement": config.min_agreement,
            "reject_slower_int8": config.reject_slower_int8,
        },
        candidates=candidate_records(fp32, measured, winner, reasons),
        candidate_files=(
            {name: path.name for name, path in built.items()} if config.keep_candidates else {}
        ),
        calibration={
            "split": "train",
            "samples": sum(len(batch["input_ids"]) for batch in batches),
            "seed": config.calibration_seed,
            "method": "MinMax",
        },
        optimization=optimization,
        tokenizer=TOKENIZER_FILE,
        tokenizer_sha256=file_sha256(folder / TOKENIZER_FILE),
    )


def describe_method(winner: str, config: QuantizeConfig) -> dict[str, Any]:
    if winner == "fp32":
        return {"weight_type": "float32", "per_channel": False, "quant_format": None}
    return {"per_channel": config.per_channel, **CANDIDATES[winner]}


def candidate_records(
    fp32: Measured, measured: Sequence[Measured], winner: str, reasons: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for candidate in [*measured, fp32]:
        record = asdict(candidate)
        record.pop("name")
        record["accuracy_drop"] = fp32.test_accuracy - candidate.test_accuracy
        record["accepted"] = candidate.name == winner
        record["reason"] = reasons.get(candidate.name, "shipped")
        records[candidate.name] = record
    for name, reason in reasons.items():  # candidates that failed to build
        records.setdefault(name, {"accepted": False, "reason": reason})
    if winner != "fp32":
        records["fp32"]["reason"] = "fallback, not needed"
    return records
