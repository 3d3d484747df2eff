"""The distillation loss: a*CE + (1-a)*T^2*KL(softmax(t/T) || softmax(s/T))."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    UNLABELLED,
    distillation_loss,
    hard_label_ce,
    patient_kd_loss,
    soft_target_kl,
)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_hand_computed_value():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # teacher probabilities 0.75 / 0.25 at T=1
    label = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = math.log(2.0)
    expected = 0.3 * ce + 0.7 * kl
    loss = distillation_loss(student, teacher, label, alpha=0.3, temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_identical_logits_give_zero_kl():
    logits = torch.randn(8, 5)
    assert soft_target_kl(logits, logits.clone(), temperature=3.0).item() == pytest.approx(
        0, abs=1e-6
    )


def test_temperature_one_equals_torch_kl_div():
    student, teacher = torch.randn(16, 4), torch.randn(16, 4)
    reference = F.kl_div(F.log_softmax(student, -1), F.softmax(teacher, -1), reduction="batchmean")
    assert soft_target_kl(student, teacher, 1.0).item() == pytest.approx(reference.item(), rel=1e-5)


def test_soft_term_is_scaled_by_temperature_squared():
    student, teacher = torch.randn(16, 3), torch.randn(16, 3)
    temperature = 4.0
    plain_kl = F.kl_div(
        F.log_softmax(student / temperature, -1),
        F.softmax(teacher / temperature, -1),
        reduction="batchmean",
    )
    scaled = soft_target_kl(student, teacher, temperature)
    assert scaled.item() == pytest.approx(temperature**2 * plain_kl.item(), rel=1e-5)


def test_alpha_one_is_plain_cross_entropy_and_ignores_the_teacher():
    student, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    garbage_teacher = torch.full((8, 3), float("nan"))
    loss = distillation_loss(student, garbage_teacher, labels, alpha=1.0, temperature=2.0)
    assert loss.item() == pytest.approx(hard_label_ce(student, labels).item())


def test_alpha_zero_is_pure_soft_targets():
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = distillation_loss(student, teacher, labels, alpha=0.0, temperature=2.0)
    assert loss.item() == pytest.approx(soft_target_kl(student, teacher, 2.0).item())


def test_half_precision_inputs_are_upcast():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    full = soft_target_kl(student, teacher, 2.0)
    half = soft_target_kl(student.bfloat16(), teacher.bfloat16(), 2.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_gradient_flows_to_the_student_only():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distillation_loss(student, teacher.detach(), torch.tensor([0, 1, 2, 0]), 0.5, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize(("alpha", "temperature"), [(1.5, 1.0), (-0.1, 1.0), (0.5, 0.0)])
def test_invalid_settings_are_refused(alpha, temperature):
    with pytest.raises(ValueError):
        distillation_loss(
            torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0, 1]), alpha, temperature
        )


def test_unlabelled_rows_are_left_out_of_cross_entropy():
    student = torch.randn(4, 3)
    labels = torch.tensor([0, UNLABELLED, 2, UNLABELLED])
    expected = F.cross_entropy(student[[0, 2]], labels[[0, 2]])
    assert hard_label_ce(student, labels).item() == pytest.approx(expected.item())


def test_a_batch_without_labels_has_zero_cross_entropy_and_still_backpropagates():
    student = torch.randn(3, 2, requires_grad=True)
    loss = hard_label_ce(student, torch.full((3,), UNLABELLED))
    loss.backward()
    assert loss.item() == 0.0 and student.grad is not None


def test_patient_kd_hand_computed_and_scale_free():
    student = torch.tensor([[[3.0, 0.0]]])  # normalised: (1, 0)
    teacher = torch.tensor([[[0.0, 5.0]]])  # normalised: (0, 1)
    assert patient_kd_loss(student, teacher).item() == pytest.approx(2.0)
    states = torch.randn(4, 2, 8)
    assert patient_kd_loss(states, 7.0 * states).item() == pytest.approx(0.0, abs=1e-6)
