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
    terms = distillation_loss(student, teacher, label, alpha=0.3, temperature=1.0)
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)
    # The parts are unweighted: ce and kl as computed by hand, pkd not part of this loss.
    assert terms.ce.item() == pytest.approx(ce, rel=1e-6)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-6)
    assert terms.pkd is None
    assert terms.parts() == pytest.approx({"ce": ce, "kl": kl}, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.9])
def test_total_is_the_alpha_weighted_sum_of_the_parts(alpha):
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    terms = distillation_loss(student, teacher, labels, alpha=alpha, temperature=3.0)
    assert terms.ce.item() == pytest.approx(hard_label_ce(student, labels).item())
    assert terms.kl.item() == pytest.approx(soft_target_kl(student, teacher, 3.0).item())
    expected = alpha * terms.ce.item() + (1 - alpha) * terms.kl.item()
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)


def test_all_unlabelled_batch_has_zero_ce_and_only_the_soft_term():
    student, teacher = torch.randn(4, 2, requires_grad=True), torch.randn(4, 2)
    labels = torch.full((4,), UNLABELLED)
    terms = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    assert terms.ce.item() == 0.0
    assert terms.total.item() == pytest.approx(0.5 * soft_target_kl(student, teacher, 2.0).item())
    terms.total.backward()
    assert student.grad.abs().sum() > 0


def test_patient_kd_is_added_with_its_weight_and_reported_unweighted():
    student, teacher, labels = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    logit_terms = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    pkd = torch.tensor(0.25)
    terms = logit_terms.with_pkd(pkd, weight=4.0)
    assert terms.total.item() == pytest.approx(logit_terms.total.item() + 1.0)
    assert terms.pkd.item() == 0.25 and terms.ce is logit_terms.ce and terms.kl is logit_terms.kl


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
    terms = distillation_loss(student, garbage_teacher, labels, alpha=1.0, temperature=2.0)
    assert terms.total.item() == pytest.approx(hard_label_ce(student, labels).item())
    assert terms.kl is None and set(terms.parts()) == {"ce"}
    # No teacher logits at all are needed either; with alpha < 1 they are.
    assert distillation_loss(student, None, labels, 1.0, 2.0).total.item() == terms.total.item()
    with pytest.raises(ValueError, match="teacher logits"):
        distillation_loss(student, None, labels, 0.5, 2.0)


def test_alpha_zero_is_pure_soft_targets():
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    terms = distillation_loss(student, teacher, labels, alpha=0.0, temperature=2.0)
    assert terms.total.item() == pytest.approx(soft_target_kl(student, teacher, 2.0).item())
    assert terms.ce.item() > 0  # still reported, with weight 0


def test_half_precision_inputs_are_upcast():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    full = soft_target_kl(student, teacher, 2.0)
    half = soft_target_kl(student.bfloat16(), teacher.bfloat16(), 2.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_gradient_flows_to_the_student_only():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    distillation_loss(student, teacher.detach(), labels, 0.5, 2.0).total.backward()
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
