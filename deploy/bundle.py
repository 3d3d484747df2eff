"""Bundle stage: everything an edge device needs to classify text, in one verifiable folder.

`<workdir>/bundle/` holds the INT8 model, the tokenizer, the label names, golden examples and
a manifest (written last) with every other file's sha256, the graph's inputs and the run's
provenance. It is built in a temporary sibling and swapped into place, so it is never
half-written; `<workdir>/bundle.tar.gz` is the same folder as one file.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnxruntime as ort
import tokenizers

from deploy.runtime import (
    FORMAT_VERSION,
    GOLDEN,
    LABELS,
    MANIFEST,
    MODEL,
    REQUIRED_FILES,
    SIGNATURE,
    TOKENIZER,
    BundleError,
    manifest_signature,
    open_bundle,
    predict,
    sha256,
    verify_bundle,
    version_tuple,
)
from distill.store import Artifact, write_json_atomic

if TYPE_CHECKING:
    from deploy.quantize import QuantizeManifest
    from distill.chain import RunArtifacts
    from distill.evaluation import EvaluationManifest

BUNDLE_DIR = "bundle"
GOLDEN_COUNT = 8

# Oldest onnxruntime release that implements an ai.onnx opset / reads an ONNX IR version
# (onnxruntime's compatibility table). Newer ones fall back to the version that built the bundle.
ORT_FOR_OPSET = {17: "1.12", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18"}
ORT_FOR_IR_VERSION = {8: "1.12", 9: "1.15", 10: "1.18"}


@dataclass(frozen=True)
class BundleInputs:
    """What goes into a bundle, as plain values (the stage artifacts are unpacked elsewhere)."""

    onnx_path: Path
    tokenizer_path: Path
    label_names: tuple[str, ...]
    max_length: int
    quantization: Mapping[str, Any]
    test_metrics: Mapping[str, float]
    provenance: Mapping[str, str]  # mlflow run id, model version, teacher hash, data fingerprint
    golden_texts: tuple[str, ...]


def bundle_from_stages(
    workdir: Path,
    artifacts: RunArtifacts,
    run_id: str,
    model_version: str,
    folder_name: str = BUNDLE_DIR,
    tarball: bool = True,
) -> Path:
    """Build `<workdir>/bundle/` and `<workdir>/bundle.tar.gz`; return the bundle folder.

    `folder_name` and `tarball=False` build it elsewhere first (the flow builds it aside and
    moves it to `bundle/` only once the gates have judged it)."""
    from distill.data import load_split  # datasets is only needed here, at build time

    quantized, data = artifacts.quantize, artifacts.data
    inputs = BundleInputs(
        onnx_path=quantized.file(quantized.manifest.file),
        # The quantize stage carries the tokenizer that matches its model (a trimmed
        # vocabulary changes the ids), so the bundle takes both from there.
        tokenizer_path=quantized.file(quantized.manifest.tokenizer),
        label_names=tuple(data.manifest.label_names),
        max_length=data.manifest.max_length,
        quantization={
            "method": quantized.manifest.method,
            "weight_type": quantized.manifest.weight_type,
            "per_channel": quantized.manifest.per_channel,
        },
        test_metrics=collect_test_metrics(artifacts.evaluation, quantized),
        provenance={
            "mlflow_run_id": str(run_id),
            "model_version": str(model_version),
            "teacher_sha256": artifacts.teacher.manifest.weights_sha256,
            "student_sha256": artifacts.student.manifest.weights_sha256,
            "data_fingerprint": data.manifest.fingerprint,
        },
        golden_texts=tuple(golden_texts(load_split(data.path, "test")["text"])),
    )
    folder = build_bundle(inputs, Path(workdir) / folder_name)
    if tarball:
        write_tarball(folder, tarball_path(folder))
    return folder


def tarball_path(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.tar.gz")


def collect_test_metrics(
    evaluation: Artifact[EvaluationManifest], quantized: Artifact[QuantizeManifest]
) -> dict[str, float]:
    """Test-split numbers of the PyTorch models (evaluation) and of the shipped INT8 model."""
    scores, shipped = evaluation.manifest, quantized.manifest
    return {
        "teacher_accuracy": scores.teacher_accuracy,
        "teacher_macro_f1": scores.teacher_macro_f1,
        "student_accuracy": scores.student_accuracy,
        "student_macro_f1": scores.student_macro_f1,
        "retention": scores.retention,
        "agreement": scores.agreement,
        "onnx_fp32_accuracy": shipped.fp32_test_accuracy,
        "int8_accuracy": shipped.test_accuracy,
        "int8_accuracy_drop": shipped.accuracy_drop,
        "int8_label_agreement_with_fp32": shipped.label_agreement_with_fp32,
    }


def golden_texts(texts: Sequence[str], count: int = GOLDEN_COUNT) -> list[str]:
    """The first test texts plus the longest one, so the golden set also covers truncation."""
    chosen = list(texts[: count - 1])
    longest = max(texts, key=len)
    if longest not in chosen:
        chosen.append(longest)
    return chosen


def build_bundle(inputs: BundleInputs, target: Path) -> Path:
    """Write the bundle into a temporary sibling of `target`, then swap it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_bundle(inputs, tmp)
        place_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_bundle(inputs: BundleInputs, folder: Path) -> None:
    shutil.copyfile(inputs.onnx_path, folder / MODEL)
    shutil.copyfile(inputs.tokenizer_path, folder / TOKENIZER)
    (folder / LABELS).write_text(json.dumps(list(inputs.label_names)))
    graph = describe_graph(folder / MODEL)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        **graph,
        "min_onnxruntime": min_onnxruntime(graph["opset"], graph["ir_version"]),
        "max_length": inputs.max_length,
        "quantization": dict(inputs.quantization),
        "test_metrics": dict(inputs.test_metrics),
        **inputs.provenance,
        "built_with": {"onnxruntime": ort.__version__, "tokenizers": tokenizers.__version__},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    width = graph["outputs"][0]["shape"][-1]
    if isinstance(width, int) and width != len(inputs.label_names):
        raise BundleError(f"model gives {width} scores for {len(inputs.label_names)} labels")
    examples = golden_examples(folder, manifest, inputs)
    (folder / GOLDEN).write_text(json.dumps({"examples": examples}, indent=2))
    manifest["files"] = {name: sha256(folder / name) for name in REQUIRED_FILES}
    manifest[SIGNATURE] = manifest_signature(manifest)  # covers the file hashes and the rest
    write_json_atomic(folder / MANIFEST, manifest)  # last: its presence means "complete"
    verify_bundle(folder)  # what we ship must pass the runtime's own checks


def golden_examples(
    folder: Path, manifest: Mapping[str, Any], inputs: BundleInputs
) -> list[dict[str, Any]]:
    """Expected outputs from the runtime's own code path on the INT8 model, one text at a time
    (batch 1, one thread), exactly as the self-test will rerun them."""
    runtime = open_bundle(folder, manifest, threads=1)
    examples = []
    for text in inputs.golden_texts:
        result = predict(runtime, [text])[0]
        if "error" in result:
            raise BundleError(f"golden text {text!r}: {result['error']}")
        examples.append({"text": text, **result})
    return examples


def describe_graph(path: Path) -> dict[str, Any]:
    """Opset, IR version and the inputs/outputs (name, dtype, shape, dynamic axes) of a model."""
    model = onnx.load(str(path), load_external_data=False)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return {
        "opset": int(opset),
        "ir_version": int(model.ir_version),
        "inputs": [_describe_value(value) for value in model.graph.input],
        "outputs": [_describe_value(value) for value in model.graph.output],
    }


def _describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape: list[int | str] = [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "dynamic")
        for dim in tensor.shape.dim
    ]
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": shape,
        "dynamic_axes": {str(axis): dim for axis, dim in enumerate(shape) if isinstance(dim, str)},
    }


def min_onnxruntime(opset: int, ir_version: int) -> str:
    """The oldest onnxruntime that can load the model, as far as the tables above know."""
    needed = [
        ORT_FOR_OPSET.get(opset, ort.__version__),
        ORT_FOR_IR_VERSION.get(ir_version, ort.__version__),
    ]
    return max(needed, key=version_tuple)


def place_folder(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place: `final` is the old or the new one, never a mix."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_tarball(folder: Path, archive: Path) -> Path:
    """`folder`'s files at the archive's top level, reproducibly (no times or owners)."""
    tmp = archive.with_name(f".{archive.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
            tarfile.open(fileobj=zipped, mode="w") as tar,
        ):
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name, filter=_anonymous)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info
