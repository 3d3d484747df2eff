"""Students carved from teachers, and fine-tuned-teacher detection."""

import copy

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


def test_a_narrower_student_keeps_the_strongest_feed_forward_neurons(tiny_classifier):
    teacher = copy.deepcopy(tiny_classifier)  # the fixture is shared; this test edits weights
    teacher_layer = encoder_layers(teacher)[1]
    width = teacher.config.intermediate_size
    dead = [0, 3, 5]  # neurons that cannot change the output: their input weights are zero
    with torch.no_grad():
        teacher_layer.intermediate.dense.weight[dead] = 0.0
        teacher_layer.intermediate.dense.bias[dead] = 0.0
    init = TeacherLayersInit(layers=[1], intermediate_size=width - len(dead))
    student = student_from_teacher(teacher, init)
    assert student.config.intermediate_size == width - len(dead)
    student_layer = encoder_layers(student)[0]
    assert student_layer.intermediate.dense.weight.shape == (width - len(dead), 32)
    assert count_parameters(student) < count_parameters(
        student_from_teacher(teacher, TeacherLayersInit(layers=[1]))
    )
    # Dropping only dead neurons leaves the layer's function unchanged (GELU(0) = 0).
    hidden = torch.randn(2, 5, teacher.config.hidden_size)
    teacher_layer.eval(), student_layer.eval()
    with torch.no_grad():
        assert torch.allclose(student_layer(hidden)[0], teacher_layer(hidden)[0], atol=1e-5)


def test_a_student_wider_than_its_teacher_is_refused(tiny_classifier):
    width = tiny_classifier.config.intermediate_size
    with pytest.raises(ValueError, match="intermediate_size"):
        student_from_teacher(
            tiny_classifier, TeacherLayersInit(layers=[0], intermediate_size=width + 1)
        )


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
