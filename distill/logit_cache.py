"""Teacher logit cache: the teacher runs once over the train split; students read a memmap.

The key covers exactly what the logits depend on: the teacher's weights and the tokenized data
(whose fingerprint includes the tokenizer and max length). Temperature is applied at training
time, so sweeping it reuses the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.data import load_split
from distill.models import load_classifier
from distill.store import Artifact, file_sha256, run_stage, stable_hash
from distill.training import predict_logits

LOGITS_FILE = "train_logits.npy"


class CacheError(RuntimeError):
    """The cache on disk does not match its manifest."""


def cache_key(teacher: Artifact, data: Artifact) -> str:
    return stable_hash("logits", teacher.manifest["weights_sha256"], data.manifest["fingerprint"])


def logit_cache_stage(
    workdir: Path, teacher: Artifact, data: Artifact, batch_size: int = 128
) -> Artifact:
    return run_stage(
        workdir,
        "logit_cache",
        cache_key(teacher, data),
        lambda folder: build_logit_cache(teacher, data, folder, batch_size),
    )


def build_logit_cache(
    teacher: Artifact, data: Artifact, folder: Path, batch_size: int
) -> dict[str, Any]:
    model = load_classifier(teacher.path)
    logits = predict_logits(model, load_split(data.path, "train"), batch_size)
    np.save(folder / LOGITS_FILE, logits)
    return {
        "file": LOGITS_FILE,
        "split": "train",
        "shape": list(logits.shape),
        "dtype": str(logits.dtype),
        "sha256": file_sha256(folder / LOGITS_FILE),
        "teacher_sha256": teacher.manifest["weights_sha256"],
        "data_fingerprint": data.manifest["fingerprint"],
    }


def open_logits(cache: Artifact, verify: bool = True) -> np.ndarray:
    """The cached train logits as a read-only memmap, checked against the manifest."""
    path = cache.file(cache.manifest["file"])
    if verify and file_sha256(path) != cache.manifest["sha256"]:
        raise CacheError(f"logit cache {path} does not match the checksum in its manifest")
    logits = np.load(path, mmap_mode="r")
    if (
        list(logits.shape) != list(cache.manifest["shape"])
        or str(logits.dtype) != cache.manifest["dtype"]
    ):
        raise CacheError(
            f"logit cache {path} has shape {logits.shape} {logits.dtype}, "
            f"manifest says {cache.manifest['shape']} {cache.manifest['dtype']}"
        )
    return logits
