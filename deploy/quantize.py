"""Quantize stage: INT8 candidates behind an accuracy gate, with fp32 as the last resort.

Candidates, in order of preference: static INT8 (QDQ, calibrated on a seeded sample of the
train split), dynamic INT8 per-channel, and dynamic INT8 of the MatMul weights only (the
embedding lookup and the pooler/classifier stay fp32). Each is scored on the validation split
against the fp32 graph and timed at batch 1 on one thread beside it. The first candidate whose
accuracy cost is within `quantize.max_accuracy_drop` *or* not significantly greater than zero
(exact McNemar against the trained student on the same validation texts, one-sided p < 0.05:
`distill.paired`), that agrees with fp32 on at least `quantize.min_agreement` of the labels and
is not significantly slower than fp32 (its per-call time beside fp32's on the same texts,
paired: `deploy.latency.paired_speed`) ships; when none does, fp32 ships. Every candidate's
numbers, its paired comparisons (discordant counts, 95% interval, p-values; time ratio and
interval) and the reason it was passed over go into the manifest.

The gate decides on the validation split only: the test split stays held out, so the shipped
model's test accuracy is not the best of several tries on the same texts. Every candidate is
scored on test too, for the record.

The accuracy gate is end to end: a candidate's drop is measured from the trained PyTorch
student (untrimmed), so vocabulary trimming and INT8 together must stay within
`max_accuracy_drop`. When no INT8 candidate of a trimmed graph does, the same candidates are
tried on the full-vocabulary graph the export kept; when none of those does either, the trimmed
fp32 graph ships (the export already held its trimming cost within the budget). The manifest
records what each step cost: trimming, quantization, and both together.

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
from deploy.latency import (
    MachineLoad,
    SpeedComparison,
    batch1_feeds,
    machine_load,
    onnx_seconds,
    paired_speed,
    summarize,
)
from deploy.onnx_eval import onnx_logits, open_session
from deploy.optimize import OptimizationResult, try_optimize
from deploy.vocab_trim import tokenized_split
from distill.config import QuantizeConfig
from distill.constants import EPSILON, TOKENIZER_FILE
from distill.data import DataManifest, load_split
from distill.metrics import accuracy
from distill.padding import pad
from distill.paired import ALPHA, PairedComparison, compare
from distill.store import (
    Artifact,
    ManifestRecord,
    StageManifest,
    file_sha256,
    run_stage,
    stage_key,
)

INT8_FILE = "model.int8.onnx"
FP32_FILE = "model.fp32.onnx"
CALIBRATION_BATCH = 32
# Bumped when the shipped model changes for the same settings and export (3: the gate decides
# on validation, not test, 4: an accuracy cost over budget is refused only when significant,
# and every candidate's paired comparison with the trained student is recorded, 5: 7-bit weights
# (REDUCE_RANGE), so every runtime computes the same numbers).
VERSION = 6  # 6: speed decisions read paired per-call times with an interval, not two medians
# INT8 weights within +-64 (7 bits). x86 CPUs without VNNI multiply uint8 activations by int8
# weights in pairs summed into int16 (pmaddubsw), which saturates for full-range weights: measured
# on a trained 3-layer student, ONNX Runtime's MatMulInteger was off the exact integer product by
# up to 10% of its range, and the browser (onnxruntime-web, WASM) gave probabilities 0.068 away
# from the Python runtime's golden examples. With 7-bit weights no pair can saturate, so the
# graph gives the same answer on every CPU and runtime (onnxruntime's `reduce_range`).
REDUCE_RANGE = True


class GateRecord(ManifestRecord):
    """The INT8 gate's settings and what it decided on."""

    max_accuracy_drop: float
    min_agreement: float
    reject_slower_int8: bool
    reference: str  # what the drop is measured from
    split: str  # the split the gate decides on
    texts: int
    rule: str


class CalibrationRecord(ManifestRecord):
    split: str
    samples: int
    seed: int
    method: str


class StepCosts(ManifestRecord):
    """Accuracy points (fractions) each step on the way to the shipped model cost."""

    trimming: float  # trained student -> fp32 graph
    quantization: float  # fp32 graph -> shipped model
    end_to_end: float  # both


class CandidateRecord(ManifestRecord):
    """One graph the gate considered (every INT8 candidate, and fp32): its numbers, its drops
    and why it was (not) shipped. A candidate that could not be built has `accepted` and
    `reason` only."""

    validation_accuracy: float | None = None
    agreement: float | None = None
    test_accuracy: float | None = None
    test_agreement: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    bytes: int | None = None
    validation_accuracy_drop: float | None = None  # from the fp32 graph
    accuracy_drop: float | None = None
    accepted: bool
    reason: str
    speed: SpeedComparison | None = None  # per-call time against fp32's, paired
    validation_comparison: PairedComparison | None = None  # against the trained student
    test_comparison: PairedComparison | None = None
    validation_end_to_end_drop: float | None = None  # from the trained student
    end_to_end_drop: float | None = None


class QuantizeManifest(StageManifest):
    file: str
    sha256: str
    bytes: int
    method: str  # "static", "dynamic", "dynamic_matmul_only" or "fp32"
    weight_type: str
    per_channel: bool
    quant_format: str | None
    # The shipped model on the held-out test split (never decided on) ...
    test_accuracy: float
    fp32_test_accuracy: float
    accuracy_drop: float
    label_agreement_with_fp32: float
    # ... and on the validation split the gate decided on.
    validation_accuracy: float
    fp32_validation_accuracy: float
    p50_ms: float
    fp32_p50_ms: float
    fp32_bytes: int
    latency_samples: int
    gate: GateRecord
    candidates: dict[str, CandidateRecord]
    # Candidate name -> its file in the folder, when `quantize.keep_candidates` is on.
    candidate_files: dict[str, str]
    calibration: CalibrationRecord
    optimization: OptimizationResult | None
    # The tokenizer the shipped graph's input ids come from (trimmed or not): bundle this.
    tokenizer: str
    tokenizer_sha256: str
    trimmed: bool
    # The trained PyTorch student's accuracy and what each step on the way to the shipped model
    # cost: {"trimming", "quantization", "end_to_end"} (accuracy points as fractions), on the
    # validation split (what the gate held within `max_accuracy_drop`) and on test (reported).
    student_validation_accuracy: float
    validation_costs: StepCosts
    student_test_accuracy: float
    costs: StepCosts
    # The shipped model against the trained student, paired on the same texts: on validation
    # (what the gate decided on) and on the held-out test split (reported).
    validation_comparison: PairedComparison
    test_comparison: PairedComparison


@dataclass(frozen=True)
class Measured:
    """One graph's numbers: on the validation split (what the gate decides on) and on the
    held-out test split (recorded only)."""

    name: str
    validation_accuracy: float
    agreement: float  # share of validation texts where its label equals the fp32 graph's
    test_accuracy: float
    test_agreement: float
    p50_ms: float  # batch 1, one thread
    p95_ms: float
    bytes: int
    speed: SpeedComparison | None = None  # per-call time against fp32's (None: fp32 itself)


# --- the gate: pure decisions on measured numbers -----------------------------------------


def rejection(
    candidate: Measured,
    fp32: Measured,
    max_accuracy_drop: float,
    min_agreement: float,
    reject_slower: bool = True,
    reference_accuracy: float | None = None,
    comparison: PairedComparison | None = None,
) -> str | None:
    """Why `candidate` may not ship instead of `fp32`, or None when it may, judged on validation
    numbers only. The accuracy drop is taken from `reference_accuracy` (the trained student's
    validation accuracy, end to end) when given. With the paired `comparison` (candidate against
    that reference on the same texts), a drop over the budget refuses the candidate only when it
    is also significantly greater than zero."""
    reference = fp32.validation_accuracy if reference_accuracy is None else reference_accuracy
    drop = reference - candidate.validation_accuracy
    significant = comparison is None or comparison.significantly_worse(ALPHA)
    if drop > max_accuracy_drop + EPSILON and significant:
        source = "fp32" if reference_accuracy is None else "the trained student"
        evidence = "" if comparison is None else f" and significant (p = {comparison.p_worse:.3g})"
        return (
            f"validation accuracy drop {drop:.4f} from {source} > max_accuracy_drop "
            f"{max_accuracy_drop:g}{evidence}"
        )
    if candidate.agreement < min_agreement - EPSILON:
        return (
            f"validation label agreement with fp32 {candidate.agreement:.4f} < min_agreement "
            f"{min_agreement:g}"
        )
    if reject_slower and candidate.speed is not None and candidate.speed.slower():
        return f"significantly slower than fp32 at batch 1: {candidate.speed.summary()}"
    return None


def choose(
    candidates: Sequence[Measured],
    fp32: Measured,
    max_accuracy_drop: float,
    min_agreement: float,
    reject_slower: bool = True,
    reference_accuracy: float | None = None,
    comparisons: Mapping[str, PairedComparison] | None = None,
) -> tuple[str, dict[str, str]]:
    """The first candidate (in order) that passes the gate, else "fp32"; and why each other
    candidate was not chosen. `comparisons`: candidate name -> its paired comparison with the
    reference (see `rejection`)."""
    winner = fp32.name
    reasons: dict[str, str] = {}
    for candidate in candidates:
        if winner != fp32.name:
            reasons[candidate.name] = f"not needed: '{winner}' passed the gate first"
            continue
        reason = rejection(
            candidate,
            fp32,
            max_accuracy_drop,
            min_agreement,
            reject_slower,
            reference_accuracy,
            (comparisons or {}).get(candidate.name),
        )
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
    _quantize_dynamic(prepared, target, per_channel, op_types=None)


def quantize_dynamic_matmul(prepared: Path, target: Path, per_channel: bool) -> None:
    """Dynamic INT8 of the MatMul weights only: the embedding Gather (whose one per-tensor scale
    spans every word's vector) and the pooler/classifier Gemms stay fp32."""
    _quantize_dynamic(prepared, target, per_channel, op_types=["MatMul"])


def _quantize_dynamic(
    prepared: Path, target: Path, per_channel: bool, op_types: list[str] | None
) -> None:
    quantize_dynamic(
        str(prepared),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=REDUCE_RANGE,
        op_types_to_quantize=op_types,  # None: every op type the quantizer supports
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
        reduce_range=REDUCE_RANGE,
        op_types_to_quantize=["MatMul", "Gather"],
        extra_options={"MatMulConstBOnly": True},
    )


@dataclass(frozen=True)
class Candidate:
    """One INT8 recipe: its name, how the manifest describes it and how it is built."""

    name: str
    weight_type: str
    quant_format: str
    # Whether weights are quantized per channel; None: as `quantize.per_channel` says.
    per_channel: bool | None
    # (prepared graph, target file, settings, calibration batches) -> the INT8 graph at target
    build: Callable[[Path, Path, QuantizeConfig, Sequence[dict[str, np.ndarray]]], None]

    def describe(self, config: QuantizeConfig) -> dict[str, Any]:
        """The manifest's `weight_type`, `per_channel` and `quant_format` for this recipe."""
        per_channel = config.per_channel if self.per_channel is None else self.per_channel
        return {
            "weight_type": self.weight_type,
            "per_channel": per_channel,
            "quant_format": self.quant_format,
        }


def _dynamic(name: str, quantize: Callable[[Path, Path, bool], None]) -> Candidate:
    """A dynamic INT8 recipe (no calibration) with `quantize(prepared, target, per_channel)`."""
    return Candidate(
        name,
        "QInt8",
        "QOperator",
        per_channel=None,
        build=lambda prepared, target, config, batches: quantize(
            prepared, target, config.per_channel
        ),
    )


# In order of preference.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate(
        "static",
        "QInt8",
        "QDQ",
        per_channel=False,
        build=lambda prepared, target, config, batches: quantize_static_int8(
            prepared, target, batches
        ),
    ),
    _dynamic("dynamic", quantize_dynamic_all),
    _dynamic("dynamic_matmul_only", quantize_dynamic_matmul),
)
CANDIDATE_NAMES = tuple(candidate.name for candidate in CANDIDATES)


def build_candidates(
    prepared: Path,
    folder: Path,
    config: QuantizeConfig,
    batches: Sequence[dict[str, np.ndarray]],
) -> tuple[dict[str, Path], dict[str, str]]:
    """Candidate name -> its file, and name -> error for candidates that could not be built."""
    built, failed = {}, {}
    for candidate in CANDIDATES:
        name = candidate.name
        target = folder / f"candidate-{name}.onnx"
        try:
            with quiet_root_logger():
                candidate.build(prepared, target, config, batches)
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


def split_for(tokenizer: Path | None, data: Artifact[DataManifest], split: str):
    """A split as a graph expects it: re-tokenized with `tokenizer` (a trimmed vocabulary), or
    as the data stage wrote it (None: the student's own ids)."""
    rows = load_split(data.path, split)
    if tokenizer is None:
        return rows
    return tokenized_split(tokenizer, rows, data.manifest.max_length)


def model_split(export: Artifact[ExportManifest], data: Artifact[DataManifest], split: str):
    """A split as the exported graph expects it."""
    manifest = export.manifest
    return split_for(export.file(manifest.tokenizer) if manifest.trimmed else None, data, split)


def shipped_split(quantized: Artifact[QuantizeManifest], data: Artifact[DataManifest], split: str):
    """A split as the shipped model expects it (its vocabulary may differ from the export's)."""
    manifest = quantized.manifest
    return split_for(quantized.file(manifest.tokenizer) if manifest.trimmed else None, data, split)


def score(
    name: str,
    path: Path,
    splits: Mapping[str, Any],
    fp32_labels: Mapping[str, np.ndarray] | None,
    seconds: Mapping[str, Sequence[float]],
    load: MachineLoad | None = None,
) -> tuple[Measured, dict[str, np.ndarray]]:
    """One graph on the "validation" and "test" `splits`; agreement is with `fp32_labels` (None:
    this is the fp32 graph); `seconds`: every graph's per-call times, side by side (`load`: the
    machine's as they were timed)."""
    session, timing = open_session(path), summarize(seconds[name])
    labels = {
        split_name: onnx_logits(session, split["input_ids"], split["attention_mask"]).argmax(-1)
        for split_name, split in splits.items()
    }

    def agreement(split_name: str) -> float:
        if fp32_labels is None:
            return 1.0
        return float(np.mean(labels[split_name] == fp32_labels[split_name]))

    measured = Measured(
        name=name,
        validation_accuracy=accuracy(labels["validation"], splits["validation"]["label"]),
        agreement=agreement("validation"),
        test_accuracy=accuracy(labels["test"], splits["test"]["label"]),
        test_agreement=agreement("test"),
        p50_ms=timing.p50_ms,
        p95_ms=timing.p95_ms,
        bytes=path.stat().st_size,
        speed=None
        if fp32_labels is None
        else paired_speed(seconds[name], seconds["fp32"], load=load),
    )
    return measured, labels


@dataclass(frozen=True)
class Vocabulary:
    """One fp32 graph to quantize, with the tokenizer its ids come from."""

    name: str  # "trimmed" or "full"
    graph: Path
    tokenizer: Path
    trimmed: bool


def vocabularies(export: Artifact[ExportManifest]) -> list[Vocabulary]:
    """The export's graph, then (when that one is trimmed) the full-vocabulary graph."""
    manifest = export.manifest
    first = Vocabulary(
        "trimmed" if manifest.trimmed else "full",
        export.file(manifest.file),
        export.file(manifest.tokenizer),
        manifest.trimmed,
    )
    if not (manifest.trimmed and manifest.full_vocabulary_file):
        return [first]
    full = Vocabulary(
        "full",
        export.file(manifest.full_vocabulary_file),
        export.file(manifest.full_vocabulary_tokenizer or ""),
        False,
    )
    return [first, full]


def vocabulary_split(vocabulary: Vocabulary, data: Artifact[DataManifest], split: str):
    return split_for(vocabulary.tokenizer if vocabulary.trimmed else None, data, split)


@dataclass
class Trial:
    """Every INT8 candidate of one vocabulary's graph, measured and judged."""

    vocabulary: Vocabulary
    base: Path  # the fp32 graph the candidates come from (fused when that paid)
    fp32: Measured
    measured: list[Measured]
    built: dict[str, Path]
    winner: str
    reasons: dict[str, str]
    optimization: OptimizationResult | None
    calibration_samples: int
    latency_samples: int
    # Graph name (fp32 too) -> it against the trained student, per split ("validation", "test").
    comparisons: dict[str, dict[str, PairedComparison]]


def try_vocabulary(
    vocabulary: Vocabulary,
    config: QuantizeConfig,
    export: ExportManifest,
    data: Artifact[DataManifest],
    folder: Path,
    student_labels: Mapping[str, np.ndarray],
) -> Trial:
    """Optimise, quantize, time and score one vocabulary's graph; gate end to end."""
    test = vocabulary_split(vocabulary, data, "test")
    splits = {"validation": vocabulary_split(vocabulary, data, "validation"), "test": test}
    count = min(config.latency_samples, len(test))
    feeds = batch1_feeds(test["input_ids"][:count], test["attention_mask"][:count])

    base, optimization = vocabulary.graph, None
    if export.optimize_graph:
        base, result = try_optimize(
            vocabulary.graph,
            folder,
            export.num_heads,
            export.hidden_size,
            test["input_ids"],
            test["attention_mask"],
            feeds,
            export.parity_tolerance,
        )
        optimization = result

    prepared = folder / "prepared.onnx"
    prepare(base, prepared)
    batches = calibration_batches(
        vocabulary_split(vocabulary, data, "train"),
        config.calibration_samples,
        config.calibration_seed,
    )
    built, failed = build_candidates(prepared, folder, config, batches)
    prepared.unlink()

    seconds = onnx_seconds({"fp32": base, **built}, feeds)
    load = machine_load()
    fp32, fp32_labels = score("fp32", base, splits, None, seconds)
    comparisons = {"fp32": student_comparisons(student_labels, fp32_labels, splits)}
    measured = []
    for name, path in built.items():
        candidate, labels = score(name, path, splits, fp32_labels, seconds, load)
        measured.append(candidate)
        comparisons[name] = student_comparisons(student_labels, labels, splits)
    winner, reasons = choose(
        measured,
        fp32,
        config.max_accuracy_drop,
        config.min_agreement,
        config.reject_slower_int8,
        reference_accuracy=export.student_validation_accuracy,
        comparisons={name: pair["validation"] for name, pair in comparisons.items()},
    )
    reasons.update(failed)
    return Trial(
        vocabulary,
        base,
        fp32,
        measured,
        built,
        winner,
        reasons,
        optimization,
        sum(len(batch["input_ids"]) for batch in batches),
        count,
        comparisons,
    )


def student_comparisons(
    student_labels: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    splits: Mapping[str, Any],
) -> dict[str, PairedComparison]:
    """A graph's predictions against the trained student's, paired on each split's texts."""
    return {
        name: compare(student_labels[name], labels[name], split["label"])
        for name, split in splits.items()
    }


def build_quantized(
    config: QuantizeConfig,
    export: Artifact[ExportManifest],
    data: Artifact[DataManifest],
    folder: Path,
) -> QuantizeManifest:
    with np.load(export.file(export.manifest.student_predictions)) as saved:
        student_labels = {split: saved[split] for split in ("validation", "test")}
    trials: list[Trial] = []
    for vocabulary in vocabularies(export):
        # The fallback's files go in a subfolder: the same names as the first trial's.
        workspace = folder if not trials else folder / f"{vocabulary.name}-vocabulary"
        workspace.mkdir(exist_ok=True)
        trials.append(
            try_vocabulary(vocabulary, config, export.manifest, data, workspace, student_labels)
        )
        if trials[-1].winner != "fp32":
            break
    # The first INT8 that passed end to end; else the first graph in fp32 (trimmed only when
    # its trimming cost was within the budget: the export gate).
    shipping = next((trial for trial in trials if trial.winner != "fp32"), trials[0])
    winner = shipping.winner
    shipped = folder / (FP32_FILE if winner == "fp32" else INT8_FILE)
    shutil.copyfile(shipping.base if winner == "fp32" else shipping.built[winner], shipped)
    shutil.copyfile(shipping.vocabulary.tokenizer, folder / TOKENIZER_FILE)
    for trial in trials:
        if not (config.keep_candidates and trial is shipping):
            for path in trial.built.values():
                path.unlink()
        if trial.base.parent != export.path:
            trial.base.unlink()  # the optimised fp32 graph: shipped (as a copy) or not needed
    for trial in trials[1:]:
        workspace = folder / f"{trial.vocabulary.name}-vocabulary"
        if not any(workspace.iterdir()):
            workspace.rmdir()

    chosen = (
        shipping.fp32
        if winner == "fp32"
        else next(m for m in shipping.measured if m.name == winner)
    )
    reference = export.manifest.student_test_accuracy
    validation_reference = export.manifest.student_validation_accuracy
    return QuantizeManifest(
        file=shipped.name,
        sha256=file_sha256(shipped),
        bytes=shipped.stat().st_size,
        method=winner,
        **describe_method(winner, config),
        test_accuracy=chosen.test_accuracy,
        fp32_test_accuracy=shipping.fp32.test_accuracy,
        accuracy_drop=shipping.fp32.test_accuracy - chosen.test_accuracy,
        label_agreement_with_fp32=chosen.test_agreement,
        validation_accuracy=chosen.validation_accuracy,
        fp32_validation_accuracy=shipping.fp32.validation_accuracy,
        p50_ms=chosen.p50_ms,
        fp32_p50_ms=shipping.fp32.p50_ms,
        fp32_bytes=shipping.fp32.bytes,
        latency_samples=shipping.latency_samples,
        gate=GateRecord(
            max_accuracy_drop=config.max_accuracy_drop,
            min_agreement=config.min_agreement,
            reject_slower_int8=config.reject_slower_int8,
            reference="trained student (end to end)",
            split="validation",
            texts=shipping.comparisons["fp32"]["validation"].n,
            rule=(
                f"refused for accuracy only when the drop is over max_accuracy_drop and "
                f"significant (exact McNemar, one-sided p < {ALPHA}); for speed only when "
                f"significantly slower than fp32 (paired per-call times, median ratio's "
                f"interval above 1 at one-sided {ALPHA})"
            ),
        ),
        candidates=all_candidate_records(trials, shipping, validation_reference, reference),
        candidate_files=(
            {name: str(path.relative_to(folder)) for name, path in shipping.built.items()}
            if config.keep_candidates
            else {}
        ),
        calibration=CalibrationRecord(
            split="train",
            samples=shipping.calibration_samples,
            seed=config.calibration_seed,
            method="MinMax",
        ),
        optimization=shipping.optimization,
        tokenizer=TOKENIZER_FILE,
        tokenizer_sha256=file_sha256(folder / TOKENIZER_FILE),
        trimmed=shipping.vocabulary.trimmed,
        student_validation_accuracy=validation_reference,
        validation_costs=step_costs(
            validation_reference, shipping.fp32.validation_accuracy, chosen.validation_accuracy
        ),
        student_test_accuracy=reference,
        costs=step_costs(reference, shipping.fp32.test_accuracy, chosen.test_accuracy),
        validation_comparison=shipping.comparisons[winner]["validation"],
        test_comparison=shipping.comparisons[winner]["test"],
    )


def step_costs(student: float, fp32: float, shipped: float) -> StepCosts:
    """What trimming (student -> fp32 graph), quantization (-> shipped) and both cost."""
    return StepCosts(
        trimming=student - fp32, quantization=fp32 - shipped, end_to_end=student - shipped
    )


def all_candidate_records(
    trials: Sequence[Trial], shipping: Trial, validation_reference: float, test_reference: float
) -> dict[str, CandidateRecord]:
    """Every trial's candidate records, with each one's drop from the trained student (on
    validation, as gated, and on test); a fallback trial's names carry its vocabulary
    ("full_vocabulary/static")."""
    records: dict[str, CandidateRecord] = {}
    for index, trial in enumerate(trials):
        winner = trial.winner if trial is shipping else None
        trial_records = candidate_records(trial.fp32, trial.measured, winner, trial.reasons)
        for name, pair in trial.comparisons.items():
            trial_records[name] = trial_records[name].model_copy(
                update={
                    "validation_comparison": pair["validation"],
                    "test_comparison": pair["test"],
                }
            )
        if trial is not shipping:
            trial_records["fp32"] = trial_records["fp32"].model_copy(
                update={
                    "reason": f"not shipped: the {shipping.vocabulary.name} vocabulary's "
                    f"{shipping.winner} ships"
                }
            )
        prefix = "" if index == 0 else f"{trial.vocabulary.name}_vocabulary/"
        for name, record in trial_records.items():
            if record.test_accuracy is not None and record.validation_accuracy is not None:
                record = record.model_copy(
                    update={
                        "validation_end_to_end_drop": (
                            validation_reference - record.validation_accuracy
                        ),
                        "end_to_end_drop": test_reference - record.test_accuracy,
                    }
                )
            records[f"{prefix}{name}"] = record
    return records


def describe_method(winner: str, config: QuantizeConfig) -> dict[str, Any]:
    if winner == "fp32":
        return {"weight_type": "float32", "per_channel": False, "quant_format": None}
    return next(candidate for candidate in CANDIDATES if candidate.name == winner).describe(config)


def candidate_records(
    fp32: Measured, measured: Sequence[Measured], winner: str | None, reasons: Mapping[str, str]
) -> dict[str, CandidateRecord]:
    records: dict[str, CandidateRecord] = {}
    for candidate in [*measured, fp32]:
        numbers = asdict(candidate)
        numbers.pop("name")
        records[candidate.name] = CandidateRecord(
            **numbers,
            validation_accuracy_drop=fp32.validation_accuracy - candidate.validation_accuracy,
            accuracy_drop=fp32.test_accuracy - candidate.test_accuracy,
            accepted=candidate.name == winner,
            reason=reasons.get(candidate.name, "shipped"),
        )
    for name, reason in reasons.items():  # candidates that failed to build
        records.setdefault(name, CandidateRecord(accepted=False, reason=reason))
    if winner not in (None, "fp32"):
        records["fp32"] = records["fp32"].model_copy(update={"reason": "fallback, not needed"})
    return records
