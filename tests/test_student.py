"""The student's loss is composed of small terms; the student stage trains from cached targets."""

import numpy as np
import pytest
import torch

from distill.batching import collate
from distill.config import build_config
from distill.data import load_split
from distill.losses import distillation_loss, patient_kd_loss
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


def test_without_hidden_weight_the_loss_is_the_logit_loss(batch_and_targets, tiny_classifier):
    batch, targets = batch_and_targets
    config = build_config({}, ["student.alpha=0.3", "student.temperature=2"]).student
    logits = tiny_classifier(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits
    expected = distillation_loss(
        logits, torch.from_numpy(targets.logits[:8]), batch["label"], 0.3, 2.0
    )
    terms = student_loss(config, targets)(tiny_classifier, batch)
    assert terms.total.item() == pytest.approx(expected.total.item(), rel=1e-5)
    assert terms.ce.item() == pytest.approx(expected.ce.item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(expected.kl.item(), rel=1e-5)
    assert terms.pkd is None and set(terms.parts()) == {"ce", "kl"}


def test_hidden_weight_adds_patient_kd_over_the_mapped_layers(batch_and_targets, tiny_classifier):
    batch, targets = batch_and_targets
    overrides = [
        "student.alpha=0.3",
        "student.hidden.weight=2.0",
        "student.hidden.layer_map=[[0, 1], [2, 2]]",
    ]
    config = build_config({}, overrides).student
    out = tiny_classifier(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
    )
    logit_part = distillation_loss(
        out.logits, torch.from_numpy(targets.logits[:8]), batch["label"], 0.3, 2.0
    )
    student_cls = torch.stack([out.hidden_states[1][:, 0], out.hidden_states[3][:, 0]], 1)
    teacher_cls = torch.from_numpy(targets.cls_states[:8][:, [2, 3]])
    pkd = patient_kd_loss(student_cls, teacher_cls)
    expected = logit_part.total + 2.0 * pkd
    terms = student_loss(config, targets)(tiny_classifier, batch)
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms.pkd.item() == pytest.approx(pkd.item(), rel=1e-5)  # unweighted
    assert terms.pkd.item() > 0 and set(terms.parts()) == {"ce", "kl", "pkd"}


def test_alpha_one_reads_no_cached_logits(batch_and_targets, tiny_classifier):
    batch, targets = batch_and_targets
    poisoned = TeacherTargets(np.full_like(targets.logits, np.nan), targets.cls_states)
    config = build_config({}, ["student.alpha=1"]).student
    terms = student_loss(config, poisoned)(tiny_classifier, batch)
    assert torch.isfinite(terms.total) and terms.kl is None
    assert terms.total.item() == pytest.approx(terms.ce.item())


def test_a_narrower_student_gets_its_own_stage_key():
    from distill.student import student_key

    stub = Artifact("stub", "upstream-key", None, None)
    default = build_config({}).student
    narrow = build_config({}, ["student.init.intermediate_size=768"]).student
    assert student_key(narrow, stub, stub, stub) != student_key(default, stub, stub, stub)
