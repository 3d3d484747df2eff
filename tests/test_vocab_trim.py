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
    assert tiny_classifier.get_input_embeddings().weight.shape[0] == report.kept_size
    assert tiny_classifier.config.vocab_size == report.kept_size
    with torch.inference_mode():
        actual = tiny_classifier(input_ids=torch.tensor([trimmed_ids])).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert report.test_changed_token_rate == 0.0
    assert report.fp32_embedding_bytes_saved == (30522 - report.kept_size) * 32 * 4


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
    export = export_stage(tmp_path, config, tiny_stages.student, data, 0.005)
    vocabulary = export.manifest.vocabulary
    assert vocabulary.trimmed and vocabulary.kept_size < vocabulary.original_size
    assert 0 < vocabulary.test_unk_token_rate <= vocabulary.test_changed_token_rate < 1
    tokenizer = Tokenizer.from_file(str(export.file(export.manifest.tokenizer)))
    assert tokenizer.get_vocab_size() == vocabulary.kept_size
    # The gate's trimming cost is the validation split's; the test split's is recorded beside.
    manifest = export.manifest
    assert vocabulary.trimming_cost == pytest.approx(
        manifest.student_validation_accuracy - manifest.validation_accuracy
    )
    assert vocabulary.test_trimming_cost == pytest.approx(
        manifest.student_test_accuracy - manifest.test_accuracy
    )
    validation = load_split(data.path, "validation")
    ids, mask = encode_texts(tokenizer, validation["text"], data.manifest.max_length)
    logits = onnx_logits(open_session(export.file(manifest.file)), ids, mask)
    assert float(np.mean(logits.argmax(-1) == np.asarray(validation["label"]))) == (
        manifest.validation_accuracy
    )

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


def test_a_pad_id_that_numbers_positions_never_moves(tmp_path):
    # RoBERTa numbers positions from its pad id (1 here): pad id + 1 + index. Trimming keeps
    # every id up to the pad id, so positions and outputs are unchanged; a slice that would move
    # the pad id is refused rather than shipping shifted positions.
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=40, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config).eval()
    with pytest.raises(ValueError, match="move the pad id from 1 to 0"):
        slice_word_embeddings(model, [1, 2, 5, 7, 9])
    from tokenizers import models, pre_tokenizers

    # Id 0 is an ordinary piece the train text never uses: only the pad rule keeps it.
    vocab = {f"t{i}": i for i in range(20)} | {"<pad>": 1, "[UNK]": 3}
    del vocab["t1"], vocab["t3"]
    built = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    built.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    built.add_special_tokens(["<pad>", "[UNK]"])
    path = tmp_path / "tokenizer.json"
    built.save(str(path))
    ids, mask = torch.tensor([[5, 7, 9, 1, 1]]), torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        trim_vocabulary(model, path, ["t5 t7 t9"], ["t5"], tmp_path / "trimmed.json")
        vocab = json.loads((tmp_path / "trimmed.json").read_text())["model"]["vocab"]
        new_ids = torch.tensor([[vocab["t5"], vocab["t7"], vocab["t9"], 1, 1]])
        after = model(input_ids=new_ids, attention_mask=mask).logits
    assert vocab["<pad>"] == 1 and model.config.pad_token_id == 1
    assert model.config.vocab_size == len(vocab) < 20
    assert torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ({"type": "BPE", "vocab": {"a": 0}, "merges": []}, "this one is BPE"),
        ({"type": "Unigram", "vocab": [["a", 0.0]]}, "this one is Unigram"),
        ({"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "[UNK]"}, "no unknown token"),
        ({"type": "WordPiece", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}, None),
    ],
)
def test_only_trimmable_tokenizers_are_trimmed(tmp_path, model, reason):
    from deploy.vocab_trim import untrimmable_reason

    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": model}))
    found = untrimmable_reason(path)
    assert found == reason if reason is None else reason in found
    assert "no tokenizer.json" in untrimmable_reason(tmp_path / "absent" / "tokenizer.json")


def test_trimming_may_cost_at_most_the_accuracy_budget():
    from deploy.export import trimming_rejection

    assert trimming_rejection(0.005, 0.005) is None
    assert trimming_rejection(-0.01, 0.0) is None  # trimming that helps always passes
    reason = trimming_rejection(0.0073, 0.005)
    assert reason == (
        "trimming cost 0.0073 validation accuracy > quantize.max_accuracy_drop 0.005: "
        "the full vocabulary ships"
    )


def test_a_cost_over_budget_refuses_the_trim_only_when_it_is_significant():
    from deploy.export import trimming_note, trimming_rejection
    from distill.paired import compare

    labels = [1] * 1000
    student = [1] * 1000
    # 7 texts lost, none gained, of 1,000: p = 1/128, significant.
    significant = compare(student, [0] * 7 + [1] * 993, labels)
    reason = trimming_rejection(0.007, 0.005, significant)
    assert reason is not None and "significant (p = 0.00781)" in reason
    # 17 lost and 10 gained: the same net cost of 7 texts, but p = 0.12, chance can explain it.
    chance = compare([0] * 10 + [1] * 990, [1] * 10 + [0] * 17 + [1] * 973, labels)
    assert (chance.only_reference_right, chance.only_candidate_right) == (17, 10)
    assert chance.p_worse > 0.05
    assert trimming_rejection(0.007, 0.005, chance) is None
    assert "but not significant" in trimming_note(0.007, 0.005, chance)
    assert trimming_rejection(0.004, 0.005, significant) is None  # within budget: always kept


def test_a_trim_over_budget_by_chance_still_ships(tiny_stages, tiny_config, tmp_path):
    from deploy.export import export_stage

    student, data = tiny_stages.student, tiny_stages.student_data
    # A negative budget no cost can meet: only significance can refuse the trim now.
    manifest = export_stage(
        tmp_path, tiny_config.export, student, data, max_accuracy_drop=-1.0
    ).manifest
    comparison = manifest.trimming_comparison
    assert comparison is not None and not comparison.significantly_worse()
    assert manifest.trimmed
    assert "not significant" in manifest.vocabulary.reason


def test_a_trim_over_budget_ships_the_full_vocabulary_and_records_its_cost(
    tiny_stages, tiny_config, tmp_path, monkeypatch
):
    import deploy.export as export_module
    from deploy.export import export_stage

    # Stand-in for a domain full of rare words: every trim is refused as over budget and
    # significant (the real rule is tested on its own above).
    monkeypatch.setattr(
        export_module,
        "trimming_rejection",
        lambda cost, budget, comparison=None: "over budget (simulated): the full vocabulary ships",
    )
    student, data = tiny_stages.student, tiny_stages.student_data
    export = export_stage(tmp_path, tiny_config.export, student, data, max_accuracy_drop=-1.0)
    manifest = export.manifest
    assert not manifest.trimmed and manifest.full_vocabulary_file is None
    assert "the full vocabulary ships" in manifest.vocabulary.reason
    rejected = manifest.vocabulary.rejected_trim
    assert rejected.kept_size < rejected.original_size
    # The gate's cost is measured on validation; the held-out test cost is recorded beside it.
    trimmed = tiny_stages.export.manifest
    assert rejected.trimming_cost == pytest.approx(
        manifest.student_validation_accuracy - trimmed.validation_accuracy
    )
    assert rejected.test_trimming_cost == pytest.approx(
        manifest.student_test_accuracy - trimmed.test_accuracy
    )
    shipped_tokenizer = export.file(manifest.tokenizer).read_bytes()
    assert shipped_tokenizer == student.file("tokenizer.json").read_bytes()
    assert sorted(p.name for p in export.path.iterdir()) == [
        "manifest.json", "model.onnx", "student_predictions.npz", "tokenizer.json"
    ]  # fmt: skip
    # The paired comparison behind the decision is recorded with the trim's cost.
    comparison = manifest.trimming_comparison
    assert comparison is not None and comparison.n == data.manifest.sizes["validation"]
    assert -comparison.difference == pytest.approx(rejected.trimming_cost)
    # The full graph matches the trained student: no step has spent the budget yet.
    assert manifest.test_accuracy == pytest.approx(manifest.student_test_accuracy)
    assert manifest.validation_accuracy == pytest.approx(manifest.student_validation_accuracy)
