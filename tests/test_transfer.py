"""Transfer text (data.unlabeled): texts only the teacher labels, leak-checked, fingerprinted,
and matched to a student with its own tokenizer by row, never by token."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from distill.chain import run_student, run_student_rows, run_until_cache
from distill.config import PretrainedInit, UnlabeledConfig
from distill.data import UNLABELED, DataError, data_stage, load_split, load_unlabeled
from distill.losses import UNLABELLED
from distill.rows import training_rows
from distill.student import AlignmentError, student_stage
from tests.test_families import bert_like_tokenizer, wrap

NEW_TEXTS = [
    f"an unseen review number {i}, {'lovely' if i % 2 else 'dull'} and odd" for i in range(30)
]


def write_texts(path, texts, column="text"):
    frame = pd.DataFrame({column: texts})
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def with_unlabeled(config, path, **settings):
    unlabeled = UnlabeledConfig(source=str(path), **settings)
    return config.model_copy(
        update={"data": config.data.model_copy(update={"unlabeled": unlabeled})}
    )


@pytest.fixture(scope="module")
def held_out(tiny_data):
    return {name: list(load_split(tiny_data.path, name)["text"]) for name in ("validation", "test")}


@pytest.fixture(scope="module")
def transfer_file(tmp_path_factory, held_out):
    # Two leaks, disguised by case and whitespace, among 30 new texts.
    leaks = [
        "  " + held_out["test"][0].upper() + " ",
        held_out["validation"][3].replace(" ", "   "),
    ]
    folder = tmp_path_factory.mktemp("transfer")
    return write_texts(folder / "unlabeled.csv", NEW_TEXTS[:15] + leaks + NEW_TEXTS[15:])


def test_transfer_text_is_a_leak_checked_unlabelled_split(tiny_config, tiny_data, transfer_file):
    config = with_unlabeled(tiny_config, transfer_file)
    data = data_stage(config.store_dir, config.data, config.teacher.model)
    record = data.manifest.unlabeled
    assert record.read == 32 and record.dropped_in_validation_or_test == 2
    assert record.rows == data.manifest.sizes[UNLABELED] == 30
    rows = load_split(data.path, UNLABELED)
    assert list(rows["text"]) == NEW_TEXTS  # file order, leaks dropped
    assert set(rows["label"]) == {UNLABELLED}
    # Train, validation and test are exactly those of the same data without transfer text.
    for name in ("train", "validation", "test"):
        assert load_split(data.path, name)["text"] == load_split(tiny_data.path, name)["text"]
    assert data.manifest.label_balance == tiny_data.manifest.label_balance
    # The fingerprint (what scheduled retraining compares) sees the transfer text ...
    assert data.manifest.fingerprint != tiny_data.manifest.fingerprint
    # ... and max_examples keeps the first texts after the leak drop.
    capped = with_unlabeled(tiny_config, transfer_file, max_examples=4)
    small = data_stage(capped.store_dir, capped.data, capped.teacher.model)
    assert list(load_split(small.path, UNLABELED)["text"]) == NEW_TEXTS[:4]


def test_a_changed_transfer_file_changes_the_retraining_fingerprint(tiny_config, tmp_path):
    path = write_texts(tmp_path / "more.jsonl", NEW_TEXTS)
    config = with_unlabeled(tiny_config, path)
    before = data_stage(config.store_dir, config.data, config.teacher.model)
    write_texts(path, NEW_TEXTS + ["one more unseen sentence about a film"])
    after = data_stage(config.store_dir, config.data, config.teacher.model)
    assert not after.reused and after.key != before.key
    assert after.manifest.fingerprint != before.manifest.fingerprint
    # flows/retrain.py compares exactly this stage's fingerprint with the champion's.
    import inspect

    from flows import retrain

    assert "data_stage(config.store_dir.resolve(), config.data," in inspect.getsource(retrain)


def test_runs_without_transfer_text_or_a_train_subsample_keep_their_data_key(
    tiny_config, tiny_data
):
    from distill.data import VERSION, source_identity
    from distill.store import stage_key

    settings = tiny_config.data.model_dump(mode="json")
    assert settings.pop("unlabeled") is None
    assert settings["split"].pop("max_train_examples") is None
    expected = stage_key(
        "data",
        VERSION,
        settings,
        source_identity(tiny_config.data),
        tiny_data.manifest.tokenizer_id,
    )
    assert tiny_data.key == expected


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_an_empty_transfer_text_is_an_error_naming_file_and_row(tmp_path, suffix):
    path = write_texts(tmp_path / f"bad{suffix}", ["fine text", "   ", "more"])
    with pytest.raises(DataError, match=rf"bad\{suffix}.*row \d, column 'text' is empty"):
        load_unlabeled(UnlabeledConfig(source=str(path)))
    with pytest.raises(DataError, match="column 'sentence' not found"):
        load_unlabeled(UnlabeledConfig(source=str(path), text_column="sentence"))
    with pytest.raises(DataError, match="file not found"):
        load_unlabeled(UnlabeledConfig(source=str(tmp_path / "missing.csv")))


def test_empty_csv_row_number_is_the_file_line(tmp_path):
    path = write_texts(tmp_path / "bad.csv", ["fine text", "more", ""])
    with pytest.raises(DataError, match="row 4"):  # header is line 1
        load_unlabeled(UnlabeledConfig(source=str(path)))


@pytest.fixture(scope="module")
def own_tokenizer_student(tmp_path_factory, tiny_data):
    """A tiny random BERT checkpoint with its own WordPiece tokenizer (not the teacher's)."""
    from transformers import BertConfig, BertForSequenceClassification

    tok, specials = bert_like_tokenizer(list(load_split(tiny_data.path, "train")["text"]))
    fast = wrap(tok, specials)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=fast.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("own-tokenizer-student")
    BertForSequenceClassification(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_student_with_its_own_tokenizer_trains_on_the_cache_rows_by_index(
    tiny_config, transfer_file, own_tokenizer_student
):
    config = with_unlabeled(tiny_config, transfer_file)
    config = config.model_copy(
        update={
            "augmentation": config.augmentation.model_copy(update={"multiplier": 0.25}),
            "student": config.student.model_copy(
                update={"init": PretrainedInit(model=str(own_tokenizer_student), layers=[1])}
            ),
        }
    )
    store = config.store_dir
    upstream = run_until_cache(config, store)
    cache_rows = upstream.cache.manifest.rows
    assert cache_rows == {"train": 280, "augmented": 70, "transfer": 30}
    assert upstream.cache.manifest.shape[0] == 380

    calls: list[str] = []

    def runner(stage, build):
        calls.append(stage)
        return build(None)

    rows = run_student_rows(config, store, upstream, runner)
    assert calls == ["student_data", "student_augment"]
    assert rows.data.stage == "student_data" and rows.data.key != upstream.data.key
    assert rows.data.manifest.tokenizer_id != upstream.data.manifest.tokenizer_id
    teacher_rows, student_rows = (
        training_rows(upstream.data, upstream.augmented),
        training_rows(rows.data, rows.augmented),
    )
    # Same examples in the same order (train, augmented, transfer), in different token ids.
    assert student_rows["text"] == teacher_rows["text"]
    assert student_rows["label"] == teacher_rows["label"]
    assert student_rows["input_ids"] != teacher_rows["input_ids"]
    assert max(max(ids) for ids in student_rows["input_ids"]) < 600  # the student's vocabulary
    # Tokenized once per tokenizer: asking again reuses the folder.
    assert run_student_rows(config, store, upstream).data.reused

    student = run_student(config.student, store, upstream, rows=rows)
    assert student.manifest.source == str(own_tokenizer_student)
    assert student.manifest.init_kind == "pretrained"
    assert student.manifest.tokenizer_id == rows.data.manifest.tokenizer_id
    saved = json.loads((student.path / "tokenizer.json").read_text())
    assert len(saved["model"]["vocab"]) <= 600  # the student's own tokenizer, not MiniLM's

    # Rows that do not line up with the cache (here: the transfer text is missing) are refused ...
    without = run_until_cache(tiny_config, store)
    unaligned = run_student_rows(
        tiny_config.model_copy(update={"student": config.student}), store, without
    )
    with pytest.raises(AlignmentError, match="do not match the logit cache"):
        student_stage(store, config.student, upstream.teacher, upstream.cache, unaligned.data)
    # ... and so are the teacher's token ids for a student with its own tokenizer.
    with pytest.raises(AlignmentError, match="has its own tokenizer"):
        student_stage(
            store,
            config.student,
            upstream.teacher,
            upstream.cache,
            upstream.data,
            upstream.augmented,
        )


def test_soft_targets_of_transfer_rows_reach_the_student(tiny_config, transfer_file):
    """Transfer rows carry only teacher targets: the CE term skips them, KL does not."""
    config = with_unlabeled(tiny_config, transfer_file)
    upstream = run_until_cache(config, config.store_dir)
    from distill.logit_cache import open_targets

    targets = open_targets(upstream.cache)
    transfer = slice(280, 310)
    assert np.isfinite(targets.logits[transfer]).all()
    assert np.abs(targets.logits[transfer]).sum() > 0
    assert set(training_rows(upstream.data, None)["label"][280:]) == {UNLABELLED}
