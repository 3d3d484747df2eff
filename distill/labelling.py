"""Which runtime labels the logit cache: the PyTorch teacher, or its graph in another runtime.

The core knows only PyTorch. Another runtime (ONNX Runtime fp32 or INT8: `deploy/`) reaches
the cache as a `Labelling`: its name (part of the cache's key, so a cache labelled by one
runtime is never served for another), the key of the graph it runs, and a picklable `open` that
gives a worker a `BatchLabeller` (token ids -> float32 logits and [CLS] states).

Whether a runtime may label is decided here, on measured numbers (pure functions): its logits
on the validation split against the PyTorch teacher's (max |diff|, label agreement, mean KL of
the soft targets at the distillation temperature), each runtime against its `LabellingGate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from distill.config import ConfigError, TrainingConfig
from distill.devices import CPU, Runtime, resolve_runtime
from distill.store import ManifestRecord

TORCH_RUNTIME = "torch"
RUNTIMES = (TORCH_RUNTIME, "onnx", "onnx-int8")


class BatchLabeller(Protocol):
    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One padded batch (int64 [batch, tokens]) -> (float32 logits [batch, labels], [CLS]
        states [batch, layers + 1, hidden]: after the embeddings and after every layer)."""
        ...


class TorchLabeller:
    """The PyTorch teacher as a `BatchLabeller` on `runtime`'s device and precision (default
    CPU, fp32): what labels a `torch` cache, the reference the gates compare against, and the
    `torch` entry of a throughput measurement."""

    def __init__(self, model: torch.nn.Module, runtime: Runtime = CPU) -> None:
        self.model = model.to(runtime.device).eval()
        self.runtime = runtime

    @torch.inference_mode()
    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        device = self.runtime.device
        with self.runtime.autocast():
            out = self.model(
                input_ids=torch.from_numpy(input_ids).to(device),
                attention_mask=torch.from_numpy(attention_mask).to(device),
                output_hidden_states=True,
            )
        states = torch.stack([h[:, 0] for h in out.hidden_states], 1)
        return out.logits.float().cpu().numpy(), states.float().cpu().numpy()


class CandidateFigures(ManifestRecord):
    """One runtime's numbers against the PyTorch teacher (None: not measured) and its verdict."""

    runtime: str
    max_abs_logit_diff: float | None = None
    agreement: float | None = None  # share of validation labels equal to PyTorch's
    mean_kl: float | None = None  # KL(PyTorch soft targets || the runtime's), at `temperature`
    passed: bool
    reason: str


class LabellingRecord(ManifestRecord):
    """What was asked for, what labels the cache and why, with every candidate's numbers."""

    requested: str  # teacher.labelling
    runtime: str  # what labelled the cache
    reason: str
    temperature: float  # of the KL figures (the run's student.temperature when it was built)
    validation_texts: int = 0
    candidates: list[CandidateFigures] = []


@dataclass(frozen=True)
class Labelling:
    """The runtime that labels a cache. `graph_key`: the stage that holds its graph (None: the
    PyTorch teacher); `open`: a picklable factory of its `BatchLabeller` (None: PyTorch);
    `release`: drops what `open` keeps open in this process (a session and its memory arena,
    reused across shards) once the cache is built; `precision`: what PyTorch labels in (None:
    what the teacher's `training` section resolves to; see `torch_precision`)."""

    runtime: str = TORCH_RUNTIME
    graph_key: str | None = None
    open: Callable[[], BatchLabeller] | None = None
    record: LabellingRecord | None = None
    release: Callable[[], None] | None = None
    precision: str | None = None


TORCH = Labelling()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(-1, keepdims=True)


def mean_kl(reference: np.ndarray, candidate: np.ndarray, temperature: float) -> float:
    """Mean over rows of KL(softmax(reference / T) || softmax(candidate / T)), in nats."""
    p, q = softmax(reference, temperature), softmax(candidate, temperature)
    tiny = np.finfo(np.float64).tiny
    return float(np.mean(np.sum(p * (np.log(p + tiny) - np.log(q + tiny)), -1)))


def parity_figures(
    runtime: str, reference: np.ndarray, candidate: np.ndarray, temperature: float
) -> CandidateFigures:
    """A candidate's logits against PyTorch's on the same rows (verdict still open)."""
    if reference.shape != candidate.shape or len(reference) == 0:
        raise ValueError(
            f"{runtime}: logits of shape {candidate.shape} against PyTorch's {reference.shape}"
        )
    return CandidateFigures(
        runtime=runtime,
        max_abs_logit_diff=float(np.abs(reference - candidate).max()),
        agreement=float(np.mean(reference.argmax(-1) == candidate.argmax(-1))),
        mean_kl=mean_kl(reference, candidate, temperature),
        passed=False,
        reason="not judged",
    )


@dataclass(frozen=True)
class LabellingGate:
    """What a runtime's logits must show against PyTorch's before its soft targets are cached
    (None: no bound on that figure)."""

    min_agreement: float
    max_abs_logit_diff: float | None = None
    max_mean_kl: float | None = None

    def judge(self, figures: CandidateFigures) -> CandidateFigures:
        """`figures` with the verdict filled in; the reason names every figure and bound."""
        problems = []
        if not figures.agreement >= self.min_agreement:  # `not >=` also refuses NaN
            problems.append(f"label agreement {figures.agreement:.4%} < {self.min_agreement:.2%}")
        diff, kl = figures.max_abs_logit_diff, figures.mean_kl
        if self.max_abs_logit_diff is not None and not diff <= self.max_abs_logit_diff:
            problems.append(f"max |logit diff| {diff:.3g} > {self.max_abs_logit_diff:g}")
        if self.max_mean_kl is not None and not kl <= self.max_mean_kl:
            problems.append(f"mean KL {kl:.3g} > {self.max_mean_kl:g}")
        measured = (
            f"agreement {figures.agreement:.4%}, max |logit diff| {diff:.3g}, mean KL {kl:.3g}"
        )
        if problems:
            reason = f"refused: {'; '.join(problems)} (measured {measured})"
        else:
            reason = f"passes its gate ({measured})"
        return figures.model_copy(update={"passed": not problems, "reason": reason})


# fp32 ONNX computes the same function as PyTorch in another operator order: its logits differ
# by rounding only (1.5e-7 measured on MPNet-base). 1e-3 leaves room for fused kernels' rounding
# while catching a wrong graph (a broken mask or position ids moves logits by 0.1 or more); a
# label may flip only where the two classes' logits tie within that, hence 99.9%.
ONNX_GATE = LabellingGate(min_agreement=0.999, max_abs_logit_diff=1e-3)
# INT8 changes the function itself (0.05 max |diff| measured on MPNet's untrained head), so its
# bound is on what the student learns from: the labels (99.5%) and the soft targets. A mean KL
# of 0.01 nats is about 1% of the information in a 2-class soft target at most, well under the
# run-to-run spread of the student's own KL term.
INT8_GATE = LabellingGate(min_agreement=0.995, max_mean_kl=0.01)
GATES: Mapping[str, LabellingGate] = {"onnx": ONNX_GATE, "onnx-int8": INT8_GATE}


# Why PyTorch labels a CPU cache in fp32 although `precision: auto` resolves to bf16 there.
UNJUDGED_BF16 = (
    "in fp32, the reference: `precision: auto` labels in bf16 only on the evidence that "
    "`teacher.labelling: auto` builds (deploy/teacher_precision.py)"
)


def torch_precision(training: TrainingConfig) -> str | None:
    """What PyTorch labels in without evidence on its low precision: fp32 where the teacher's
    `precision: auto` resolves to bf16 on the CPU (bf16 changes the soft targets, and only
    `deploy/teacher_precision.py`'s check says by how much and whether it pays); None (the
    teacher's own precision) for a precision the config names, or on an accelerator."""
    if training.precision != "auto":
        return None
    runtime = resolve_runtime(training, "teacher.training")
    unjudged = runtime.device.type == "cpu" and runtime.precision != "fp32"
    return "fp32" if unjudged else None


def torch_only(requested: str, temperature: float, training: TrainingConfig) -> Labelling:
    """The core's own choice: PyTorch for `auto` and `torch` (at `torch_precision`); another
    runtime needs `deploy`'s chooser (`deploy.labelling.choose_labelling`), so asking for one
    here is an error."""
    if requested not in ("auto", TORCH_RUNTIME):
        raise ConfigError(
            f"config key 'teacher.labelling': {requested!r} needs the ONNX labeller of "
            "deploy/labelling.py; this caller wires only PyTorch (use deploy.chain)"
        )
    reason = "asked for" if requested == TORCH_RUNTIME else "auto without an ONNX labeller wired"
    precision = torch_precision(training)
    if precision is not None:
        reason = f"{reason}; {UNJUDGED_BF16}"
    record = LabellingRecord(
        requested=requested, runtime=TORCH_RUNTIME, reason=reason, temperature=temperature
    )
    return Labelling(record=record, precision=precision)
