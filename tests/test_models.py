"""Students carved from teachers, and fine-tuned-teacher detection."""

import pytest
import torch

from distill.config import RandomArchitecture, TeacherLayersInit
from distill.models import (
    count_parameters,
    encoder_layers,
    is_finetuned_for,
    random_student,
    save_classifier,
    student_from_teacher,
)


def test_student_copies_embeddings_head_and_chosen_layers(tiny_classifier):
    student = student_from_teacher(tiny_classifier, TeacherLayersInit(layers=[0, 2]))
    assert student.config.num_hidden_layers == 2
    teacher_layers, student_layers = encoder_layers(tiny_classifier), encoder_layers(student)
    for position, index in enumerate([0, 2]):
        for (name, value), (_, copied) in zip(
            teacher_layers[index].state_dict().items(),
            student_layers[position].state_dict().items(),
            strict=True,
        ):
            assert torch.equal(value, copied), name
    assert torch.equal(
        tiny_classifier.bert.embeddings.word_embeddings.weight,
        student.bert.embeddings.word_embeddings.weight,
    )
    assert torch.equal(tiny_classifier.classifier.weight, student.classifier.weight)
    assert count_parameters(student) < count_parameters(tiny_classifier)


def test_student_layer_the_teacher_lacks_is_refused(tiny_classifier):
    with pytest.raises(ValueError, match=r"teacher layers \[3\].*0\.\.2"):
        student_from_teacher(tiny_classifier, TeacherLayersInit(layers=[0, 3]))


def test_random_student_has_the_requested_shape(tiny_classifier):
    arch = RandomArchitecture(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
    student = random_student(tiny_classifier, arch, seed=0)
    assert student.config.hidden_size == 16
    assert student.config.num_labels == 2


def test_a_saved_classifier_for_the_same_labels_counts_as_fine_tuned(
    tiny_classifier, tokenizer, tmp_path
):
    save_classifier(tiny_classifier, tokenizer, tmp_path)
    assert is_finetuned_for(str(tmp_path), ["negative", "positive"])
    assert not is_finetuned_for(str(tmp_path), ["negative", "neutral", "positive"])
