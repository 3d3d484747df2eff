"""Knowledge-distillation losses: small pure functions, and the named terms built on them.

Shapes: logits are [batch, num_classes], labels are [batch] (UNLABELLED marks rows without a
label, such as augmented text), [CLS] states are [batch, mapped_layers, hidden]. All losses
upcast to float32 and reduce to a scalar.

A loss term is one `LossTerm` class in `LOSS_TERMS`: its name (logged as `student/<name>` and
drawn in the model card), its weight read from the student config, and `compute`. The student's
loss is the weighted sum of the terms that have a weight (`weighted_loss`); the training loop,
MLflow and the model card iterate over the parts it returns, in registry order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from distill.config import StudentConfig

UNLABELLED = -100  # label of rows that only have teacher targets


@dataclass(frozen=True)
class LossTerms:
    """The loss to optimise and its unweighted parts by term name (only the terms computed).

    Logging the parts apart shows how a setting (T, alpha, a term's weight) trades them off.
    """

    total: torch.Tensor
    parts: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def floats(self) -> dict[str, float]:
        """The parts as floats, in the order they were computed (for logging)."""
        return {name: float(value.item()) for name, value in self.parts.items()}


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al.).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def hard_label_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled rows; 0 (with a gradient path) when no row has a label."""
    labelled = labels != UNLABELLED
    if not labelled.any():
        return student_logits.float().sum() * 0.0
    return F.cross_entropy(student_logits[labelled].float(), labels[labelled])


def patient_kd_loss(student_states: torch.Tensor, teacher_states: torch.Tensor) -> torch.Tensor:
    """Patient-KD (Sun et al., 2019): squared distance of L2-normalised [CLS] states.

    Shapes: [batch, mapped_layers, hidden] for both; summed over hidden, averaged over the
    batch and the mapped layers. Normalising makes the term independent of activation scale.
    """
    student = F.normalize(student_states.float(), dim=-1)
    teacher = F.normalize(teacher_states.float(), dim=-1)
    return (student - teacher).pow(2).sum(-1).mean()


def cls_cosine_loss(student_states: torch.Tensor, teacher_states: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of [CLS] states, averaged over the batch and the mapped layers.

    Shapes: [batch, mapped_layers, hidden] for both. 0 for parallel states, 2 for opposite
    ones. For unit vectors |s - t|^2 = 2 - 2 cos(s, t), so on the same layers this is half the
    Patient-KD term: a different scale of the same pull, not a new signal.
    """
    similarity = F.cosine_similarity(student_states.float(), teacher_states.float(), dim=-1)
    return (1.0 - similarity).mean()


@dataclass(frozen=True)
class Outputs:
    """One side of a batch, student or teacher: logits [batch, num_classes] and [CLS] states
    at the mapped layers [batch, mapped_layers, hidden]; None where no active term reads them."""

    logits: torch.Tensor | None
    cls_states: torch.Tensor | None = None


class LossTerm(ABC):
    """One named part of the student's loss, configured by the student config.

    A term with weight 0 is not computed, unless `always_computed` (it is then logged and
    added with weight 0). `reads_teacher_logits` / `reads_cls_states` say which outputs it
    needs: the student loss reads cached logits and hidden states only for terms that do.
    """

    name: ClassVar[str]  # the metric name: `student/<name>` in MLflow, a line in the card
    reads_teacher_logits: ClassVar[bool] = False
    reads_cls_states: ClassVar[bool] = False
    always_computed: ClassVar[bool] = False

    def __init__(self, config: StudentConfig) -> None:
        self.config = config

    @property
    @abstractmethod
    def weight(self) -> float:
        """This term's weight in the total, read from the config."""

    @abstractmethod
    def compute(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        """The unweighted term for one batch, a float32 scalar."""

    @property
    def active(self) -> bool:
        return self.weight > 0 or self.always_computed


class HardLabelCE(LossTerm):
    """Cross-entropy with the labels, weight `student.alpha`; logged even when alpha is 0."""

    name = "ce"
    always_computed = True

    @property
    def weight(self) -> float:
        return self.config.alpha

    def compute(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        assert student.logits is not None
        return hard_label_ce(student.logits, labels)


class SoftTargetKL(LossTerm):
    """T^2-scaled KL to the teacher's softened logits, weight 1 - `student.alpha`."""

    name = "kl"
    reads_teacher_logits = True

    @property
    def weight(self) -> float:
        return 1 - self.config.alpha

    def compute(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        assert student.logits is not None and teacher.logits is not None
        return soft_target_kl(student.logits, teacher.logits, self.config.temperature)


class PatientKD(LossTerm):
    """Patient-KD over the mapped layers, weight `student.hidden.weight`."""

    name = "pkd"
    reads_cls_states = True

    @property
    def weight(self) -> float:
        return self.config.hidden.weight

    def compute(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        assert student.cls_states is not None and teacher.cls_states is not None
        return patient_kd_loss(student.cls_states, teacher.cls_states)


class ClsCosine(LossTerm):
    """Cosine distance of the mapped [CLS] states, weight `student.hidden.cosine_weight`."""

    name = "cls_cosine"
    reads_cls_states = True

    @property
    def weight(self) -> float:
        return self.config.hidden.cosine_weight

    def compute(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        assert student.cls_states is not None and teacher.cls_states is not None
        return cls_cosine_loss(student.cls_states, teacher.cls_states)


# Every loss term, in the order they are summed, logged and drawn. A new term: a class above,
# its weight field in distill/config.py (under `student.hidden` if it reads [CLS] states, named
# `*weight`), and a test.
LOSS_TERMS: tuple[type[LossTerm], ...] = (HardLabelCE, SoftTargetKL, PatientKD, ClsCosine)
LOSS_TERM_NAMES: tuple[str, ...] = tuple(term.name for term in LOSS_TERMS)


def active_terms(config: StudentConfig) -> list[LossTerm]:
    """The terms this config computes, in registry order."""
    return [term for term in (kind(config) for kind in LOSS_TERMS) if term.active]


def weighted_loss(
    terms: Sequence[LossTerm], student: Outputs, teacher: Outputs, labels: torch.Tensor
) -> LossTerms:
    """The sum of weight * term over `terms` (in their order), and each term unweighted."""
    if not terms:
        raise ValueError("a loss needs at least one term")
    for term in terms:
        if term.reads_teacher_logits and teacher.logits is None:
            raise ValueError(f"loss term '{term.name}' needs teacher logits")
        if term.reads_cls_states and (student.cls_states is None or teacher.cls_states is None):
            raise ValueError(f"loss term '{term.name}' needs [CLS] states of both models")
    parts = {term.name: term.compute(student, teacher, labels) for term in terms}
    total: torch.Tensor | None = None
    for term in terms:
        weighted = term.weight * parts[term.name]
        total = weighted if total is None else total + weighted
    assert total is not None
    return LossTerms(total, parts)


def distillation_loss(
    config: StudentConfig, student: Outputs, teacher: Outputs, labels: torch.Tensor
) -> LossTerms:
    """The student's loss for one batch: every term the config gives a weight (and CE)."""
    return weighted_loss(active_terms(config), student, teacher, labels)
