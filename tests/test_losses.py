"""The student's loss is a weighted sum of named terms: a*CE + (1-a)*T^2*KL(softmax(t/T) ||
softmax(s/T)) + the [CLS]-state terms (Patient-KD, cosine) that have a weight."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.config import ConfigError, HiddenDistillConfig, StudentConfig, build_config
from distill.losses import (
    LOSS_TERM_NAMES,
    LOSS_TERMS,
    UNLABELLED,
    Outputs,
    active_terms,
    cls_cosine_loss,
    distillation_loss,
    hard_label_ce,
    patient_kd_loss,
    soft_target_kl,
    weighted_loss,
)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def student_config(*overrides: str) -> StudentConfig:
    return build_config({}, list(overrides)).student


def logit_loss(student, teacher, labels, alpha, temperature):
    config = student_config(f"student.alpha={alpha}", f"student.temperature={temperature}")
    return distillation_loss(config, Outputs(student), Outputs(teacher), labels)


def test_hand_computed_value():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # teacher probabilities 0.75 / 0.25 at T=1
    label = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = math.log(2.0)
    expected = 0.3 * ce + 0.7 * kl
    terms = logit_loss(student, teacher, label, alpha=0.3, temperature=1.0)
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)
    # The parts are unweighted: ce and kl as computed by hand, no [CLS]-state term.
    assert terms.floats() == pytest.approx({"ce": ce, "kl": kl}, rel=1e-6)
    assert list(terms.parts) == ["ce", "kl"]


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.9])
def test_total_is_the_alpha_weighted_sum_of_the_parts(alpha):
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    terms = logit_loss(student, teacher, labels, alpha=alpha, temperature=3.0)
    ce, kl = terms.parts["ce"].item(), terms.parts["kl"].item()
    assert ce == pytest.approx(hard_label_ce(student, labels).item())
    assert kl == pytest.approx(soft_target_kl(student, teacher, 3.0).item())
    assert terms.total.item() == pytest.approx(alpha * ce + (1 - alpha) * kl, rel=1e-6)


def test_all_unlabelled_batch_has_zero_ce_and_only_the_soft_term():
    student, teacher = torch.randn(4, 2, requires_grad=True), torch.randn(4, 2)
    labels = torch.full((4,), UNLABELLED)
    terms = logit_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    assert terms.parts["ce"].item() == 0.0
    assert terms.total.item() == pytest.approx(0.5 * soft_target_kl(student, teacher, 2.0).item())
    terms.total.backward()
    assert student.grad.abs().sum() > 0


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
    terms = logit_loss(student, garbage_teacher, labels, alpha=1.0, temperature=2.0)
    assert terms.total.item() == pytest.approx(hard_label_ce(student, labels).item())
    assert set(terms.parts) == {"ce"}
    # No teacher logits at all are needed either; with alpha < 1 they are.
    assert logit_loss(student, None, labels, 1.0, 2.0).total.item() == terms.total.item()
    with pytest.raises(ValueError, match="loss term 'kl' needs teacher logits"):
        logit_loss(student, None, labels, 0.5, 2.0)


def test_alpha_zero_is_pure_soft_targets():
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    terms = logit_loss(student, teacher, labels, alpha=0.0, temperature=2.0)
    assert terms.total.item() == pytest.approx(soft_target_kl(student, teacher, 2.0).item())
    assert terms.parts["ce"].item() > 0  # still reported, with weight 0


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
    logit_loss(student, teacher.detach(), labels, 0.5, 2.0).total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_a_negative_term_weight_is_refused_naming_the_key():
    # alpha and temperature out of range: tests/test_config.py
    with pytest.raises(ConfigError, match=r"student\.hidden\.cosine_weight"):
        student_config("student.hidden.cosine_weight=-1")


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


def test_cls_cosine_hand_computed_and_scale_free():
    # One batch row, three mapped layers: orthogonal (1 - 0), parallel (1 - 1), opposite (1 + 1).
    student = torch.tensor([[[3.0, 0.0], [2.0, 2.0], [1.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 5.0], [1.0, 1.0], [-4.0, 0.0]]])
    assert cls_cosine_loss(student, teacher).item() == pytest.approx((1 + 0 + 2) / 3)
    states = torch.randn(4, 2, 8)
    assert cls_cosine_loss(states, 7.0 * states).item() == pytest.approx(0.0, abs=1e-6)


def test_cls_cosine_is_half_of_patient_kd_on_the_same_states():
    """|s - t|^2 = 2 - 2 cos(s, t) for unit vectors: the two terms differ by scale only."""
    student, teacher = torch.randn(6, 3, 16), torch.randn(6, 3, 16).half()
    cosine, pkd = cls_cosine_loss(student, teacher), patient_kd_loss(student, teacher)
    assert cosine.dtype == torch.float32
    assert cosine.item() == pytest.approx(pkd.item() / 2, rel=1e-5)


# The registry.


def test_terms_have_unique_names_in_summing_order():
    assert LOSS_TERM_NAMES == ("ce", "kl", "pkd", "cls_cosine")
    assert len(set(LOSS_TERM_NAMES)) == len(LOSS_TERMS)


def test_the_default_config_computes_the_logit_terms_only():
    """The default run's loss: alpha * CE + (1 - alpha) * KL, nothing else."""
    config = student_config()
    assert [term.name for term in active_terms(config)] == ["ce", "kl"]
    assert [term.weight for term in active_terms(config)] == [0.5, 0.5]
    assert config.hidden_layer_map() == []


@pytest.mark.parametrize(
    "field", [name for name in HiddenDistillConfig.model_fields if name.endswith("weight")]
)
def test_each_hidden_weight_turns_on_one_cls_state_term_and_the_layer_map(field):
    """A [CLS]-state term's weight lives under `student.hidden` and is named `*weight`: setting
    it turns on the layer map (hidden states are read) and exactly that term."""
    config = student_config(f"student.hidden.{field}=0.25")
    added = [t for t in active_terms(config) if t.name not in ("ce", "kl")]
    assert len(added) == 1 and added[0].reads_cls_states and added[0].weight == 0.25
    assert config.hidden_layer_map() == [(0, 0), (1, 2), (2, 5)]  # the copied teacher layers


def test_every_cls_state_term_has_a_hidden_weight():
    cls_terms = {kind.name for kind in LOSS_TERMS if kind.reads_cls_states}
    turned_on = set()
    for field in HiddenDistillConfig.model_fields:
        if field.endswith("weight"):
            config = student_config(f"student.hidden.{field}=1")
            turned_on |= {t.name for t in active_terms(config) if t.reads_cls_states}
    assert turned_on == cls_terms == {"pkd", "cls_cosine"}


def test_cls_state_terms_are_added_with_their_weights_and_reported_unweighted():
    config = student_config(
        "student.alpha=0.3", "student.hidden.weight=2", "student.hidden.cosine_weight=0.5"
    )
    logits, teacher_logits, labels = (
        torch.randn(4, 2),
        torch.randn(4, 2),
        torch.tensor([0, 1, 1, 0]),
    )
    states, teacher_states = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    terms = distillation_loss(
        config, Outputs(logits, states), Outputs(teacher_logits, teacher_states), labels
    )
    parts = terms.floats()
    assert list(parts) == ["ce", "kl", "pkd", "cls_cosine"]
    assert parts["pkd"] == pytest.approx(patient_kd_loss(states, teacher_states).item())
    assert parts["cls_cosine"] == pytest.approx(cls_cosine_loss(states, teacher_states).item())
    expected = 0.3 * parts["ce"] + 0.7 * parts["kl"] + 2 * parts["pkd"] + 0.5 * parts["cls_cosine"]
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)


def test_a_cls_state_term_without_states_is_refused_by_name():
    config = student_config("student.hidden.cosine_weight=1")
    with pytest.raises(ValueError, match="'cls_cosine' needs \\[CLS\\] states"):
        distillation_loss(config, Outputs(torch.randn(2, 2)), Outputs(torch.randn(2, 2)), None)


def test_a_loss_without_terms_is_refused():
    with pytest.raises(ValueError, match="at least one term"):
        weighted_loss([], Outputs(torch.randn(2, 2)), Outputs(None), torch.tensor([0, 1]))
