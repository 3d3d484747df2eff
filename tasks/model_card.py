"""The model card a reviewer reads in the registry: Markdown text plus a few PNG plots.

Built only from the stages' manifests and numbers measured at promotion time, so it can be
rendered and tested without a registry. Every number in it comes from a manifest or a measurement.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.gates import GateResult, all_passed
from distill.paired import PairedComparison, ScoreInterval, score_interval

if TYPE_CHECKING:
    from deploy.chain import RunArtifacts
    from deploy.export import ExportManifest
    from deploy.quantize import QuantizeManifest, StepCosts
    from distill.data import DataQuality
    from distill.evaluation import EvaluationManifest
    from distill.logit_cache import CacheManifest

CARD = "model_card.md"
CURVES = "training_curves.png"
CONFUSION = "confusion_matrix.png"
TRADE_OFF = "accuracy_vs_latency.png"
GATES = "gates.json"
SPLIT_ORDER = ("train", "validation", "test")
DESCRIPTION_LIMIT = 5000  # MLflow stores a model version's description in 5000 characters


@dataclass(frozen=True)
class ModelPoint:
    """One model on the accuracy / latency plane (batch-1, one thread)."""

    label: str
    accuracy: float
    p50_ms: float
    p95_ms: float
    size_bytes: int | None = None


@dataclass(frozen=True)
class ClassScores:
    label: str
    precision: float
    recall: float
    support: int


@dataclass(frozen=True)
class Disagreement:
    """A test text on which the shipped model and the teacher answer differently."""

    text: str
    label: str  # the true one
    shipped: str
    shipped_probability: float
    teacher: str
    teacher_probability: float


@dataclass(frozen=True)
class CardEvidence:
    """What a reviewer needs to trust the numbers: the shipped model's scores on the test split
    with 95% intervals, per class, against the champion (paired), and where it and the teacher
    disagree."""

    accuracy: ScoreInterval
    macro_f1: ScoreInterval
    per_class: tuple[ClassScores, ...]
    vs_champion: PairedComparison | None
    disagreements: tuple[Disagreement, ...]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def card_evidence(
    texts: Sequence[str],
    labels: Sequence[int],
    shipped_logits: np.ndarray,
    teacher_logits: np.ndarray,
    label_names: Sequence[str],
    vs_champion: PairedComparison | None = None,
    limit: int = 10,
) -> CardEvidence:
    """The card's evidence from both models' logits on the same test texts. The disagreements
    shown are those the teacher was surest of (most telling first), at most `limit`."""
    truth = np.asarray(labels)
    shipped_probs, teacher_probs = _softmax(shipped_logits), _softmax(teacher_logits)
    shipped, teacher = shipped_probs.argmax(-1), teacher_probs.argmax(-1)
    if not (len(texts) == len(truth) == len(shipped) == len(teacher)):
        raise ValueError(
            f"card evidence needs one row per text: {len(texts)} texts, {len(truth)} labels, "
            f"{len(shipped)} shipped and {len(teacher)} teacher predictions"
        )
    classes = len(label_names)
    per_class = []
    for k, name in enumerate(label_names):
        true_positive = int(np.sum((shipped == k) & (truth == k)))
        predicted, support = int(np.sum(shipped == k)), int(np.sum(truth == k))
        per_class.append(
            ClassScores(
                name,
                true_positive / predicted if predicted else 0.0,
                true_positive / support if support else 0.0,
                support,
            )
        )
    differing = np.flatnonzero(shipped != teacher)
    surest = differing[np.argsort(-teacher_probs[differing, teacher[differing]], kind="stable")]
    disagreements = tuple(
        Disagreement(
            texts[row],
            label_names[truth[row]],
            label_names[shipped[row]],
            float(shipped_probs[row, shipped[row]]),
            label_names[teacher[row]],
            float(teacher_probs[row, teacher[row]]),
        )
        for row in surest[:limit].tolist()
    )
    return CardEvidence(
        accuracy=score_interval(shipped, truth, "accuracy", classes),
        macro_f1=score_interval(shipped, truth, "macro_f1", classes),
        per_class=tuple(per_class),
        vs_champion=vs_champion,
        disagreements=disagreements,
    )


def evidence_sections(
    evidence: CardEvidence, shipped: PairedComparison, champion_version: str | None
) -> list[str]:
    """The card's evidence, as Markdown sections; `shipped`: the shipped model against the
    trained student on validation (what the compression gates decided on)."""

    def interval(score: ScoreInterval) -> str:
        return f"{score.interval[0]:.4f} to {score.interval[1]:.4f}"

    if evidence.vs_champion is None:
        champion = "No champion to compare with: this is the registry's first gated model."
        if champion_version is not None:
            champion = f"Champion v{champion_version} could not be scored on this run's data."
    else:
        champion = (
            f"Against champion v{champion_version}, paired on the same "
            f"{evidence.vs_champion.n} test texts: {evidence.vs_champion.summary()}."
        )
    sections = [
        "## Evidence (test split, shipped model, 95% bootstrap intervals)",
        _table(
            ["metric", "score", "95% interval", "texts"],
            [
                [
                    "accuracy",
                    evidence.accuracy.score,
                    interval(evidence.accuracy),
                    evidence.accuracy.n,
                ],
                [
                    "macro F1",
                    evidence.macro_f1.score,
                    interval(evidence.macro_f1),
                    evidence.macro_f1.n,
                ],
            ],
        ),
        _table(
            ["class", "precision", "recall", "support"],
            [[c.label, c.precision, c.recall, c.support] for c in evidence.per_class],
        ),
        champion,
        f"Shipped model against the trained student on the {shipped.n} validation texts the "
        f"compression gates decided on: {shipped.summary()}.",
    ]
    if evidence.disagreements:
        sections += [
            f"### Test texts where the shipped model and the teacher disagree "
            f"({len(evidence.disagreements)} the teacher was surest of)",
            _table(
                ["text", "label", "shipped (p)", "teacher (p)"],
                [
                    [
                        d.text[:200],
                        d.label,
                        f"{d.shipped} ({d.shipped_probability:.3f})",
                        f"{d.teacher} ({d.teacher_probability:.3f})",
                    ]
                    for d in evidence.disagreements
                ],
            ),
        ]
    return sections


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _megabytes(size: int | None) -> str | None:
    return None if size is None else f"{size / 1e6:.2f} MB"


def data_quality_line(quality: DataQuality) -> str:
    """One line on duplicates across splits and conflicting labels, and what was dropped."""
    found = ", ".join(f"{pair} {count}" for pair, count in quality.cross_split_duplicates.items())
    dropped = quality.dropped
    return (
        f"Data quality: texts in two splits (after case/whitespace normalisation): {found}; "
        f"{dropped.get('train_cross_split', 0)} train copies of validation/test texts dropped; "
        f"{quality.conflicting_label_texts} texts with conflicting labels "
        f"({dropped.get('conflicting_labels', 0)} rows dropped)."
    )


@dataclass(frozen=True)
class ModelIdentities:
    """Both models by source, family and (for the student) how it was made: card and lineage.

    The family is the `model_type` of each saved model's config.json."""

    teacher_source: str
    teacher_family: str
    student_source: str
    student_family: str
    student_init: str

    def tags(self) -> dict[str, str]:
        """As registry version tags, named as the fields."""
        return dataclasses.asdict(self)


def model_identities(artifacts: RunArtifacts) -> ModelIdentities:
    student = artifacts.student.manifest
    return ModelIdentities(
        teacher_source=artifacts.teacher.manifest.source,
        teacher_family=_model_type(artifacts.teacher.path),
        student_source=student.source or "teacher",
        student_family=student.model_type or _model_type(artifacts.student.path),
        student_init=student.init_kind or "teacher_layers",
    )


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", "unknown"))
    except (OSError, json.JSONDecodeError):
        return "unknown"


def render_model_card(
    name: str,
    version: str,
    run_id: str,
    artifacts: RunArtifacts,
    points: Sequence[ModelPoint],
    results: Sequence[GateResult],
    champion_version: str | None,
    evidence: CardEvidence | None = None,
) -> str:
    data, teacher = artifacts.data.manifest, artifacts.teacher.manifest
    student, evaluation = artifacts.student.manifest, artifacts.evaluation.manifest
    export, quantized = artifacts.export.manifest, artifacts.quantize.manifest
    models = model_identities(artifacts)
    decision = (
        "passed every gate: promoted to `champion`"
        if all_passed(results)
        else "failed a gate: stays `challenger`"
    )
    source = data.source
    sizes = {split: data.sizes[split] for split in SPLIT_ORDER if split in data.sizes}
    balance_rows = [
        [split, *(data.label_balance[split].get(label, 0) for label in data.label_names)]
        for split in sizes
    ]
    sections = [
        f"# {name} v{version}",
        f"INT8 ONNX student from MLflow run `{run_id}`; {decision}.",
        _tokenizer_note(export, quantized),
        _cost_note(quantized),
        _graph_note(quantized),
        "## Data",
        _table(
            ["source", "fingerprint", "tokenizer", "max length"],
            [
                [
                    source.name or source.path,
                    f"`{data.fingerprint}`",
                    f"`{data.tokenizer_id}`",
                    data.max_length,
                ]
            ],
        ),
        _table(["split", "examples"], [[split, size] for split, size in sizes.items()]),
        _table(["split", *data.label_names], balance_rows),
        data_quality_line(data.quality),
        "## Models",
        _table(
            ["model", "source", "architecture", "parameters", "size"],
            [
                [
                    "teacher",
                    f"`{models.teacher_source}` ({models.teacher_family})",
                    f"{teacher.num_layers} layers, hidden {teacher.hidden_size}",
                    teacher.params,
                    _megabytes(teacher.weights_bytes),
                ],
                [
                    "student",
                    f"`{models.student_source}` ({models.student_family}, "
                    f"init {models.student_init})",
                    f"{student.num_layers} layers, hidden {student.hidden_size}",
                    student.params,
                    _megabytes(student.weights_bytes),
                ],
                [
                    "student ONNX fp32",
                    None,
                    f"opset {export.opset}",
                    None,
                    _megabytes(export.bytes),
                ],
                [
                    "student ONNX INT8 (this version)",
                    None,
                    f"{quantized.method} {quantized.weight_type}",
                    None,
                    _megabytes(quantized.bytes),
                ],
            ],
        ),
        "## Metrics (test split of this run)",
        _table(
            ["model", "accuracy", "latency p50 ms", "latency p95 ms", "size"],
            [[p.label, p.accuracy, p.p50_ms, p.p95_ms, _megabytes(p.size_bytes)] for p in points],
        ),
        _table(
            ["teacher macro F1", "student macro F1", "retention", "agreement", "INT8 drop"],
            [
                [
                    evaluation.teacher_macro_f1,
                    evaluation.student_macro_f1,
                    evaluation.retention,
                    evaluation.agreement,
                    quantized.accuracy_drop,
                ]
            ],
        ),
        "Latency: batch 1, one thread, on the machine that ran the pipeline.",
        teacher_gap_line(evaluation),
        *ensemble_lines(artifacts.cache.manifest),
        "## Gates"
        + ("" if champion_version is None else f" (current champion: v{champion_version})"),
        _table(
            ["gate", "value", "threshold", "passed", "reason"],
            [
                [r.name, r.value, r.threshold, "yes" if r.passed else "**no**", r.reason]
                for r in results
            ],
        ),
    ]
    if evidence is not None:
        sections += evidence_sections(evidence, quantized.validation_comparison, champion_version)
    sections += [
        "## Plots (run artifacts, folder `model_card/`)",
        f"`{CURVES}` (training and validation curves), `{CONFUSION}` (student, test split), "
        f"`{TRADE_OFF}` (accuracy against latency).",
    ]
    return "\n\n".join(sections) + "\n"


def ensemble_lines(cache: CacheManifest) -> list[str]:
    """The teachers whose averaged soft targets the student learned from (none: one teacher)."""
    from distill.ensemble import EnsembleManifest

    if not isinstance(cache, EnsembleManifest):
        return []
    rows = [
        [
            member.model,
            member.weight,
            member.teacher_val_accuracy,
            f"`{member.teacher_sha256[:12]}`",
        ]
        for member in cache.members
    ]
    return [
        f"Soft targets: the weighted mean of {len(rows)} teachers' at T = {cache.temperature:g} "
        "(`teacher.ensemble`; the teacher above is the first, whose test scores are shown):",
        _table(["teacher", "weight", "best validation accuracy", "weights sha256"], rows),
    ]


def teacher_gap_line(evaluation: EvaluationManifest) -> str:
    """Whether the teacher was worth distilling from: its paired gap to the student."""
    verdict = (
        "significantly stronger than its student"
        if evaluation.teacher_clearly_stronger
        else "**not** significantly stronger than its student: distillation from it can gain "
        "little (train it longer, pick a stronger teacher, or give it more text to label)"
    )
    return (
        f"Teacher gap (validation): the teacher is {verdict}; {evaluation.teacher_gap.summary()}."
    )


def description_text(card: str) -> str:
    """The card, cut to fit a model version's description when it is too long."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = f"\n\n… (cut; the whole card is the run artifact model_card/{CARD})\n"
    return card[: DESCRIPTION_LIMIT - len(note)] + note


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TERM_STYLES = ("-", ":", "-.", "--")  # line styles of the loss terms, reused in turn


def term_series(names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Each loss term with a line style; styles repeat past the fourth (colours tell models
    apart, labels tell terms apart)."""
    return tuple(zip(names, itertools.cycle(TERM_STYLES)))


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path
) -> list[str]:
    """Train and validation loss, validation accuracy and, when the histories have them, the
    unweighted loss terms (`distill.losses.LOSS_TERMS`: CE, KL, Patient-KD, ...) per optimizer
    step: one colour per model, solid lines for training, dashed for validation. Returns the
    labels of the plotted series."""
    from distill.losses import LOSS_TERM_NAMES  # torch: only when drawing

    has_terms = any(
        key in entry for h in histories.values() for entry in h for key in LOSS_TERM_NAMES
    )
    panels = [
        ("loss", (("train_loss", "-"), ("val_loss", "--o"))),
        ("validation accuracy", (("val_accuracy", "--o"),)),
    ]
    if has_terms:
        panels.append(("loss terms (unweighted)", term_series(LOSS_TERM_NAMES)))
    plt = _pyplot()
    figure, all_axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    plotted = []
    for axes, (title, series) in zip(all_axes, panels, strict=True):
        for index, (role, history) in enumerate(histories.items()):
            for key, style in series:
                entries = [entry for entry in history if key in entry]
                if entries:
                    label = f"{role} {key}"
                    axes.plot(
                        [entry["step"] for entry in entries],
                        [entry[key] for entry in entries],
                        style,
                        color=f"C{index}",
                        label=label,
                    )
                    plotted.append(label)
        axes.set_xlabel("step")
        axes.set_title(title)
        if axes.has_data():
            axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return plotted


def plot_accuracy_vs_latency(points: Sequence[ModelPoint], path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for point in points:
        axes.scatter(point.p50_ms, point.accuracy, s=50, label=point.label)
    axes.set_xscale("log")  # the teacher is often ten times slower than the INT8 student
    axes.set_xlabel("median latency, batch 1, one thread (ms, log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title("Accuracy against latency")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_model_card(
    folder: Path,
    card: str,
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    points: Sequence[ModelPoint],
    results: Sequence[GateResult],
    confusion_matrix: Path | None,
) -> list[Path]:
    """Write the card, its plots and the gate results into `folder`; return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD).write_text(card)
    (folder / GATES).write_text(json.dumps([r.as_dict() for r in results], indent=2))
    plot_training_curves(histories, folder / CURVES)
    plot_accuracy_vs_latency(points, folder / TRADE_OFF)
    if confusion_matrix is not None and confusion_matrix.is_file():
        shutil.copyfile(confusion_matrix, folder / CONFUSION)
    return sorted(folder.iterdir())


def _tokenizer_note(export: ExportManifest, quantized: QuantizeManifest) -> str:
    """Which tokenizer the shipped graph's input ids must come from."""
    vocabulary = export.vocabulary
    if not quantized.trimmed:
        rejected = vocabulary.reason if vocabulary.rejected_trim is not None else None
        note = "Input ids come from the data tokenizer below; the run's `bundle/` holds it too."
        if export.trimmed:
            note += " The trimmed vocabulary was exported but not shipped: with it no INT8 model"
            note += " stayed within the accuracy budget."
        elif rejected:
            note += f" Vocabulary trimming was not shipped: {rejected}."
        return note
    note = (
        f"The vocabulary is trimmed to {vocabulary.kept_size} of "
        f"{vocabulary.original_size} word pieces: input ids must come from the run's "
        "`bundle/tokenizer.json` (the edge bundle), not from the data tokenizer below."
    )
    comparison = export.trimming_comparison
    if comparison is not None:
        note += (
            f" Trimming against the trained student on validation: {comparison.summary()}; "
            f"{vocabulary.reason or 'within the budget'}."
        )
    return note


def _graph_note(quantized: QuantizeManifest) -> str:
    """Whether onnxruntime's fused fp32 graph was quantized instead of the export, and why:
    the bundle carries com.microsoft operators only when it was."""
    optimization = quantized.optimization
    if optimization is None:
        return "Graph: the exported fp32 graph (graph optimisation off)."
    graph = "onnxruntime's fused fp32 graph" if optimization.kept else "the exported fp32 graph"
    return f"Graph: {graph} ({optimization.reason})."


def _cost_note(quantized: QuantizeManifest) -> str:
    """What each step from the trained student to the shipped model cost: on validation (what
    the gates held within the budget) and on the held-out test split."""

    def steps(costs: StepCosts) -> str:
        return (
            f"trimming {-100 * costs.trimming:+.2f}, quantization "
            f"{-100 * costs.quantization:+.2f}, "
            f"together {-100 * costs.end_to_end:+.2f} points"
        )

    return (
        f"From the trained student to the shipped {quantized.method} model, validation accuracy "
        f"{quantized.student_validation_accuracy:.4f} -> {quantized.validation_accuracy:.4f}: "
        f"{steps(quantized.validation_costs)} (the gates decide on validation; budget "
        f"{100 * quantized.gate.max_accuracy_drop:.2f}). Held-out test accuracy "
        f"{quantized.student_test_accuracy:.4f} -> {quantized.test_accuracy:.4f}: "
        f"{steps(quantized.costs)}."
    )
