"""The edge bundle's layout and manifest: one definition shared by the writer and the runtime.

Standard library and pydantic only, so the torch-free runtime can import it. Format 2 is the
Hugging Face ONNX layout that transformers.js, Optimum and ONNX Runtime Mobile read as it is:

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
from typing import Any

from pydantic import BaseModel, ConfigDict

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


class TensorInfo(BaseModel):
    """One graph input or output: its name, dtype, shape (a string names a dynamic axis)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str
    dtype: str
    shape: list[int | str]
    dynamic_axes: dict[str, str]  # axis number -> its name


class GraphInfo(BaseModel):
    """What the bundle's manifest says about its graph (deploy.bundle.describe_graph)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    opset: int
    ir_version: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class BundleQuantization(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    method: str  # "static", "dynamic", "dynamic_matmul_only" or "fp32"
    weight_type: str | None = None
    per_channel: bool | None = None


class BundleManifest(BaseModel):
    """`manifest.json`, written by `deploy.bundle` and read by the runtime: one type for both.

    Every field is covered by `signature` (over the JSON as written, see `manifest_signature`).
    Fields a format-1 bundle or an older writer did not write have defaults; the writer writes
    only the fields it sets (`as_json`), so the JSON keeps the shape edge runtimes read."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    format_version: int
    model: str | None = None  # the graph the runtime loads: INT8_MODEL or FP32_MODEL (format 2)
    mobile_model: str | None = None  # the ORT-format copy of `model`, when the bundle carries one
    mobile_operators: str | None = None  # its reduced-operator config (ORT Mobile custom builds)
    opset: int | None = None
    ir_version: int | None = None
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    min_onnxruntime: str = "0"
    max_length: int
    quantization: BundleQuantization | None = None
    test_metrics: dict[str, float] = {}
    mlflow_run_id: str | None = None
    model_version: str | None = None
    teacher_sha256: str | None = None
    student_sha256: str | None = None
    data_fingerprint: str | None = None
    built_with: dict[str, str] = {}
    created_at: str | None = None
    files: dict[str, str] = {}  # relative POSIX path -> sha256
    signature: str = ""

    @property
    def legacy(self) -> bool:
        return self.format_version == LEGACY_FORMAT_VERSION

    def as_json(self) -> dict[str, Any]:
        """The fields this manifest was given, as `manifest.json` holds (and signs) them."""
        return self.model_dump(mode="json", exclude_unset=True)

    def signed(self, files: Mapping[str, str]) -> BundleManifest:
        """This manifest with its files' hashes and the signature over everything."""
        unsigned = self.model_copy(update={"files": dict(files)})
        return unsigned.model_copy(update={SIGNATURE: manifest_signature(unsigned.as_json())})


def model_file(quantized: bool) -> str:
    return INT8_MODEL if quantized else FP32_MODEL


def mobile_files(model: str) -> tuple[str, str]:
    """The ORT-format graph and its operator config beside `model` (as the converter names them)."""
    stem = model.removesuffix(".onnx")
    return f"{stem}.ort", f"{stem}.required_operators.config"


def required_files(manifest: BundleManifest) -> tuple[str, ...]:
    """The files a bundle of this manifest's format must list and hold."""
    if manifest.legacy:
        return LEGACY_FILES
    optional = [manifest.mobile_model, manifest.mobile_operators]
    return (
        str(manifest.model),
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
