"""Quantize stage: dynamic INT8 with onnxruntime, scored on the test split against fp32."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from deploy.onnx_eval import onnx_logits, open_session
from distill.config import ExportConfig
from distill.data import load_split
from distill.store import Artifact, file_sha256, run_stage, stable_hash

INT8_FILE = "model.int8.onnx"


def quantize_stage(
    workdir: Path, config: ExportConfig, export: Artifact, data: Artifact
) -> Artifact:
    key = stable_hash(
        "quantize",
        config.quantization_per_channel,
        export.manifest["sha256"],
        data.manifest["fingerprint"],
    )
    return run_stage(
        workdir, "quantize", key, lambda folder: build_quantized(config, export, data, folder)
    )


def quantize_int8(source: Path, target: Path, per_channel: bool) -> None:
    prepared = target.with_name("prepared.onnx")
    logging.getLogger("root").setLevel(logging.ERROR)  # quant tools log through the root logger
    # Symbolic shape inference fails on BERT graphs; ONNX shape inference is enough here.
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(
        str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=per_channel
    )
    prepared.unlink()


def build_quantized(
    config: ExportConfig, export: Artifact, data: Artifact, folder: Path
) -> dict[str, Any]:
    path = folder / INT8_FILE
    quantize_int8(export.file(export.manifest["file"]), path, config.quantization_per_channel)
    test = load_split(data.path, "test")
    labels = np.asarray(test["label"])
    fp32 = onnx_logits(
        open_session(export.file(export.manifest["file"])),
        test["input_ids"],
        test["attention_mask"],
    )
    int8 = onnx_logits(open_session(path), test["input_ids"], test["attention_mask"])
    accuracy = float(np.mean(int8.argmax(-1) == labels))
    return {
        "file": INT8_FILE,
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "method": "dynamic",
        "weight_type": "QInt8",
        "per_channel": config.quantization_per_channel,
        "test_accuracy": accuracy,
        "fp32_test_accuracy": float(np.mean(fp32.argmax(-1) == labels)),
        "accuracy_drop": float(np.mean(fp32.argmax(-1) == labels)) - accuracy,
        "label_agreement_with_fp32": float(np.mean(int8.argmax(-1) == fp32.argmax(-1))),
    }
