"""Export stage: the student as ONNX fp32 with dynamic batch and sequence axes, parity-checked.

The stage folder also holds the tokenizer that goes with the graph (`tokenizer.json`): the
student's own, or its trimmed version when `export.trim_vocabulary` is on.

Trimming is gated like quantization, with the same `quantize.max_accuracy_drop`: the trimmed
graph is refused only when its validation accuracy cost against the trained PyTorch student is
over that budget *and* significantly greater than zero (exact McNemar on the texts where exactly
one of the two is right, one-sided p < 0.05, `distill.paired`); then the full vocabulary ships.
A cost over the budget that a few texts' chance can explain does not flip the decision.
The gates decide on the validation split only, so the test split stays held out: its numbers
are recorded beside, never decided on. A trimmed export also keeps the full-vocabulary graph
beside it, so the quantize stage can fall back to it when trimming and INT8 together cost too
much.
"""

from __future__ import annotations

import gc
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from deploy.onnx_eval import onnx_logits, open_session
from deploy.vocab_trim import (
    VocabularyRecord,
    tokenized_split,
    trim_vocabulary,
    untrimmable_reason,
)
from distill.config import ExportConfig
from distill.constants import EPSILON, TOKENIZER_FILE
from distill.data import DataManifest, load_split
from distill.metrics import accuracy
from distill.models import load_classifier
from distill.paired import ALPHA, PairedComparison, compare
from distill.store import Artifact, StageManifest, file_sha256, run_stage, stage_key
from distill.student import StudentManifest
from distill.training import predict_logits

ONNX_FILE = "model.onnx"
FULL_ONNX_FILE = "model.full-vocabulary.onnx"
FULL_TOKENIZER_FILE = "tokenizer.full-vocabulary.json"
# The trained PyTorch student's predicted labels per text ("validation", "test"): the reference
# of the paired comparisons in this stage's and the quantize stage's gates.
STUDENT_PREDICTIONS = "student_predictions.npz"
INPUT_NAMES = ("input_ids", "attention_mask")
# Bumped when the exported graph changes for the same settings (2: eager attention, 3: gated
# trimming with the full-vocabulary graph kept beside a trimmed one, 4: the trimming gate
# decides on validation, not test, 5: the trimming gate refuses only a significant cost, and the
# student's predictions are kept for the quantize stage's paired gate).
VERSION = 5


class ExportManifest(StageManifest):
    file: str
    sha256: str
    bytes: int
    opset: int
    student_sha256: str
    # The trained PyTorch student on the untrimmed validation split: the reference of every
    # accuracy gate between it and the shipped bundle (trimming, then INT8) ...
    student_validation_accuracy: float
    validation_accuracy: float
    # ... and on the held-out test split (reported, never decided on).
    student_test_accuracy: float
    test_accuracy: float
    max_abs_logit_diff: float
    label_agreement: float
    # The tokenizer the graph's input ids come from: the edge bundle must ship this one.
    tokenizer: str
    tokenizer_sha256: str
    vocabulary: VocabularyRecord
    max_length: int
    # For onnxruntime's BERT fusions in the quantize stage.
    num_heads: int
    hidden_size: int
    optimize_graph: bool
    parity_tolerance: float
    # The untrimmed graph and tokenizer, kept when `file` is trimmed (else None).
    full_vocabulary_file: str | None = None
    full_vocabulary_tokenizer: str | None = None
    # The trained student's predicted labels on validation and test (STUDENT_PREDICTIONS).
    student_predictions: str = STUDENT_PREDICTIONS
    # The trimmed graph against the trained student on the validation split (None: no trim
    # was tried): what the trimming gate decided on.
    trimming_comparison: PairedComparison | None = None

    @property
    def trimmed(self) -> bool:
        return self.vocabulary.trimmed


class ParityError(RuntimeError):
    """The exported graph does not reproduce PyTorch within tolerance."""


class LogitsOnly(torch.nn.Module):
    """Gives the exporter a plain (input_ids, attention_mask) -> logits signature."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    opset: int,
    max_length: int,
    wrapper: torch.nn.Module | None = None,
    output_names: tuple[str, ...] = ("logits",),
) -> None:
    """`model` (through `wrapper`, default its logits only) as an ONNX graph with dynamic batch
    and sequence axes, inputs `INPUT_NAMES`, outputs `output_names`."""
    wrapper = (wrapper or LogitsOnly(model)).eval()  # eval the outermost module: no dropout
    # Two distinct tensors: an input passed twice would be traced as one aliased input. Ids from
    # the upper half of the vocabulary: inside any model's table, clear of its special tokens.
    vocab = model.config.vocab_size
    example_ids = torch.randint(vocab // 2, vocab, (2, 8), dtype=torch.long)
    example_mask = torch.ones((2, 8), dtype=torch.long)
    example_mask[1, -3:] = 0
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence", min=1, max=max(8, max_length))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # The exporter warns about unused axis names and optional torchvision ops; neither
        # affects a BERT graph, and parity is checked right after export.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example_ids, example_mask),
            str(path),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(output_names),
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUT_NAMES},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    release_exporter_graphs()


MATCHER_STATE = ("_graph", "_current_node", "_match", "_tracer")


def release_exporter_graphs() -> None:
    """Let the exported model's weights go. onnxscript's rewrite rules are module-level objects,
    and each rule's matcher keeps its last match's state (`SimplePatternMatcher._graph`,
    `_current_node`, `_match`: onnxscript 0.7), which reaches the graph, whose initializers wrap
    the model's parameters: after exporting the teacher, 127 MiB (MiniLM) to 438 MiB (MPNet)
    stayed alive through the rest of the run. Private attributes, so set defensively: a later
    onnxscript without them is left as it is."""
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:
        return
    for found in gc.get_objects():
        if isinstance(found, SimplePatternMatcher):
            for state in MATCHER_STATE:
                if getattr(found, state, None) is not None:
                    setattr(found, state, None)


def replace_initializer(source: Path, target: Path, old: np.ndarray, new: np.ndarray) -> bool:
    """Write `source`'s graph to `target` with its one initializer equal to `old` replaced by
    `new` (same name); False, writing nothing, unless exactly one initializer equals `old`."""
    graph = onnx.load(str(source))
    matches = [
        tensor
        for tensor in graph.graph.initializer
        if tuple(tensor.dims) == old.shape and np.array_equal(numpy_helper.to_array(tensor), old)
    ]
    if len(matches) != 1:
        return False
    name = matches[0].name
    matches[0].CopyFrom(numpy_helper.from_array(new.astype(old.dtype), name))
    # The exporter records the table's old shape among the graph's value infos: drop it.
    stale = [info for info in graph.graph.value_info if info.name == name]
    for info in stale:
        graph.graph.value_info.remove(info)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(target))
    return True


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    return {
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()),
        "label_agreement": float(np.mean(reference.argmax(-1) == candidate.argmax(-1))),
    }


def graph_predictions(path: Path, split) -> np.ndarray:
    """The labels the ONNX graph at `path` predicts on `split` (in the graph's ids)."""
    logits = onnx_logits(open_session(path), split["input_ids"], split["attention_mask"])
    return logits.argmax(-1)


def trimming_rejection(
    cost: float, max_accuracy_drop: float, comparison: PairedComparison | None = None
) -> str | None:
    """Why a trimmed vocabulary may not ship, or None when it may: its validation accuracy cost
    against the trained student is over the budget and, when the paired `comparison` (trimmed
    graph against the student) is given, significantly greater than zero."""
    if cost <= max_accuracy_drop + EPSILON:
        return None
    if comparison is not None and not comparison.significantly_worse(ALPHA):
        return None
    evidence = "" if comparison is None else f" and significant (p = {comparison.p_worse:.3g})"
    return (
        f"trimming cost {cost:.4f} validation accuracy > quantize.max_accuracy_drop "
        f"{max_accuracy_drop:g}{evidence}: the full vocabulary ships"
    )


def trimming_note(cost: float, max_accuracy_drop: float, comparison: PairedComparison) -> str:
    """Why a trimmed vocabulary ships, for the manifest and the card."""
    if cost <= max_accuracy_drop + EPSILON:
        return f"trimming cost {cost:.4f} <= quantize.max_accuracy_drop {max_accuracy_drop:g}"
    return (
        f"trimming cost {cost:.4f} > quantize.max_accuracy_drop {max_accuracy_drop:g} but not "
        f"significant (p = {comparison.p_worse:.3g} >= {ALPHA}): the trimmed vocabulary ships"
    )


def export_key(
    config: ExportConfig,
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    max_accuracy_drop: float,
) -> str:
    settings = {**config.model_dump(mode="json"), "max_accuracy_drop": max_accuracy_drop}
    return stage_key("export", VERSION, settings, student.key, data.key)


def export_stage(
    store: Path,
    config: ExportConfig,
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    max_accuracy_drop: float,
) -> Artifact[ExportManifest]:
    return run_stage(
        store,
        "export",
        export_key(config, student, data, max_accuracy_drop),
        lambda folder: build_export(config, student, data, folder, max_accuracy_drop),
        ExportManifest,
    )


def export_checked(
    model: torch.nn.Module, path: Path, test, config: ExportConfig, max_length: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Export `model` to `path` and check parity on `test`: PyTorch's logits, the graph's, and
    their parity."""
    export_onnx(model, path, config.opset, max_length)
    return parity_checked(model, path, test, config)


def parity_checked(
    model: torch.nn.Module, path: Path, test, config: ExportConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """PyTorch's logits on `test`, the graph's at `path`, and their parity (over tolerance:
    ParityError)."""
    reference = predict_logits(model, test)
    candidate = onnx_logits(open_session(path), test["input_ids"], test["attention_mask"])
    result = parity(reference, candidate)
    if result["max_abs_logit_diff"] > config.parity_tolerance:
        raise ParityError(
            f"ONNX export differs from PyTorch by {result['max_abs_logit_diff']:.3g} "
            f"(tolerance export.parity_tolerance={config.parity_tolerance})"
        )
    return reference, candidate, result


def build_export(
    config: ExportConfig,
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    folder: Path,
    max_accuracy_drop: float,
) -> ExportManifest:
    model = load_classifier(student.path)
    # Eager attention exports as plain MatMul/Softmax; SDPA's mask handling adds many small
    # operators that cost ~10% of batch-1 INT8 latency on this machine (docs/benchmarks.md).
    model.set_attn_implementation("eager")
    test = load_split(data.path, "test")
    validation = load_split(data.path, "validation")
    max_length = data.manifest.max_length
    student_logits, full_logits, full_parity = export_checked(
        model, folder / ONNX_FILE, test, config, max_length
    )
    student_accuracy = accuracy(student_logits, test["label"])
    student_validation_labels = predict_logits(model, validation).argmax(-1)
    student_validation = accuracy(student_validation_labels, validation["label"])
    np.savez(
        folder / STUDENT_PREDICTIONS,
        validation=student_validation_labels,
        test=student_logits.argmax(-1),
    )
    shipped_validation_accuracy: float | None = None  # known once a trimmed graph is scored
    trimming_comparison: PairedComparison | None = None
    shutil.copyfile(student.file(TOKENIZER_FILE), folder / TOKENIZER_FILE)
    vocabulary = VocabularyRecord(trimmed=False, original_size=model.config.vocab_size)
    logits, result, files = full_logits, full_parity, {}
    # A tokenizer that cannot be trimmed safely ships whole; the manifest says why.
    skip_reason = untrimmable_reason(student.file(TOKENIZER_FILE))
    if config.trim_vocabulary and skip_reason is not None:
        vocabulary = vocabulary.model_copy(update={"reason": skip_reason})
    elif config.trim_vocabulary:
        # The full graph moves aside; the trimmed one takes the shipping names if it pays.
        (folder / ONNX_FILE).rename(folder / FULL_ONNX_FILE)
        (folder / TOKENIZER_FILE).rename(folder / FULL_TOKENIZER_FILE)
        full_embedding = model.get_input_embeddings().weight.detach().numpy().copy()
        trim = trim_vocabulary(
            model,
            student.file(TOKENIZER_FILE),
            load_split(data.path, "train")["text"],
            test["text"],
            folder / TOKENIZER_FILE,
        )
        trimmed_test = tokenized_split(folder / TOKENIZER_FILE, test, max_length)
        trimmed_validation = tokenized_split(folder / TOKENIZER_FILE, validation, max_length)
        # Only the embedding table differs from the full graph: swap it there (well under a
        # second) instead of exporting again (several seconds); parity is checked either way.
        trimmed_embedding = model.get_input_embeddings().weight.detach().numpy()
        swapped = replace_initializer(
            folder / FULL_ONNX_FILE, folder / ONNX_FILE, full_embedding, trimmed_embedding
        )
        if not swapped:
            export_onnx(model, folder / ONNX_FILE, config.opset, max_length)
        _, trimmed_logits, trimmed_parity = parity_checked(
            model, folder / ONNX_FILE, trimmed_test, config
        )
        trimmed_labels = graph_predictions(folder / ONNX_FILE, trimmed_validation)
        trimmed_accuracy = accuracy(trimmed_labels, validation["label"])
        trimming_comparison = compare(
            student_validation_labels, trimmed_labels, validation["label"]
        )
        trim = trim.model_copy(
            update={
                "trimming_cost": student_validation - trimmed_accuracy,  # what the gate decides on
                "test_trimming_cost": student_accuracy - accuracy(trimmed_logits, test["label"]),
            }
        )
        cost = student_validation - trimmed_accuracy
        reason = trimming_rejection(cost, max_accuracy_drop, trimming_comparison)
        if reason is None:
            note = trimming_note(cost, max_accuracy_drop, trimming_comparison)
            vocabulary = trim.model_copy(update={"reason": note})
            shipped_validation_accuracy = trimmed_accuracy
            logits, result = trimmed_logits, trimmed_parity
            files = {
                "full_vocabulary_file": FULL_ONNX_FILE,
                "full_vocabulary_tokenizer": FULL_TOKENIZER_FILE,
            }
        else:
            vocabulary = vocabulary.model_copy(update={"reason": reason, "rejected_trim": trim})
            (folder / FULL_ONNX_FILE).replace(folder / ONNX_FILE)
            (folder / FULL_TOKENIZER_FILE).replace(folder / TOKENIZER_FILE)
    path, tokenizer = folder / ONNX_FILE, folder / TOKENIZER_FILE
    if shipped_validation_accuracy is None:  # the full-vocabulary graph ships: score it once
        shipped_validation_accuracy = accuracy(
            graph_predictions(path, validation), validation["label"]
        )
    return ExportManifest(
        file=ONNX_FILE,
        sha256=file_sha256(path),
        bytes=path.stat().st_size,
        opset=config.opset,
        student_sha256=student.manifest.weights_sha256,
        student_validation_accuracy=student_validation,
        validation_accuracy=shipped_validation_accuracy,
        student_test_accuracy=student_accuracy,
        test_accuracy=accuracy(logits, test["label"]),
        **result,
        tokenizer=TOKENIZER_FILE,
        tokenizer_sha256=file_sha256(tokenizer),
        vocabulary=vocabulary,
        max_length=max_length,
        num_heads=model.config.num_attention_heads,
        hidden_size=model.config.hidden_size,
        optimize_graph=config.optimize_graph,
        parity_tolerance=config.parity_tolerance,
        trimming_comparison=trimming_comparison,
        **files,
    )
