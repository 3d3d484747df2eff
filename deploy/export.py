"""Export stage: the student as ONNX fp32 with dynamic batch and sequence axes, parity-checked.

The stage folder also holds the tokenizer that goes with the graph (`tokenizer.json`): the
student's own, or its trimmed version when `export.trim_vocabulary` is on.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy.onnx_eval import onnx_logits, open_session
from deploy.vocab_trim import tokenized_split, trim_vocabulary, untrimmable_reason
from distill.config import ExportConfig
from distill.data import DataManifest, load_split
from distill.metrics import accuracy
from distill.models import load_classifier
from distill.store import Artifact, StageManifest, file_sha256, run_stage, stage_key
from distill.student import StudentManifest
from distill.training import predict_logits

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
# Bumped when the exported graph changes for the same settings (2: eager attention).
VERSION = 2


class ExportManifest(StageManifest):
    file: str
    sha256: str
    bytes: int
    opset: int
    student_sha256: str
    test_accuracy: float
    max_abs_logit_diff: float
    label_agreement: float
    # The tokenizer the graph's input ids come from: the edge bundle must ship this one.
    tokenizer: str
    tokenizer_sha256: str
    vocabulary: dict[str, Any]
    max_length: int
    # For onnxruntime's BERT fusions in the quantize stage.
    num_heads: int
    hidden_size: int
    optimize_graph: bool
    parity_tolerance: float

    @property
    def trimmed(self) -> bool:
        return bool(self.vocabulary.get("trimmed"))


class ParityError(RuntimeError):
    """The exported graph does not reproduce PyTorch within tolerance."""


class LogitsOnly(torch.nn.Module):
    """Gives the exporter a plain (input_ids, attention_mask) -> logits signature."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: torch.nn.Module, path: Path, opset: int, max_length: int) -> None:
    wrapper = LogitsOnly(model).eval()  # eval on the outermost module, or dropout stays on
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
        _export(wrapper, (example_ids, example_mask), path, opset, batch, sequence)


def _export(wrapper, example, path: Path, opset: int, batch, sequence) -> None:
    torch.onnx.export(
        wrapper,
        example,
        str(path),
        dynamo=True,
        input_names=list(INPUT_NAMES),
        output_names=["logits"],
        dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUT_NAMES},
        opset_version=opset,
        external_data=False,
        verbose=False,
    )


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    return {
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()),
        "label_agreement": float(np.mean(reference.argmax(-1) == candidate.argmax(-1))),
    }


def export_key(
    config: ExportConfig, student: Artifact[StudentManifest], data: Artifact[DataManifest]
) -> str:
    return stage_key("export", VERSION, config.model_dump(mode="json"), student.key, data.key)


def export_stage(
    store: Path,
    config: ExportConfig,
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
) -> Artifact[ExportManifest]:
    return run_stage(
        store,
        "export",
        export_key(config, student, data),
        lambda folder: build_export(config, student, data, folder),
        ExportManifest,
    )


def build_export(
    config: ExportConfig,
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    folder: Path,
) -> ExportManifest:
    model = load_classifier(student.path)
    # Eager attention exports as plain MatMul/Softmax; SDPA's mask handling adds many small
    # operators that cost ~10% of batch-1 INT8 latency on this machine (docs/benchmarks.md).
    model.set_attn_implementation("eager")
    test = load_split(data.path, "test")
    max_length = data.manifest.max_length
    tokenizer = folder / TOKENIZER_FILE
    # A tokenizer that cannot be trimmed safely ships whole; the manifest says why.
    skip_reason = untrimmable_reason(student.file(TOKENIZER_FILE))
    if config.trim_vocabulary and skip_reason is None:
        untrimmed = predict_logits(model, test)
        vocabulary = trim_vocabulary(
            model,
            student.file(TOKENIZER_FILE),
            load_split(data.path, "train")["text"],
            test["text"],
            tokenizer,
        )
        vocabulary["untrimmed_test_accuracy"] = accuracy(untrimmed, test["label"])
        test = tokenized_split(tokenizer, test, max_length)  # what the device will feed
    else:
        shutil.copyfile(student.file(TOKENIZER_FILE), tokenizer)
        vocabulary = {"trimmed": False, "original_size": model.config.vocab_size}
        if config.trim_vocabulary:
            vocabulary["reason"] = skip_reason
    path = folder / ONNX_FILE
    export_onnx(model, path, config.opset, max_length)
    reference = predict_logits(model, test)
    candidate = onnx_logits(open_session(path), test["input_ids"], test["attention_mask"])
    result = parity(reference, candidate)
    if result["max_abs_logit_diff"] > config.parity_tolerance:
        raise ParityError(
            f"ONNX export differs from PyTorch by {result['max_abs_logit_diff']:.3g} "
            f"(tolerance export.parity_tolerance={config.parity_tolerance})"
        )
    return ExportManifest(
        file=ONNX_FILE,
        sha256=file_sha256(path),
        bytes=path.stat().st_size,
        opset=config.opset,
        student_sha256=student.manifest.weights_sha256,
        test_accuracy=accuracy(candidate, test["label"]),
        **result,
        tokenizer=TOKENIZER_FILE,
        tokenizer_sha256=file_sha256(tokenizer),
        vocabulary=vocabulary,
        max_length=max_length,
        num_heads=model.config.num_attention_heads,
        hidden_size=model.config.hidden_size,
        optimize_graph=config.optimize_graph,
        parity_tolerance=config.parity_tolerance,
    )
