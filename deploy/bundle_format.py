"""The edge bundle's layout and manifest: one definition shared by the writer and the runtime.

Standard library only, so the torch-free runtime can import it. Format 2 is the Hugging Face
ONNX layout that transformers.js, Optimum and ONNX Runtime Mobile read as it is:

    config.json                  the student's architecture (shipped vocab_size, id2label)
    tokenizer.json               the tokenizer whose ids the graph reads (trimmed or not)
    tokenizer_config.json        special tokens and model_max_length (= the bundle's max_length)
    special_tokens_map.json
    onnx/model_quantized.onnx    the INT8 graph (onnx/model.onnx when fp32 ships)
    onnx/model_quantized.ort     the same graph in ORT format, for ONNX Runtime Mobile ...
    onnx/model_quantized.required_operators.config   ... and its reduced-operator config
    golden.json                  expected outputs of the build machine's runtime
    manifest.json                every other file's sha256, signed; written last

Format 1 (`model.onnx`, `tokenizer.json`, `labels.json`, `golden.json` side by side) is still
read for one release.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, TypedDict

FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1  # still read for one release, with a warning
READABLE_FORMATS = (LEGACY_FORMAT_VERSION, FORMAT_VERSION)

MANIFEST = "manifest.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GOLDEN = "golden.json"
INT8_MODEL = "onnx/model_quantized.onnx"  # transformers.js `dtype: 'q8'`, Optimum file_name
FP32_MODEL = "onnx/model.onnx"  # transformers.js `dtype: 'fp32'`
MODELS = (INT8_MODEL, FP32_MODEL)
SIGNATURE = "signature"  # the manifest field holding manifest_signature()

# Format 1 names.
LEGACY_MODEL = "model.onnx"
LEGACY_LABELS = "labels.json"
LEGACY_FILES = (LEGACY_MODEL, TOKENIZER, LEGACY_LABELS, GOLDEN)

REEXPORT_HINT = (
    "re-export it with this release: `distillery run <config>` writes `<workdir>/bundle/` in "
    "the current layout (finished stages are reused, so only the bundle is rebuilt)"
)


class BundleManifest(TypedDict, total=False):
    """`manifest.json`. Every field is covered by `signature`."""

    format_version: int
    model: str  # the graph the runtime loads: INT8_MODEL or FP32_MODEL (format 2)
    mobile_model: str | None  # the ORT-format copy of `model`, when the bundle carries one
    mobile_operators: str | None  # its reduced-operator config (ORT Mobile custom builds)
    opset: int
    ir_version: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    min_onnxruntime: str
    max_length: int
    quantization: dict[str, Any]
    test_metrics: dict[str, float]
    mlflow_run_id: str
    model_version: str
    teacher_sha256: str
    student_sha256: str
    data_fingerprint: str
    built_with: dict[str, str]
    created_at: str
    files: dict[str, str]  # relative POSIX path -> sha256
    signature: str


def model_file(quantized: bool) -> str:
    return INT8_MODEL if quantized else FP32_MODEL


def mobile_files(model: str) -> tuple[str, str]:
    """The ORT-format graph and its operator config beside `model` (as the converter names them)."""
    stem = model.removesuffix(".onnx")
    return f"{stem}.ort", f"{stem}.required_operators.config"


def required_files(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The files a bundle of this manifest's format must list and hold."""
    if manifest.get("format_version") == LEGACY_FORMAT_VERSION:
        return LEGACY_FILES
    optional = [manifest.get("mobile_model"), manifest.get("mobile_operators")]
    return (
        str(manifest.get("model")),
        CONFIG,
        TOKENIZER,
        TOKENIZER_CONFIG,
        GOLDEN,
        *(name for name in optional if name),
    )


def is_inside(name: str) -> bool:
    """A relative POSIX path that stays inside the bundle folder (no `..`, `.`, `\\`, `/x`)."""
    path = PurePosixPath(name)
    return (
        bool(name)
        and "\\" not in name
        and not path.is_absolute()
        and all(part not in ("", ".", "..") for part in name.split("/"))
    )


def manifest_signature(manifest: Mapping[str, Any]) -> str:
    """sha256 over the sorted (file, sha256) list and the rest of the manifest, canonically
    serialised, without the signature field itself.

    An integrity check (edits and corruption are detected), not authenticity: anyone who can
    write the bundle can recompute it. There is no key.
    """
    content = {key: value for key, value in manifest.items() if key != SIGNATURE}
    files = content.get("files")
    signed = {
        "files": sorted(files.items()) if isinstance(files, dict) else files,
        "manifest": content,
    }
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
