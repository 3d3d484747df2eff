"""The edge runtime: load a verified bundle and classify texts with ONNX Runtime.

Imports only onnxruntime, tokenizers, numpy and the standard library (never torch or
transformers), so it runs on a device that has nothing else installed.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import tarfile
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError
from tokenizers import Encoding, Tokenizer

from deploy.bundle_format import (
    CONFIG,
    FORMAT_VERSION,
    GOLDEN,
    LEGACY_LABELS,
    LEGACY_MODEL,
    MANIFEST,
    MODELS,
    READABLE_FORMATS,
    REEXPORT_HINT,
    SIGNATURE,
    TOKENIZER,
    BundleManifest,
    is_inside,
    manifest_signature,
    required_files,
)
from deploy.onnx_eval import open_session  # ONNX or ORT format: onnxruntime tells them apart
from distill.files import file_sha256

__all__ = [  # the format's names, re-exported for callers that import them from here
    "FORMAT_VERSION",
    "GOLDEN",
    "MANIFEST",
    "SIGNATURE",
    "TOKENIZER",
    "manifest_signature",
]

log = logging.getLogger(__name__)

# Archive limits, checked from the tar headers before anything is extracted. A bundle is tens
# of MB (the default run's is 11 MB) and holds about ten files.
MAX_ARCHIVE_BYTES = 128 << 20
MAX_ARCHIVE_MEMBERS = 64

# Which tokenizer output feeds which graph input.
FEEDS = {
    "input_ids": lambda e: e.ids,
    "attention_mask": lambda e: e.attention_mask,
    "token_type_ids": lambda e: e.type_ids,
}


class BundleError(ValueError):
    """A bundle that cannot be trusted or run; the message names the file or field."""


@dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded, verified bundle: everything predict() needs, held in memory."""

    manifest: BundleManifest
    labels: tuple[str, ...]
    tokenizer: Tokenizer
    session: ort.InferenceSession
    golden: tuple[Mapping[str, Any], ...]

    @property
    def max_length(self) -> int:
        return self.manifest.max_length


def load_bundle(source: Path | str, threads: int = 0, max_bytes: int = MAX_ARCHIVE_BYTES) -> Bundle:
    """Load a bundle folder or `.tar.gz`, refusing it unless the manifest's signature and every
    file's sha256 match.

    `threads` is onnxruntime's intra-op thread count (0 lets onnxruntime choose); `max_bytes`
    caps the unpacked size of an archive.
    """
    source = Path(source)
    if source.is_dir():
        return open_bundle(source, verify_bundle(source), threads)
    if not source.is_file():
        raise BundleError(f"bundle not found: {source}")
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        root = extract_archive(source, Path(tmp), max_bytes)
        # Everything is read into memory, so the extracted files can go afterwards.
        return open_bundle(root, verify_bundle(root), threads)


def verify_bundle(folder: Path) -> BundleManifest:
    """The bundle's manifest, after checking its format, its signature and every file's sha256.

    The signature is checked before any other field is read, so an edited manifest (a shorter
    `max_length`, a fake accuracy) is refused rather than believed. Only the format version
    and the signature are read from the raw JSON; everything else from the typed manifest.
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"bundle {folder} has no {MANIFEST}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"bundle manifest {path} is not valid JSON: {err}") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_FORMATS:
        raise BundleError(
            f"bundle manifest {path}: unknown bundle format version {version!r} (this runtime "
            f"reads {', '.join(map(str, READABLE_FORMATS))}): {REEXPORT_HINT}"
        )
    signature = raw.get(SIGNATURE)
    if not isinstance(signature, str):
        raise BundleError(f"bundle manifest {path} has no signature: rebuild the bundle")
    if not hmac.compare_digest(signature, manifest_signature(raw)):
        raise BundleError(
            f"bundle manifest {path} does not match its signature: it was edited after the build"
        )
    manifest = typed_manifest(path, raw)
    if not manifest.legacy and manifest.model not in MODELS:
        raise BundleError(f"bundle manifest {path} 'model' must be one of {list(MODELS)}")
    for name in required_files(manifest):
        if name not in manifest.files:
            raise BundleError(f"bundle manifest {path} does not list the file '{name}'")
    for name, expected in manifest.files.items():
        if not is_inside(name):  # a listed path may not leave the folder
            raise BundleError(f"bundle manifest {path} lists a file outside the bundle: '{name}'")
        file = folder / name
        if not file.is_file():
            raise BundleError(f"bundle file '{name}' is missing")
        if file_sha256(file) != expected:
            raise BundleError(f"bundle file '{name}' does not match its sha256 in {MANIFEST}")
    if manifest.legacy:
        log.warning(
            "bundle %s has the format-1 layout, read for one more release: %s",
            folder,
            REEXPORT_HINT,
        )
    _check_onnxruntime(manifest.min_onnxruntime)
    return manifest


def typed_manifest(path: Path, raw: dict[str, Any]) -> BundleManifest:
    """The (signed) JSON as a `BundleManifest`; a missing or mistyped field is named."""
    try:
        return BundleManifest.model_validate_json(json.dumps(raw))
    except ValidationError as err:
        problem = err.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        raise BundleError(
            f"bundle manifest {path} field '{field}': {problem['msg']}: rebuild the bundle"
        ) from None


def open_bundle(folder: Path, manifest: BundleManifest, threads: int = 0) -> Bundle:
    """Load the files of an (already verified) bundle folder into memory."""
    legacy = manifest.legacy
    labels = read_labels(folder / LEGACY_LABELS) if legacy else config_labels(folder / CONFIG)
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
    pad_id, pad_token = pad_of(tokenizer)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # no fixed padding length
    tokenizer.enable_truncation(manifest.max_length)
    session = open_session(folder / (LEGACY_MODEL if legacy else str(manifest.model)), threads)
    unknown = [i.name for i in session.get_inputs() if i.name not in FEEDS]
    if unknown:
        raise BundleError(f"bundle model has inputs this runtime cannot feed: {unknown}")
    width = session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != len(labels):
        raise BundleError(f"bundle model gives {width} scores for {len(labels)} labels")
    golden_path = folder / GOLDEN
    golden = json.loads(golden_path.read_text())["examples"] if golden_path.is_file() else []
    return Bundle(manifest, labels, tokenizer, session, tuple(golden))


def with_graph(bundle: Bundle, path: Path, threads: int = 0) -> Bundle:
    """The same bundle running another copy of its graph, e.g. the ORT-format one
    (`manifest.mobile_model`) that ONNX Runtime Mobile reads."""
    return replace(bundle, session=open_session(path, threads))


def read_labels(path: Path) -> tuple[str, ...]:
    """Format 1's `labels.json`: the label names in output order."""
    labels = json.loads(path.read_text())
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise BundleError(f"bundle {path.name} must be a list of label names")
    return tuple(labels)


def config_labels(path: Path) -> tuple[str, ...]:
    """The label names in output order, from `config.json`'s id2label ({"0": "negative", ...})."""
    try:
        id2label = json.loads(path.read_text()).get("id2label")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise BundleError(f"bundle {path.name} is not a JSON object: {err}") from None
    if not isinstance(id2label, dict) or not id2label:
        raise BundleError(f"bundle {path.name} has no 'id2label' table")
    expected = [str(index) for index in range(len(id2label))]
    if sorted(id2label, key=lambda key: (len(key), key)) != expected:
        raise BundleError(
            f"bundle {path.name} 'id2label' must number the labels 0..{len(id2label) - 1}"
        )
    return tuple(str(id2label[key]) for key in expected)


PAD_TOKENS = ("[PAD]", "<pad>")  # BERT-style, RoBERTa/MPNet-style


def pad_of(tokenizer: Tokenizer) -> tuple[int, str]:
    """The pad id and token: the tokenizer's padding settings, else its pad token's id.

    Not always 0: RoBERTa and MPNet pad with 1 and number positions from where it occurs, so a
    batch padded with another id scores differently from its texts one by one.
    """
    if tokenizer.padding:
        return int(tokenizer.padding["pad_id"]), str(tokenizer.padding["pad_token"])
    for token in PAD_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id), token
    return 0, "[PAD]"


def predict(bundle: Bundle, texts: Sequence[object], batch_size: int = 32) -> list[dict[str, Any]]:
    """One result per input, in order: label, probabilities and whether it was truncated.

    A bad item (not a string, empty, or not encodable text) gets `{"error": ...}` and does not
    affect the others.
    """
    results: list[dict[str, Any]] = [{} for _ in texts]
    valid: list[int] = []
    for index, text in enumerate(texts):
        problem = text_problem(text)
        if problem:
            results[index] = {"error": problem}
        else:
            valid.append(index)
    for start in range(0, len(valid), batch_size):
        rows = valid[start : start + batch_size]
        encodings = bundle.tokenizer.encode_batch([texts[i] for i in rows])
        probabilities = softmax(_run(bundle, encodings))
        for index, encoding, probs in zip(rows, encodings, probabilities, strict=True):
            results[index] = {
                "label": bundle.labels[int(probs.argmax())],
                "probabilities": {
                    label: float(p) for label, p in zip(bundle.labels, probs, strict=True)
                },
                # The tokenizer keeps the cut-off tokens of a truncated text as overflow.
                "truncated": bool(encoding.overflowing),
            }
    return results


def text_problem(text: object) -> str | None:
    """Why `text` cannot be classified, or None when it can."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "text is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON's "\ud800" escapes decode to lone surrogates
        return (
            f"text is not valid Unicode (a lone surrogate U+{ord(text[err.start]):04X} at "
            f"character {err.start})"
        )
    return None


def _run(bundle: Bundle, encodings: list[Encoding]) -> np.ndarray:
    feeds = {
        graph_input.name: np.array(
            [FEEDS[graph_input.name](e) for e in encodings], dtype=_dtype(graph_input.type)
        )
        for graph_input in bundle.session.get_inputs()
    }
    return bundle.session.run(None, feeds)[0]


def _dtype(onnx_type: str) -> np.dtype:
    return np.dtype("int32" if onnx_type == "tensor(int32)" else "int64")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def extract_archive(archive: Path, target: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> Path:
    """Extract a bundle `.tar.gz` into `target` and return the folder holding its manifest.

    Every member header is checked before anything is written: at most MAX_ARCHIVE_MEMBERS
    members and `max_bytes` in all, only plain files and folders (no links, devices), and
    `tarfile`'s "data" filter (no absolute or `..` paths); extraction runs under that filter too.
    """
    target = target.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _checked_members(tar, target, archive, max_bytes)
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise BundleError(f"bundle archive {archive} cannot be read: {err}") from None
    if (target / MANIFEST).is_file():
        return target
    # Also accept an archive of the bundle folder itself (e.g. `tar czf b.tar.gz bundle/`).
    nested = [path.parent for path in target.glob(f"*/{MANIFEST}")]
    if len(nested) == 1:
        return nested[0]
    raise BundleError(f"bundle archive {archive} has no {MANIFEST}")


def _checked_members(
    tar: tarfile.TarFile, target: Path, archive: Path, max_bytes: int
) -> list[tarfile.TarInfo]:
    """The archive's members, read from the headers alone, once all of them pass the checks."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:  # headers only: a member's contents are skipped, never written
        members.append(member)
        total += member.size
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise BundleError(
                f"bundle archive {archive} has more than {MAX_ARCHIVE_MEMBERS} members: refused"
            )
        if total > max_bytes:
            raise BundleError(
                f"bundle archive {archive} unpacks to more than {max_bytes:,} bytes: refused"
            )
        _check_member(member, target)
    return members


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    name = member.name
    if member.issym() or member.islnk():
        raise BundleError(f"bundle archive member '{name}' is a link: refused")
    if not (member.isfile() or member.isdir()):
        raise BundleError(f"bundle archive member '{name}' is not a regular file: refused")
    if Path(name).is_absolute():  # the data filter would only strip the leading "/"
        raise BundleError(f"bundle archive member '{name}' escapes the target folder: refused")
    try:
        tarfile.data_filter(member, str(target))
    except (tarfile.AbsolutePathError, tarfile.OutsideDestinationError):
        raise BundleError(
            f"bundle archive member '{name}' escapes the target folder: refused"
        ) from None
    except tarfile.FilterError as err:
        raise BundleError(f"bundle archive member '{name}' is refused: {err}") from None


def _check_onnxruntime(minimum: str) -> None:
    if version_tuple(ort.__version__) < version_tuple(minimum):
        raise BundleError(
            f"bundle needs onnxruntime >= {minimum}, but {ort.__version__} is installed"
        )


def version_tuple(version: str) -> tuple[int, ...]:
    """(1, 18, 0) for "1.18", (1, 32, 0) for "1.32.0+cpu": comparable release numbers."""
    parts = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))
