"""Distillation data augmentation: unlabelled variants of training sentences.

The teacher labels them once through the logit cache, so the student sees more of the teacher's
function than the labelled data alone shows (TinyBERT's augmentation, without a masked LM: the
bundled teacher has no MLM head, so replacements come from the corpus' own word distribution).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from distill.config import AugmentationConfig
from distill.data import DataManifest, load_split
from distill.store import Artifact, StageManifest, run_stage, stable_hash, stage_key

VERSION = 1  # bump when the augmented rows change for the same settings and data
AUGMENTED = "augmented"


class AugmentManifest(StageManifest):
    rows: int
    fingerprint: str
    data_fingerprint: str


def augment_sentence(
    words: list[str],
    vocabulary: list[str],
    weights: np.ndarray,
    config: AugmentationConfig,
    rng: np.random.Generator,
) -> list[str]:
    """One variant: each word is replaced, deleted or swapped with its neighbour at random."""
    out: list[str] = []
    for word in words:
        roll = rng.random()
        if roll < config.delete_prob:
            continue
        if roll < config.delete_prob + config.replace_prob:
            out.append(vocabulary[rng.choice(len(vocabulary), p=weights)])
        else:
            out.append(word)
    for i in range(len(out) - 1):
        if rng.random() < config.swap_prob:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def augment_texts(texts: list[str], config: AugmentationConfig) -> list[str]:
    """round(multiplier * len(texts)) new sentences, distinct from the originals and each other."""
    rng = np.random.default_rng(config.seed)
    counts = Counter(word for text in texts for word in text.split())
    vocabulary = sorted(counts)
    weights = np.array([counts[word] for word in vocabulary], dtype=np.float64)
    weights /= weights.sum()
    wanted = round(config.multiplier * len(texts))
    seen = set(texts)
    out: list[str] = []
    attempts = 0
    while len(out) < wanted and attempts < 20 * wanted:
        attempts += 1
        source = texts[rng.integers(len(texts))].split()
        candidate = " ".join(augment_sentence(source, vocabulary, weights, config, rng))
        if candidate and candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return out


def augmentation_key(config: AugmentationConfig, data: Artifact[DataManifest]) -> str:
    # The tokenizer is the data stage's (its identity is part of the data key).
    return stage_key("augment", VERSION, config.model_dump(mode="json"), data.key)


def augmentation_stage(
    store: Path,
    config: AugmentationConfig,
    data: Artifact[DataManifest],
    tokenizer_folder: Path,
    stage: str = "augment",
) -> Artifact[AugmentManifest]:
    """`stage` names the folder: "student_augment" holds the same rows in a student's own ids
    (the texts depend only on the train texts and the settings, so they are the same)."""
    return run_stage(
        store,
        stage,
        augmentation_key(config, data),
        lambda folder: build_augmentation(config, data, tokenizer_folder, folder),
        AugmentManifest,
    )


def build_augmentation(
    config: AugmentationConfig, data: Artifact[DataManifest], tokenizer_folder: Path, folder: Path
) -> AugmentManifest:
    from datasets import Dataset

    from distill.losses import UNLABELLED
    from distill.models import load_tokenizer

    texts = augment_texts(load_split(data.path, "train")["text"], config)
    encoded = load_tokenizer(str(tokenizer_folder))(
        texts, truncation=True, max_length=data.manifest.max_length
    )
    Dataset.from_dict(
        {
            "text": texts,
            "label": [UNLABELLED] * len(texts),
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
        }
    ).save_to_disk(str(folder / AUGMENTED))
    return AugmentManifest(
        rows=len(texts),
        fingerprint=stable_hash(texts, data.manifest.fingerprint, length=24),
        data_fingerprint=data.manifest.fingerprint,
    )


def load_augmented(augmented: Artifact[AugmentManifest]):
    from datasets import load_from_disk

    return load_from_disk(str(augmented.path / AUGMENTED))
