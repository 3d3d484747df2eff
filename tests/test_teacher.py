"""The teacher stage fine-tunes a pretrained encoder, or uses a ready classifier as it is."""

import torch

from distill.config import TeacherConfig, TrainingConfig
from distill.models import load_classifier, save_classifier
from distill.teacher import teacher_stage


def test_a_ready_classifier_for_the_same_labels_is_not_fine_tuned_again(
    tiny_config, tiny_data, tiny_classifier, tokenizer, tmp_path
):
    folder = tmp_path / "ready-teacher"
    save_classifier(tiny_classifier, tokenizer, folder)
    config = TeacherConfig(model=str(folder), training=TrainingConfig(epochs=1))
    teacher = teacher_stage(tmp_path / "work", config, tiny_data)
    assert teacher.manifest.fine_tuned is False
    assert teacher.manifest.history == []
    reloaded = load_classifier(teacher.path)
    for name, value in tiny_classifier.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name


def test_fine_tuning_keeps_the_best_epoch_by_validation_accuracy(tiny_config, tiny_data):
    teacher = teacher_stage(tiny_config.workdir, tiny_config.teacher, tiny_data)
    manifest = teacher.manifest
    assert manifest.fine_tuned is True
    epochs = [h for h in manifest.history if "val_accuracy" in h]
    assert len(epochs) == tiny_config.teacher.training.epochs
    best = max(epochs, key=lambda h: h["val_accuracy"])
    assert manifest.best_val_accuracy == best["val_accuracy"]
    assert (teacher.path / "model.safetensors").is_file()
    assert (teacher.path / "tokenizer.json").is_file()


def test_the_same_config_fine_tunes_the_same_teacher(tiny_data, tokenizer, tmp_path):
    from transformers import BertConfig, BertModel

    from distill.config import TeacherConfig

    # A pretrained encoder without a classifier head (as the bundled MiniLM is, but tiny): loading
    # it as a classifier gives a new, randomly initialised head, which must be seeded.
    encoder = tmp_path / "encoder"
    torch.manual_seed(0)
    arch = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(arch).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    config = TeacherConfig(model=str(encoder), training=TrainingConfig(epochs=1, batch_size=64))
    torch.manual_seed(123)  # disturb the global generator between the two builds
    first = teacher_stage(tmp_path / "a", config, tiny_data)
    torch.manual_seed(456)
    second = teacher_stage(tmp_path / "b", config, tiny_data)
    assert first.manifest.fine_tuned and second.manifest.fine_tuned
    assert first.manifest.weights_sha256 == second.manifest.weights_sha256
