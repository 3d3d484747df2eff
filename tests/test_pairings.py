"""The four teacher/student pairings end to end on tiny models: data, teacher, cache, student,
evaluation, export, quantize, and an edge bundle the torch-free runtime predicts with.

1. carved from the teacher (the default kind), 2. a random student, 3. a student carved from
another pretrained checkpoint with its own tokenizer, 4. a non-BERT teacher (MPNet, its own
WordPiece tokenizer, pad id 1) with a student carved from it.
"""

from __future__ import annotations

import json

import pytest

from deploy.bundle import bundle_from_stages
from deploy.chain import run_pipeline_stages
from deploy.runtime import load_bundle, predict
from distill.config import PretrainedInit, RandomInit, TeacherLayersInit
from distill.data import load_split
from tasks.model_card import model_identities
from tests.edge_js import node_packages_ready, run_node
from tests.test_families import family_folder, train_texts  # noqa: F401 - fixtures

PAIRINGS = ["teacher_layers", "random", "pretrained_other", "mpnet_teacher"]


def pairing_config(tiny_config, pairing: str, folder):
    """The tiny config changed into one pairing; every pairing shares the tiny store."""
    teacher, init = tiny_config.teacher, tiny_config.student.init
    if pairing == "random":
        init = RandomInit(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    elif pairing == "pretrained_other":
        init = PretrainedInit(model=str(folder("bert")), layers=[0, 2])
    elif pairing == "mpnet_teacher":
        teacher = teacher.model_copy(update={"model": str(folder("mpnet")), "random_init": None})
        init = TeacherLayersInit(layers=[1])
    student = tiny_config.student.model_copy(update={"init": init})
    return tiny_config.model_copy(update={"teacher": teacher, "student": student})


def vocabulary(tokenizer_json) -> dict[str, int]:
    return json.loads(tokenizer_json.read_text())["model"]["vocab"]


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_pairing_runs_to_a_bundle_the_runtime_predicts_with(
    pairing,
    tiny_config,
    family_folder,  # noqa: F811 - the imported fixture
    tmp_path,
):
    config = pairing_config(tiny_config, pairing, family_folder)
    artifacts = run_pipeline_stages(config, config.store_dir)
    teacher_vocab = vocabulary(artifacts.teacher.file("tokenizer.json"))
    student_vocab = vocabulary(artifacts.student.file("tokenizer.json"))
    identities = model_identities(artifacts)

    if pairing == "pretrained_other":
        # The student reads its own ids; the teacher and its cache read the teacher's.
        assert artifacts.student_data.stage == "student_data"
        assert artifacts.student_data.key != artifacts.data.key
        assert student_vocab != teacher_vocab and len(student_vocab) <= 600
        assert identities.student_source == str(family_folder("bert"))
        assert identities.student_init == "pretrained"
        assert "student_data" in artifacts.by_stage()
    else:
        assert artifacts.student_data is artifacts.data
        assert student_vocab == teacher_vocab
        assert "student_data" not in artifacts.by_stage()
    expected_family = {"mpnet_teacher": ("mpnet", "mpnet"), "random": ("bert", "bert")}.get(
        pairing, ("bert", "bert")
    )
    assert (identities.teacher_family, identities.student_family) == expected_family
    assert identities.student_init == config.student.init.kind

    # Evaluation scored each model on its own ids: the student's score is reproducible there.
    from distill.metrics import accuracy
    from distill.models import load_classifier
    from distill.training import predict_logits

    test = load_split(artifacts.student_data.path, "test")
    student_logits = predict_logits(load_classifier(artifacts.student.path), test)
    assert artifacts.evaluation.manifest.student_accuracy == pytest.approx(
        accuracy(student_logits, test["label"])
    )

    assert artifacts.export.manifest.max_abs_logit_diff <= config.export.parity_tolerance
    folder = bundle_from_stages(tmp_path, artifacts, run_id=f"run-{pairing}", model_version="1")
    bundle = load_bundle(folder)
    texts = list(test["text"])
    results = predict(bundle, texts)
    labels = [bundle.labels.index(result["label"]) for result in results]
    shipped = artifacts.quantize.manifest.test_accuracy
    # The runtime tokenizes with the bundled (student's, possibly trimmed) tokenizer and gets the
    # shipped model's test accuracy (at most one borderline text may flip).
    runtime_accuracy = sum(p == y for p, y in zip(labels, test["label"], strict=True)) / len(texts)
    assert runtime_accuracy == pytest.approx(shipped, abs=1.0 / len(texts) + 1e-9)
    # A padded batch answers as each text alone does (the pad id is the tokenizer's own).
    alone = [predict(bundle, [text])[0]["probabilities"] for text in texts[:6]]
    batched = [result["probabilities"] for result in results[:6]]
    for one, many in zip(alone, batched, strict=True):
        assert one == pytest.approx(many, abs=1e-4)
    # Each family's bundle also runs, as it is, in transformers.js (edge/js; where installed).
    if node_packages_ready():
        node = run_node("--test", env={"DISTILLERY_BUNDLE": str(folder)})
        assert node.returncode == 0 and "# fail 0" in node.stdout, node.stdout + node.stderr


def test_runtime_pads_with_the_tokenizers_own_pad_id(family_folder):  # noqa: F811
    from tokenizers import Tokenizer

    from deploy.runtime import pad_of

    mpnet = Tokenizer.from_file(str(family_folder("mpnet") / "tokenizer.json"))
    mpnet.no_padding()  # a tokenizer.json without padding settings
    assert pad_of(mpnet) == (1, "<pad>")
    bert = Tokenizer.from_file(str(family_folder("bert") / "tokenizer.json"))
    bert.no_padding()
    assert pad_of(bert) == (0, "[PAD]")
    bert.enable_padding(pad_id=bert.token_to_id("[PAD]"), pad_token="[PAD]")
    assert pad_of(bert) == (0, "[PAD]")


def test_batches_pad_with_the_models_pad_id_in_training_prediction_and_caching(
    family_folder,  # noqa: F811
    tiny_data,
):
    """MPNet pads with 1 (and numbers positions from it): every padded batch must use 1."""
    from transformers import AutoModelForSequenceClassification

    from distill.batching import sorted_batches
    from distill.config import TrainingConfig
    from distill.data import tokenized_table
    from distill.models import load_tokenizer
    from distill.shards import label_batches
    from distill.teacher import teacher_loss
    from distill.training import predict_logits, train_classifier

    folder = family_folder("mpnet")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    texts = list(load_split(tiny_data.path, "train")["text"])[:24]
    split = tokenized_table(load_tokenizer(str(folder)), texts, [0, 1] * 12, 32)
    seen: list[tuple] = []

    def record(module, args, kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))

    model.register_forward_pre_hook(record, with_kwargs=True)

    def padded_ids() -> set[int]:
        ids = {int(i) for batch, mask in seen for i in batch[mask == 0]}
        seen.clear()
        return ids

    predict_logits(model, split, batch_size=8)
    assert padded_ids() == {1}
    label_batches(model, split, sorted_batches([len(ids) for ids in split["input_ids"]], 8))
    assert padded_ids() == {1}
    train_classifier(model, split, split, TrainingConfig(epochs=1, batch_size=8), teacher_loss)
    assert padded_ids() == {1}
