"""Knowledge-distillation losses as small composable functions.

Shapes: logits are [batch, num_classes], labels are [batch] (UNLABELLED marks rows without a
label, such as augmented text). All losses upcast to float32 and reduce to a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

UNLABELLED = -100  # label of rows that only have teacher targets


@dataclass(frozen=True)
class LossTerms:
    """The loss to optimise and its unweighted parts (None: the term is not part of this loss).

    `ce` is the hard-label cross-entropy, `kl` the T^2-scaled soft-target KL, `pkd` the
    Patient-KD distance. Logging them apart shows how a T/alpha setting trades them off.
    """

    total: torch.Tensor
    ce: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    pkd: torch.Tensor | None = None

    def parts(self) -> dict[str, float]:
        """The terms present, as floats (for logging)."""
        terms = {"ce": self.ce, "kl": self.kl, "pkd": self.pkd}
        return {name: float(value.item()) for name, value in terms.items() if value is not None}

    def with_pkd(self, pkd: torch.Tensor, weight: float) -> LossTerms:
        """These terms plus `weight` * the Patient-KD term."""
        return LossTerms(self.total + weight * pkd, self.ce, self.kl, pkd)


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


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> LossTerms:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    With alpha = 1 the teacher's logits are not used (they may be None) and `kl` is None.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ce = hard_label_ce(student_logits, labels)
    total = alpha * ce
    if alpha == 1:  # labels-only training needs no teacher logits at all
        return LossTerms(total, ce=ce)
    if teacher_logits is None:
        raise ValueError(f"alpha {alpha} < 1 needs teacher logits")
    kl = soft_target_kl(student_logits, teacher_logits, temperature)
    return LossTerms(total + (1 - alpha) * kl, ce=ce, kl=kl)
