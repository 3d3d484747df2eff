"""Bundle stage: everything an edge device needs to classify text, in one verifiable folder.

`<workdir>/bundle/` is laid out as Hugging Face ONNX models are (deploy/bundle_format.py), so
transformers.js (Node and browsers), Optimum and ONNX Runtime Mobile load it as it is: the
student's `config.json` (with the shipped vocabulary size and the label names), the tokenizer
files, the INT8 graph at `onnx/model_quantized.onnx` and its ORT-format copy, golden examples,
and a manifest (written last) with every other file's sha256, the graph's inputs and the run's
provenance. It is built in a temporary sibling and swapped into place, so it is never
half-written; `<workdir>/bundle.tar.gz` is the same folder as one file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnxruntime as ort
import tokenizers

from deploy.bundle_format import (
    CONFIG,
    FORMAT_VERSION,
    GOLDEN,
    MANIFEST,
    SPECIAL_TOKENS_MAP,
    TOKENIZER,
    TOKENIZER_CONFIG,
    BundleManifest,
    BundleQuantization,
    GraphInfo,
    TensorInfo,
    mobile_files,
    model_file,
)
from deploy.runtime import (
    Bundle,
    BundleError,
    open_bundle,
    predict,
    verify_bundle,
    version_tuple,
    with_graph,
)
from distill.files import atomic_path, file_sha256, write_json_atomic
from distill.store import Artifact

if TYPE_CHECKING:
    from deploy.chain import RunArtifacts
    from deploy.quantize import QuantizeManifest
    from distill.evaluation import EvaluationManifest

BUNDLE_DIR = "bundle"
GOLDEN_COUNT = 8
# Bumped when the bundle holds something different for the same stages (2: the Hugging Face
# ONNX layout, config and tokenizer config, the ORT-format graph for ONNX Runtime Mobile).
VERSION = FORMAT_VERSION
# The ORT-format graph must reproduce the golden examples this closely at build time (same
# machine, same onnxruntime: it is the same graph, optimised ahead of time).
MOBILE_TOLERANCE = 1e-5
# Tokenizer settings of the training machine that mean nothing in a bundle.
DROPPED_TOKENIZER_KEYS = ("is_local", "local_files_only", "max_length")

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
    quantization: BundleQuantization
    test_metrics: Mapping[str, float]
    provenance: Mapping[str, str]  # mlflow run id, model version, teacher hash, data fingerprint
    golden_texts: tuple[str, ...]
    # The student's config.json with the SHIPPED vocab_size (a trimmed vocabulary shrinks it)
    # and its tokenizer_config.json; label names and max length are written over them.
    model_config: Mapping[str, Any]
    tokenizer_config: Mapping[str, Any]
    mobile: bool = True  # also ship the graph in ORT format (ONNX Runtime Mobile)


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

    quantized, data, student = artifacts.quantize, artifacts.data, artifacts.student
    model_config = json.loads(student.file(CONFIG).read_text())
    if quantized.manifest.trimmed:
        model_config["vocab_size"] = artifacts.export.manifest.vocabulary.kept_size
    inputs = BundleInputs(
        onnx_path=quantized.file(quantized.manifest.file),
        # The quantize stage carries the tokenizer that matches its model (a trimmed
        # vocabulary changes the ids), so the bundle takes both from there.
        tokenizer_path=quantized.file(quantized.manifest.tokenizer),
        label_names=tuple(data.manifest.label_names),
        max_length=data.manifest.max_length,
        quantization=BundleQuantization(
            method=quantized.manifest.method,
            weight_type=quantized.manifest.weight_type,
            per_channel=quantized.manifest.per_channel,
        ),
        test_metrics=collect_test_metrics(artifacts.evaluation, quantized),
        provenance={
            "mlflow_run_id": str(run_id),
            "model_version": str(model_version),
            "teacher_sha256": artifacts.teacher.manifest.weights_sha256,
            "student_sha256": artifacts.student.manifest.weights_sha256,
            "data_fingerprint": data.manifest.fingerprint,
        },
        golden_texts=tuple(golden_texts(load_split(data.path, "test")["text"])),
        model_config=model_config,
        tokenizer_config=json.loads(student.file(TOKENIZER_CONFIG).read_text()),
    )
    folder = build_bundle(inputs, Path(workdir) / folder_name)
    if tarball:
        write_tarball(folder, tarball_path(folder))
    return folder


def bundle_bytes(folder: Path) -> int:
    """The bundle's size on disk: every file, those under `onnx/` included."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


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
    model = model_file(quantized=inputs.quantization.method != "fp32")
    (folder / model).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(inputs.onnx_path, folder / model)
    shutil.copyfile(inputs.tokenizer_path, folder / TOKENIZER)
    graph = describe_graph(folder / model)
    width = graph.outputs[0].shape[-1]
    if isinstance(width, int) and width != len(inputs.label_names):
        raise BundleError(f"model gives {width} scores for {len(inputs.label_names)} labels")
    config = model_config(inputs.model_config, inputs.label_names, embedding_rows(folder / model))
    tokenizer = tokenizer_config(inputs.tokenizer_config, inputs.max_length)
    write_json(folder / CONFIG, config)
    write_json(folder / TOKENIZER_CONFIG, tokenizer)
    write_json(folder / SPECIAL_TOKENS_MAP, special_tokens_map(tokenizer))
    mobile_model, mobile_operators = write_mobile(folder, model) if inputs.mobile else (None, None)
    manifest = BundleManifest(
        format_version=FORMAT_VERSION,
        model=model,
        mobile_model=mobile_model,
        mobile_operators=mobile_operators,
        opset=graph.opset,
        ir_version=graph.ir_version,
        inputs=graph.inputs,
        outputs=graph.outputs,
        min_onnxruntime=min_onnxruntime(graph.opset, graph.ir_version),
        max_length=inputs.max_length,
        quantization=inputs.quantization,
        test_metrics=dict(inputs.test_metrics),
        **inputs.provenance,
        built_with={"onnxruntime": ort.__version__, "tokenizers": tokenizers.__version__},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    runtime = open_bundle(folder, manifest, threads=1)
    examples = golden_examples(runtime, inputs.golden_texts)
    if mobile_model is not None:
        check_mobile(with_graph(runtime, folder / mobile_model, threads=1), examples)
    write_json(folder / GOLDEN, {"examples": examples})
    # The signature covers the file hashes and the rest.
    signed = manifest.signed({name: file_sha256(folder / name) for name in bundle_files(folder)})
    write_json_atomic(folder / MANIFEST, signed.as_json())  # last: its presence means "complete"
    verify_bundle(folder)  # what we ship must pass the runtime's own checks


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def bundle_files(folder: Path) -> list[str]:
    """Every file of the folder but the manifest, as sorted relative POSIX paths."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name != MANIFEST
    )


def model_config(
    student: Mapping[str, Any], label_names: Sequence[str], vocab_rows: int | None
) -> dict[str, Any]:
    """The student's config.json describing the shipped graph: its label names, and the
    vocabulary size the graph's embedding really has (checked when the graph shows it)."""
    config = dict(student)
    if vocab_rows is not None and config.get("vocab_size") != vocab_rows:
        raise BundleError(
            f"{CONFIG} says vocab_size {config.get('vocab_size')!r}, but the graph's word "
            f"embedding has {vocab_rows} rows"
        )
    config["id2label"] = {str(index): label for index, label in enumerate(label_names)}
    config["label2id"] = {label: index for index, label in enumerate(label_names)}
    config["num_labels"] = len(label_names)
    for key in ("dtype", "torch_dtype"):
        config.pop(key, None)  # what the PyTorch student was trained in, not the graph
    return config


def tokenizer_config(student: Mapping[str, Any], max_length: int) -> dict[str, Any]:
    """The student's tokenizer_config.json, truncating where the bundle's runtime truncates
    (transformers.js truncates at `model_max_length`)."""
    config = {key: value for key, value in student.items() if key not in DROPPED_TOKENIZER_KEYS}
    config["model_max_length"] = max_length
    return config


def special_tokens_map(tokenizer: Mapping[str, Any]) -> dict[str, str]:
    return {
        key: value
        for key, value in tokenizer.items()
        if key.endswith("_token") and isinstance(value, str)
    }


def embedding_rows(path: Path) -> int | None:
    """Rows of the word embedding that `input_ids` indexes (through a DequantizeLinear when
    INT8, or a fused EmbedLayerNormalization), or None when the graph does not show it."""
    model = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1:2] == ["input_ids"]:
            table = node.input[0]
        elif node.op_type == "EmbedLayerNormalization" and node.input[:1] == ["input_ids"]:
            table = node.input[2]
        else:
            continue
        producer = producers.get(table)
        if producer is not None and producer.op_type == "DequantizeLinear":
            table = producer.input[0]
        shape = shapes.get(table)
        return int(shape[0]) if shape else None
    return None


def write_mobile(folder: Path, model: str) -> tuple[str, str]:
    """Convert the graph to ORT format beside it (ONNX Runtime Mobile reads only that) with the
    reduced-operator config a custom mobile build is made from; return both relative paths."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    ort_model, operators = mobile_files(model)
    converter_log = logging.getLogger("ort_format_model.utils")  # names the temporary folder
    level = converter_log.level
    converter_log.setLevel(logging.WARNING)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ort-") as tmp,
            contextlib.redirect_stdout(io.StringIO()),  # the converter prints its progress
        ):
            convert_onnx_models_to_ort(
                folder / model, output_dir=Path(tmp), optimization_styles=[OptimizationStyle.Fixed]
            )
            shutil.move(Path(tmp) / Path(ort_model).name, folder / ort_model)
            lines = (Path(tmp) / Path(operators).name).read_text().splitlines(keepends=True)
    finally:
        converter_log.setLevel(level)
    # The converter names its temporary input path in a comment: name the bundle's file instead.
    (folder / operators).write_text(
        "".join(f"# - {ort_model}\n" if line.startswith("# - ") else line for line in lines)
    )
    return ort_model, operators


def golden_examples(runtime: Bundle, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Expected outputs from the runtime's own code path on the shipped model, one text at a
    time (batch 1, one thread), exactly as the self-test will rerun them."""
    examples = []
    for text in texts:
        result = predict(runtime, [text])[0]
        if "error" in result:
            raise BundleError(f"golden text {text!r}: {result['error']}")
        examples.append({"text": text, **result})
    return examples


def check_mobile(mobile: Bundle, examples: Sequence[Mapping[str, Any]]) -> None:
    """The ORT-format graph must give the golden examples' labels and probabilities."""
    for example in examples:
        result = predict(mobile, [example["text"]])[0]
        expected, actual = example["probabilities"], result.get("probabilities", {})
        difference = max(abs(actual.get(k, float("inf")) - v) for k, v in expected.items())
        if result.get("label") != example["label"] or difference > MOBILE_TOLERANCE:
            raise BundleError(
                f"the ORT-format graph gives {result} for golden text {example['text']!r}, "
                f"expected {example['label']} (probabilities differ by {difference:.3g})"
            )


def describe_graph(path: Path) -> GraphInfo:
    """Opset, IR version and the inputs/outputs (name, dtype, shape, dynamic axes) of a model."""
    model = onnx.load(str(path), load_external_data=False)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return GraphInfo(
        opset=int(opset),
        ir_version=int(model.ir_version),
        inputs=[_describe_value(value) for value in model.graph.input],
        outputs=[_describe_value(value) for value in model.graph.output],
    )


def _describe_value(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    shape: list[int | str] = [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "dynamic")
        for dim in tensor.shape.dim
    ]
    return TensorInfo(
        name=value.name,
        dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        shape=shape,
        dynamic_axes={str(axis): dim for axis, dim in enumerate(shape) if isinstance(dim, str)},
    )


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
    """`folder`'s files at the archive's top level (`onnx/` as a folder), reproducibly (no
    times or owners; tarfile adds a folder's entries in sorted order)."""
    with (
        atomic_path(archive) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name, filter=_anonymous)
    return archive


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info
