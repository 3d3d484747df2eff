"""The student's loss is composed of small terms; the student stage trains from cached targets."""

import numpy as np
import pytest
import torch

from distill.batching import collate
from distill.config import build_config
from distill.data import load_split
from distill.losses import (
    Outputs,
    cls_cosine_loss,
    hard_label_ce,
    patient_kd_loss,
    soft_target_kl,
)
from distill.rows import TeacherTargets
from distill.store import Artifact
from distill.student import student_loss


@pytest.fixture
def batch_and_targets(tiny_data, tiny_classifier):
    split = load_split(tiny_data.path, "train")
    batch = collate(split, np.arange(8))
    rng = np.random.default_rng(0)
    targets = TeacherTargets(
        logits=rng.normal(size=(len(split), 2)).astype(np.float32),
        cls_states=rng.normal(size=(len(split), 4, 32)).astype(np.float16),
    )
    return batch, targets


def test_without_hidden_weights_the_loss_is_the_logit_loss(batch_and_targets, tiny_classifier):
    batch, targets = batch_and_targets
    config = build_config({}, ["student.alpha=0.3", "student.temperature=2"]).student
    logits = tiny_classifier(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits
    ce = hard_label_ce(logits, batch["label"])
    kl = soft_target_kl(logits, torch.from_numpy(targets.logits[:8]), 2.0)
    terms = student_loss(config, targets)(tiny_classifier, batch)
    assert terms.total.item() == pytest.approx((0.3 * ce + 0.7 * kl).item(), rel=1e-5)
    assert terms.floats() == pytest.approx({"ce": ce.item(), "kl": kl.item()}, rel=1e-5)


def mapped_cls_states(model, batch, targets):
    """Student and teacher [CLS] states of student blocks 0, 2 and teacher blocks 1, 2."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
    )
    student_cls = torch.stack([out.hidden_states[1][:, 0], out.hidden_states[3][:, 0]], 1)
    teacher_cls = torch.from_numpy(targets.cls_states[:8][:, [2, 3]])
    return Outputs(out.logits, student_cls), teacher_cls


def test_hidden_weights_add_the_cls_state_terms_over_the_mapped_layers(
    batch_and_targets, tiny_classifier
):
    batch, targets = batch_and_targets
    overrides = [
        "student.alpha=0.3",
        "student.hidden.weight=2.0",
        "student.hidden.cosine_weight=0.5",
        "student.hidden.layer_map=[[0, 1], [2, 2]]",
    ]
    config = build_config({}, overrides).student
    student, teacher_cls = mapped_cls_states(tiny_classifier, batch, targets)
    ce = hard_label_ce(student.logits, batch["label"])
    kl = soft_target_kl(student.logits, torch.from_numpy(targets.logits[:8]), 2.0)
    pkd = patient_kd_loss(student.cls_states, teacher_cls)
    cosine = cls_cosine_loss(student.cls_states, teacher_cls)
    expected = 0.3 * ce + 0.7 * kl + 2.0 * pkd + 0.5 * cosine
    terms = student_loss(config, targets)(tiny_classifier, batch)
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert list(terms.parts) == ["ce", "kl", "pkd", "cls_cosine"]
    assert terms.parts["pkd"].item() == pytest.approx(pkd.item(), rel=1e-5)  # unweighted
    assert terms.parts["cls_cosine"].item() == pytest.approx(cosine.item(), rel=1e-5)
    assert terms.parts["cls_cosine"].item() > 0


def test_the_cosine_term_alone_reads_the_mapped_states(batch_and_targets, tiny_classifier):
    batch, targets = batch_and_targets
    overrides = ["student.hidden.cosine_weight=1", "student.hidden.layer_map=[[0, 1], [2, 2]]"]
    config = build_config({}, overrides).student
    student, teacher_cls = mapped_cls_states(tiny_classifier, batch, targets)
    terms = student_loss(config, targets)(tiny_classifier, batch)
    assert list(terms.parts) == ["ce", "kl", "cls_cosine"]
    expected = cls_cosine_loss(student.cls_states, teacher_cls).item()
    assert terms.parts["cls_cosine"].item() == pytest.approx(expected, rel=1e-5)


def test_alpha_one_reads_no_cached_logits(batch_and_targets, tiny_classifier):
    batch, targets = batch_and_targets
    poisoned = TeacherTargets(np.full_like(targets.logits, np.nan), targets.cls_states)
    config = build_config({}, ["student.alpha=1"]).student
    terms = student_loss(config, poisoned)(tiny_classifier, batch)
    assert torch.isfinite(terms.total) and list(terms.parts) == ["ce"]
    assert terms.total.item() == pytest.approx(terms.parts["ce"].item())


def test_a_narrower_student_gets_its_own_stage_key():
    from distill.student import student_key

    stub = Artifact("stub", "upstream-key", None, None)
    default = build_config({}).student
    narrow = build_config({}, ["student.init.intermediate_size=768"]).student
    assert student_key(narrow, stub, stub, stub) != student_key(default, stub, stub, stub)
