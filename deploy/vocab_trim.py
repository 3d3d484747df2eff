"""Vocabulary trimming: keep only the word pieces the domain uses, and the rows they embed.

Most of a small BERT student is its 30522-row word-embedding matrix, yet movie reviews use a
fraction of those word pieces. We keep every piece that occurs when tokenizing the train split,
plus every special token, renumber them contiguously in their old order, and slice the
embedding matrix to the same rows.

WordPiece matches the longest vocabulary piece first, so a word whose pieces were all kept
tokenizes exactly as before (any longer match in the trimmed vocabulary was in the full one
too). Other words become [UNK] or split differently: `oov_rates` measures how often.

The slicing happens on the PyTorch student before ONNX export, not on the ONNX initializer:
the exporter then sees a consistent model (config.vocab_size matches the matrix), the export
parity check compares the trimmed graph with the trimmed PyTorch model as usual, and nothing
depends on the exporter's initializer names.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from distill.store import ManifestRecord

UNK = "[UNK]"


def used_token_ids(tokenizer: Tokenizer, texts: Iterable[str]) -> set[int]:
    """Ids of every piece the texts tokenize to (no truncation: tails count as domain text)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    used: set[int] = set()
    for encoding in tokenizer.encode_batch(list(texts)):
        used.update(encoding.ids)
    return used


def special_token_ids(tokenizer_json: dict[str, Any]) -> set[int]:
    """Added/special tokens ([PAD], [UNK], [CLS], [SEP], [MASK] ...) and the model's unk token."""
    ids = {int(token["id"]) for token in tokenizer_json.get("added_tokens", [])}
    model = tokenizer_json["model"]
    ids.add(int(model["vocab"][model.get("unk_token", UNK)]))
    return ids


def untrimmable_reason(tokenizer_path: Path) -> str | None:
    """Why this tokenizer.json cannot be trimmed, or None when it can.

    Only WordPiece keeps its behaviour on the kept words when pieces are removed (longest match
    first). BPE merges and Unigram scores tie pieces to each other, so removing pieces there
    would silently tokenize even training text differently: such tokenizers ship untrimmed.
    """
    path = Path(tokenizer_path)
    if not path.is_file():
        return f"no {path.name} next to the student (a slow-only tokenizer)"
    model = json.loads(path.read_text()).get("model", {})
    kind = model.get("type")
    if kind != "WordPiece":
        return f"vocabulary trimming supports WordPiece tokenizers; this one is {kind}"
    if model.get("unk_token", UNK) not in model.get("vocab", {}):
        return "the WordPiece vocabulary has no unknown token for words it no longer covers"
    return None


def kept_ids(used: Iterable[int], special: Iterable[int]) -> list[int]:
    """Old ids to keep, in old order: new id i is old id kept[i]."""
    return sorted(set(used) | set(special))


def trim_tokenizer_json(tokenizer_json: dict[str, Any], kept: Sequence[int]) -> dict[str, Any]:
    """A copy of a WordPiece tokenizer.json whose vocabulary holds only `kept` (renumbered)."""
    data = copy.deepcopy(tokenizer_json)
    model = data["model"]
    if model.get("type") != "WordPiece":
        raise ValueError(f"vocabulary trimming supports WordPiece tokenizers, not {model['type']}")
    new_id = {old: new for new, old in enumerate(kept)}
    token_of = {old: token for token, old in model["vocab"].items()}
    missing = [old for old in kept if old not in token_of]
    if missing:
        raise ValueError(f"ids {missing[:5]} are not in the tokenizer's vocabulary")
    model["vocab"] = {token_of[old]: new for new, old in enumerate(kept)}
    for token in data.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    processor = data.get("post_processor") or {}
    for special in processor.get("special_tokens", {}).values():
        special["ids"] = [new_id[old] for old in special["ids"]]
    for key in ("cls", "sep"):  # BertProcessing stores [token, id] pairs
        if key in processor:
            processor[key] = [processor[key][0], new_id[processor[key][1]]]
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    return data


def slice_word_embeddings(model: torch.nn.Module, kept: Sequence[int]) -> torch.nn.Module:
    """Keep only rows `kept` of the model's input embedding (in place); returns the model."""
    old = model.get_input_embeddings()
    rows = torch.as_tensor(list(kept), dtype=torch.long)
    new = torch.nn.Embedding(len(kept), old.embedding_dim, padding_idx=_new_padding_idx(old, kept))
    with torch.no_grad():
        new.weight.copy_(old.weight[rows])
    # RoBERTa- and MPNet-style embeddings number positions from their own copy of the pad id
    # (position = pad id + 1 + index): a renumbered pad token would shift every position.
    embeddings = getattr(getattr(model, model.base_model_prefix, None), "embeddings", None)
    positions_pad = getattr(embeddings, "padding_idx", None)
    if isinstance(positions_pad, int) and new.padding_idx != positions_pad:
        raise ValueError(
            f"trimming would move the pad id from {positions_pad} to {new.padding_idx}, but this "
            "model numbers positions from it: keep every id up to the pad id"
        )
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept)
    if getattr(model.config, "pad_token_id", None) is not None:
        model.config.pad_token_id = new.padding_idx
    return model


def _new_padding_idx(old: torch.nn.Embedding, kept: Sequence[int]) -> int | None:
    return None if old.padding_idx is None else list(kept).index(old.padding_idx)


def word_pieces(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[list[str]]]:
    """For each text, its words, each as the list of pieces it tokenizes to (no specials)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    out = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        words: dict[int, list[str]] = {}
        for token, word in zip(encoding.tokens, encoding.word_ids, strict=True):
            words.setdefault(word, []).append(token)
        out.append([words[word] for word in sorted(words)])
    return out


def oov_rates(
    original: Sequence[Sequence[Sequence[str]]], trimmed: Sequence[Sequence[Sequence[str]]]
) -> dict[str, float]:
    """How much text the trimmed vocabulary no longer represents as before.

    Inputs are texts -> words -> pieces, from the full and the trimmed tokenizer. Rates are
    shares of the original pieces: `changed` counts pieces of words that tokenize differently
    (including to [UNK]); `unk` counts pieces of words that became [UNK] but were not [UNK].
    """
    total = changed = unk = 0
    for text_before, text_after in zip(original, trimmed, strict=True):
        for before, after in zip(text_before, text_after, strict=True):
            total += len(before)
            if list(before) != list(after):
                changed += len(before)
                if UNK in after and UNK not in before:
                    unk += len(before)
    if total == 0:
        return {"changed_token_rate": 0.0, "unk_token_rate": 0.0, "tokens": 0}
    return {"changed_token_rate": changed / total, "unk_token_rate": unk / total, "tokens": total}


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Input ids and attention masks as the data stage makes them (truncated, unpadded)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(list(texts))
    return [e.ids for e in encodings], [e.attention_mask for e in encodings]


class VocabularyRecord(ManifestRecord):
    """`ExportManifest.vocabulary`: whether the shipped graph's vocabulary is trimmed, and what
    trimming kept, changed and cost (the numbers are absent when no trim was measured)."""

    trimmed: bool
    original_size: int
    kept_size: int | None = None
    test_changed_token_rate: float | None = None  # share of test word pieces trimming changed
    test_unk_token_rate: float | None = None  # ... and that became the unknown token
    test_tokens: int | None = None
    fp32_embedding_bytes_saved: int | None = None
    # Accuracy points (fractions) trimming cost the trained student: on validation (what the
    # gate decides on) and on the held-out test split (reported).
    trimming_cost: float | None = None
    test_trimming_cost: float | None = None
    reason: str | None = None  # why it ships trimmed, or why not
    # A trim that was measured but not shipped (its cost was over the budget and significant).
    rejected_trim: VocabularyRecord | None = None


def trim_vocabulary(
    model: torch.nn.Module,
    tokenizer_path: Path,
    train_texts: Sequence[str],
    test_texts: Sequence[str],
    target_tokenizer_path: Path,
) -> VocabularyRecord:
    """Trim `model` in place and write the trimmed tokenizer.json; return what it cost and won."""
    tokenizer_json = json.loads(Path(tokenizer_path).read_text())
    full = Tokenizer.from_str(json.dumps(tokenizer_json))
    # Ids up to the pad id keep their numbers: RoBERTa/MPNet derive positions from the pad id
    # (pad id + 1 + offset), so it must not move (slice_word_embeddings checks it did not).
    below_pad = set(range(int(getattr(model.config, "pad_token_id", None) or 0) + 1))
    special = special_token_ids(tokenizer_json) | below_pad
    kept = kept_ids(used_token_ids(full, train_texts), special)
    trimmed_json = trim_tokenizer_json(tokenizer_json, kept)
    target_tokenizer_path.write_text(json.dumps(trimmed_json, ensure_ascii=False))
    trimmed = Tokenizer.from_file(str(target_tokenizer_path))
    embedding = model.get_input_embeddings().weight
    bytes_per_row = embedding.shape[1] * embedding.element_size()
    original_size = embedding.shape[0]
    slice_word_embeddings(model, kept)
    rates = oov_rates(word_pieces(full, test_texts), word_pieces(trimmed, test_texts))
    return VocabularyRecord(
        trimmed=True,
        original_size=original_size,
        kept_size=len(kept),
        test_changed_token_rate=rates["changed_token_rate"],
        test_unk_token_rate=rates["unk_token_rate"],
        test_tokens=rates["tokens"],
        fp32_embedding_bytes_saved=(original_size - len(kept)) * bytes_per_row,
    )


def tokenized_split(tokenizer_path: Path, split, max_length: int):
    """`split` (a tokenized `datasets.Dataset`) re-tokenized with the tokenizer at the path."""
    from datasets import Dataset

    ids, masks = encode_texts(Tokenizer.from_file(str(tokenizer_path)), split["text"], max_length)
    return Dataset.from_dict(
        {
            "text": list(split["text"]),
            "label": list(split["label"]),
            "input_ids": ids,
            "attention_mask": masks,
        }
    )
