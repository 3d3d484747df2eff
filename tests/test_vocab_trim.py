"""Vocabulary trimming: renumbered tokenizer + sliced embeddings behave like the full model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from deploy.vocab_trim import (
    encode_texts,
    kept_ids,
    oov_rates,
    slice_word_embeddings,
    special_token_ids,
    trim_tokenizer_json,
    trim_vocabulary,
    used_token_ids,
    word_pieces,
)

TRAIN = ["A good movie, truly wonderful.", "The worst film of the year!", "Not bad at all"]


@pytest.fixture(scope="module")
def tokenizer_path():
    from distill.models import resolve_model_source

    return Path(resolve_model_source("minilm")) / "tokenizer.json"


def unpadded(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.no_padding()  # the bundled tokenizer.json pads to 128
    return tokenizer


@pytest.fixture(scope="module")
def full_tokenizer(tokenizer_path):
    return unpadded(Tokenizer.from_file(str(tokenizer_path)))


def trimmed_tokenizer(tokenizer_path, texts):
    data = json.loads(tokenizer_path.read_text())
    full = Tokenizer.from_str(json.dumps(data))
    kept = kept_ids(used_token_ids(full, texts), special_token_ids(data))
    return unpadded(Tokenizer.from_str(json.dumps(trim_tokenizer_json(data, kept)))), kept


def test_trimmed_vocabulary_is_contiguous_and_keeps_special_tokens(tokenizer_path, full_tokenizer):
    trimmed, kept = trimmed_tokenizer(tokenizer_path, TRAIN)
    vocab = trimmed.get_vocab()
    assert sorted(vocab.values()) == list(range(len(vocab))) == list(range(len(kept)))
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert token in vocab
        assert kept[vocab[token]] == full_tokenizer.token_to_id(token)  # new id -> old id
    assert vocab["[PAD]"] == 0
    assert len(vocab) < 60  # a few dozen word pieces, not 30522
    encoding = trimmed.encode("a good movie")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert encoding.ids[0] == vocab["[CLS]"]
    assert trimmed.encode("zebra").tokens[1] == "[UNK]"


def test_trimmed_model_gives_the_same_logits_on_in_vocabulary_text(
    tokenizer_path, full_tokenizer, tiny_classifier, tmp_path
):
    text = "The good film, not the worst of the year at all!"  # only words seen in TRAIN
    full_ids = full_tokenizer.encode(text).ids
    with torch.inference_mode():
        expected = tiny_classifier(input_ids=torch.tensor([full_ids])).logits

    report = trim_vocabulary(
        tiny_classifier, tokenizer_path, TRAIN, [text], tmp_path / "tokenizer.json"
    )
    trimmed = unpadded(Tokenizer.from_file(str(tmp_path / "tokenizer.json")))
    trimmed_ids = trimmed.encode(text).ids
    assert trimmed_ids != full_ids  # renumbered ...
    assert trimmed.encode(text).tokens == full_tokenizer.encode(text).tokens  # ... same pieces
    assert tiny_classifier.get_input_embeddings().weight.shape[0] == report["kept_size"]
    assert tiny_classifier.config.vocab_size == report["kept_size"]
    with torch.inference_mode():
        actual = tiny_classifier(input_ids=torch.tensor([trimmed_ids])).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert report["test_changed_token_rate"] == 0.0
    assert report["fp32_embedding_bytes_saved"] == (30522 - report["kept_size"]) * 32 * 4


def test_slice_keeps_the_chosen_rows_in_order(tiny_classifier):
    before = tiny_classifier.get_input_embeddings().weight.detach().clone()
    slice_word_embeddings(tiny_classifier, [0, 100, 7, 30521])
    after = tiny_classifier.get_input_embeddings().weight
    assert np.array_equal(after.detach().numpy(), before[[0, 100, 7, 30521]].numpy())


def test_oov_rates_on_a_hand_made_example():
    original = [
        [["the"], ["un", "##seen"], ["film"]],
        [["good"]],
    ]
    trimmed = [
        [["the"], ["[UNK]"], ["fi", "##lm"]],  # one word to [UNK], one split differently
        [["good"]],
    ]
    rates = oov_rates(original, trimmed)
    assert rates["tokens"] == 5
    assert rates["changed_token_rate"] == pytest.approx(3 / 5)
    assert rates["unk_token_rate"] == pytest.approx(2 / 5)


def test_oov_rates_with_real_tokenizers(tokenizer_path, full_tokenizer):
    trimmed, _ = trimmed_tokenizer(tokenizer_path, ["good movie"])
    texts = ["good movie", "good films"]  # "films" was never seen: it becomes [UNK]
    rates = oov_rates(word_pieces(full_tokenizer, texts), word_pieces(trimmed, texts))
    assert rates == {"changed_token_rate": 0.25, "unk_token_rate": 0.25, "tokens": 4}


def test_export_and_quantize_stages_ship_the_trimmed_tokenizer(tiny_stages, tiny_config, tmp_path):
    from deploy.export import export_stage
    from deploy.onnx_eval import onnx_logits, open_session
    from deploy.quantize import quantize_stage
    from distill.data import load_split

    config = tiny_config.export.model_copy(update={"trim_vocabulary": True})
    quantize = tiny_config.quantize.model_copy(update={"reject_slower_int8": False})
    data = tiny_stages.data
    export = export_stage(tmp_path, config, tiny_stages.student, data)
    vocabulary = export.manifest.vocabulary
    assert vocabulary["trimmed"] and vocabulary["kept_size"] < vocabulary["original_size"]
    assert 0 < vocabulary["test_unk_token_rate"] <= vocabulary["test_changed_token_rate"] < 1
    tokenizer = Tokenizer.from_file(str(export.file(export.manifest.tokenizer)))
    assert tokenizer.get_vocab_size() == vocabulary["kept_size"]

    quantized = quantize_stage(tmp_path, quantize, export, data)
    assert quantized.manifest.method == "static"  # nothing to lose on a random tiny model
    shipped = quantized.file(quantized.manifest.tokenizer)
    assert shipped.read_bytes() == export.file("tokenizer.json").read_bytes()
    # The shipped model, fed by the shipped tokenizer, scores what the manifest says.
    test = load_split(data.path, "test")
    ids, mask = encode_texts(tokenizer, test["text"], data.manifest.max_length)
    logits = onnx_logits(open_session(quantized.file(quantized.manifest.file)), ids, mask)
    accuracy = float(np.mean(logits.argmax(-1) == np.asarray(test["label"])))
    assert accuracy == quantized.manifest.test_accuracy
