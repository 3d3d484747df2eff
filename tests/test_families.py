"""Any encoder family as teacher: tiny random models built from their config classes.

Each family gets its own tiny tokenizer (WordPiece, byte-level BPE or Unigram, trained with the
`tokenizers` library on the tiny train split) and goes through the real stages: data, teacher
fine-tuning, logit cache, a student carved from the teacher, ONNX export with parity, INT8.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    MPNetConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
)

from distill.config import PretrainedInit, TeacherLayersInit
from distill.models import (
    FAMILIES,
    UnsupportedModelError,
    encoder_layers,
    feed_forward_width,
    pad_token_id,
    student_from_pretrained,
    student_from_teacher,
)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
SHAPE = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}


def wordpiece(texts, specials, unk, cls, sep) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials)
    tok.train_from_iterator(texts, trainer)
    if cls == "<s>":  # MPNet frames a text as RoBERTa does
        tok.post_processor = processors.RobertaProcessing(
            (sep, tok.token_to_id(sep)), (cls, tok.token_to_id(cls))
        )
    else:
        tok.post_processor = processors.BertProcessing(
            (sep, tok.token_to_id(sep)), (cls, tok.token_to_id(cls))
        )
    return tok


def byte_bpe(texts) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=ROBERTA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def unigram(texts) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=600, special_tokens=BERT_SPECIALS, unk_token="[UNK]"
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    )
    return tok


def bert_like_tokenizer(texts):
    return wordpiece(texts, BERT_SPECIALS, "[UNK]", "[CLS]", "[SEP]"), BERT_SPECIALS


def roberta_like_tokenizer(texts):
    return byte_bpe(texts), ROBERTA_SPECIALS


def mpnet_tokenizer(texts):
    return wordpiece(texts, ROBERTA_SPECIALS, "<unk>", "<s>", "</s>"), ROBERTA_SPECIALS


def deberta_tokenizer(texts):
    return unigram(texts), BERT_SPECIALS


def wrap(tok: Tokenizer, specials: list[str]) -> PreTrainedTokenizerFast:
    if specials == ROBERTA_SPECIALS:
        bos, pad, eos, unk, mask = specials
        names = dict(bos_token=bos, cls_token=bos, eos_token=eos, sep_token=eos)
    else:
        pad, unk, cls, sep, mask = specials
        names = dict(cls_token=cls, sep_token=sep)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, unk_token=unk, mask_token=mask, **names
    )


# family -> (config builder, tokenizer builder, tokenizer kind)
FAMILY_SPECS = {
    "bert": (lambda v, p: BertConfig(vocab_size=v, pad_token_id=p, **SHAPE, intermediate_size=64),
             bert_like_tokenizer, "WordPiece"),
    "roberta": (lambda v, p: RobertaConfig(
        vocab_size=v, pad_token_id=p, bos_token_id=0, eos_token_id=2,
        max_position_embeddings=80, **SHAPE, intermediate_size=64,
    ), roberta_like_tokenizer, "BPE"),
    "mpnet": (lambda v, p: MPNetConfig(
        vocab_size=v, pad_token_id=p, bos_token_id=0, eos_token_id=2,
        max_position_embeddings=80, **SHAPE, intermediate_size=64,
    ), mpnet_tokenizer, "WordPiece"),
    "distilbert": (lambda v, p: DistilBertConfig(
        vocab_size=v, pad_token_id=p, dim=32, n_layers=3, n_heads=2, hidden_dim=64,
        max_position_embeddings=80,
    ), bert_like_tokenizer, "WordPiece"),
    "electra": (lambda v, p: ElectraConfig(
        vocab_size=v, pad_token_id=p, embedding_size=16, **SHAPE, intermediate_size=64,
    ), bert_like_tokenizer, "WordPiece"),
    "deberta-v2": (lambda v, p: DebertaV2Config(
        vocab_size=v, pad_token_id=p, max_position_embeddings=80, **SHAPE, intermediate_size=64,
    ), deberta_tokenizer, "Unigram"),
}  # fmt: skip


@pytest.fixture(scope="module")
def train_texts(tiny_data):
    from distill.data import load_split

    return list(load_split(tiny_data.path, "train")["text"])


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory, train_texts):
    """family -> a saved tiny random classifier with its own tokenizer (labels LABEL_0/1)."""
    made: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in made:
            make_config, make_tokenizer, _ = FAMILY_SPECS[family]
            tok, specials = make_tokenizer(train_texts)
            fast = wrap(tok, specials)
            torch.manual_seed(0)
            config = make_config(tok.get_vocab_size(), fast.pad_token_id)
            model = AutoModelForSequenceClassification.from_config(config)
            folder = tmp_path_factory.mktemp(f"family-{family}")
            model.save_pretrained(folder)
            fast.save_pretrained(folder)
            made[family] = folder
        return made[family]

    return build


def test_family_table_covers_the_config_classes_we_build():
    assert set(FAMILY_SPECS) <= set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILY_SPECS))
def test_carving_keeps_chosen_blocks_and_everything_outside(family_folder, family):
    teacher = AutoModelForSequenceClassification.from_pretrained(family_folder(family)).eval()
    assert len(encoder_layers(teacher)) == 3
    everything = student_from_teacher(teacher, TeacherLayersInit(layers=[0, 1, 2])).eval()
    ids = torch.randint(10, teacher.config.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():  # all blocks copied: the same function as the teacher
        expected = teacher(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(everything(input_ids=ids, attention_mask=mask).logits, expected)
    narrow = student_from_teacher(teacher, TeacherLayersInit(layers=[2], intermediate_size=40))
    assert narrow.config.model_type == teacher.config.model_type
    assert len(encoder_layers(narrow)) == 1 and narrow.config.num_hidden_layers == 1
    assert feed_forward_width(narrow.config) == 40
    kept, source = encoder_layers(narrow)[0].state_dict(), encoder_layers(teacher)[2].state_dict()
    family_ffn = FAMILIES[teacher.config.model_type].ffn_in
    for name, value in kept.items():
        if family_ffn not in name and value.shape == source[name].shape:
            assert torch.equal(value, source[name]), name


def test_unknown_family_is_refused_by_name():
    from transformers import GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(UnsupportedModelError, match="model type 'gpt2'.*distilbert"):
        student_from_teacher(model, TeacherLayersInit(layers=[0]))


def test_pad_id_comes_from_the_tokenizer_or_config(family_folder, tokenizer):
    from distill.models import load_tokenizer

    assert pad_token_id(tokenizer) == 0  # bundled MiniLM (BERT)
    assert pad_token_id(load_tokenizer(str(family_folder("roberta")))) == 1
    assert pad_token_id(AutoConfig.from_pretrained(family_folder("mpnet"))) == 1
    assert pad_token_id(GPT2Config()) == 0  # no pad token at all: 0, the mask hides it


def test_student_from_pretrained_other_checkpoint_gets_the_data_labels(family_folder):
    folder = family_folder("mpnet")
    source = AutoModelForSequenceClassification.from_pretrained(folder)
    init = PretrainedInit(model=str(folder), layers=[0, 2], intermediate_size=48)
    student = student_from_pretrained(str(folder), init, ["negative", "positive"])
    assert student.config.model_type == "mpnet"
    assert student.config.id2label == {0: "negative", 1: "positive"}
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 48
    copied = encoder_layers(student)[1].attention.attn.q.weight
    assert torch.equal(copied, encoder_layers(source)[2].attention.attn.q.weight)
    assert torch.equal(
        student.mpnet.embeddings.word_embeddings.weight,
        source.mpnet.embeddings.word_embeddings.weight,
    )
    # A checkpoint that classifies another number of labels gets a new head, not an error.
    three = student_from_pretrained(str(folder), init, ["a", "b", "c"])
    assert three.classifier.out_proj.weight.shape[0] == 3
    with pytest.raises(ValueError, match=r"model .* layers \[5\].*0\.\.2"):
        student_from_pretrained(str(folder), PretrainedInit(model=str(folder), layers=[5]), ["a"])


# Four families end to end: a byte-level BPE, a Unigram and two WordPiece tokenizers, and three
# block layouts (encoder.layer with MPNet's relative attention, DeBERTa's disentangled attention,
# DistilBERT's transformer.layer).
END_TO_END = ["roberta", "mpnet", "distilbert", "deberta-v2"]


@pytest.mark.parametrize("family", END_TO_END)
def test_family_runs_teacher_cache_student_export_int8(
    family, family_folder, tiny_config, tmp_path_factory
):
    from deploy.export import export_stage
    from deploy.quantize import quantize_stage
    from distill.constants import TOKENIZER_FILE
    from distill.data import data_stage
    from distill.logit_cache import logit_cache_stage
    from distill.student import student_stage
    from distill.teacher import teacher_stage

    folder = family_folder(family)
    workdir = tmp_path_factory.mktemp(f"run-{family}")
    teacher_config = tiny_config.teacher.model_copy(
        update={"model": str(folder), "random_init": None}
    )
    data = data_stage(workdir, tiny_config.data, str(folder))
    teacher = teacher_stage(workdir, teacher_config, data)
    assert teacher.manifest.fine_tuned
    assert AutoConfig.from_pretrained(teacher.path).model_type == family

    cache = logit_cache_stage(workdir, teacher, data)
    rows = data.manifest.sizes["train"]
    assert cache.manifest.cls_shape == [rows, 3 + 1, 32]  # embeddings + every block

    student = student_stage(workdir, tiny_config.student, teacher, cache, data)
    assert AutoConfig.from_pretrained(student.path).model_type == family
    assert student.manifest.num_layers == len(tiny_config.student.init.layers)

    export = export_stage(
        workdir, tiny_config.export, student, data, tiny_config.quantize.max_accuracy_drop
    )
    assert export.manifest.max_abs_logit_diff <= tiny_config.export.parity_tolerance
    vocabulary = export.manifest.vocabulary
    kind = FAMILY_SPECS[family][2]
    if kind == "WordPiece":
        assert vocabulary.trimmed and vocabulary.kept_size < vocabulary.original_size
    else:  # shipped whole, with the reason recorded, never a broken tokenizer
        assert not vocabulary.trimmed and kind in vocabulary.reason
        assert export.file(TOKENIZER_FILE).read_bytes() == student.file(TOKENIZER_FILE).read_bytes()

    shipped = quantize_stage(workdir, tiny_config.quantize, export, data)
    assert shipped.file(shipped.manifest.file).is_file()
    assert shipped.manifest.test_accuracy >= 0.0
