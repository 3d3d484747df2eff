"""Evaluation stage: teacher and student on the test split, side by side, and the teacher gap.

The teacher gap says whether the teacher was worth distilling from: a teacher that is not
clearly stronger than the student it produced (a paired test on the validation split) can pass
on little, and the run says so with the settings to change.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.data import load_split
from distill.metrics import classification_metrics
from distill.models import count_parameters, load_classifier
from distill.paired import PairedComparison, compare
from distill.store import Artifact, StageManifest, run_stage, stage_key
from distill.training import predict_logits

if TYPE_CHECKING:
    from distill.data import DataManifest
    from distill.student import StudentManifest
    from distill.teacher import TeacherManifest

# bump when the evaluation of the same models changes
# 2: the teacher gap (teacher against student, paired on validation)
VERSION = 2
REPORT = "report.json"
CONFUSION_PNG = "confusion_matrix.png"
log = logging.getLogger(__name__)
WEAK_TEACHER_ADVICE = (
    "train the teacher longer (teacher.training.epochs, or patience with more epochs), choose a "
    "stronger teacher (teacher.model), or give it more text to label (augmentation.multiplier, "
    "data.unlabeled)"
)
TEACHER_TEST_LOGITS = "teacher_test_logits.npy"  # one row per test text, as the split orders them
STUDENT_TEST_LOGITS = "student_test_logits.npy"
TEST_LOGITS = {"teacher": TEACHER_TEST_LOGITS, "student": STUDENT_TEST_LOGITS}  # by role


class EvaluationManifest(StageManifest):
    report: str
    teacher_accuracy: float
    teacher_macro_f1: float
    student_accuracy: float
    student_macro_f1: float
    retention: float
    agreement: float
    teacher_params: int
    student_params: int
    # The teacher (candidate) against the student it produced (reference), paired on the
    # validation split; `teacher_clearly_stronger` is its one-sided test at 5%.
    teacher_gap: PairedComparison
    teacher_clearly_stronger: bool


def evaluation_key(
    teacher: Artifact[TeacherManifest],
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    student_data: Artifact[DataManifest] | None = None,
) -> str:
    inputs = [teacher.key, student.key, data.key]
    if student_data is not None and student_data.key != data.key:  # the student's own ids
        inputs.append(student_data.key)
    return stage_key("evaluation", VERSION, *inputs)


def evaluation_stage(
    store: Path,
    teacher: Artifact[TeacherManifest],
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    student_data: Artifact[DataManifest] | None = None,
) -> Artifact[EvaluationManifest]:
    """`data` is tokenized for the teacher, `student_data` (default: `data`) for the student."""
    return run_stage(
        store,
        "evaluation",
        evaluation_key(teacher, student, data, student_data),
        lambda folder: evaluate(teacher, student, data, folder, student_data),
        EvaluationManifest,
    )


def evaluate(
    teacher: Artifact[TeacherManifest],
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    folder: Path,
    student_data: Artifact[DataManifest] | None = None,
) -> EvaluationManifest:
    """Each model scored on the test split tokenized with its own tokenizer (same rows), and
    the teacher gap measured on validation (the split the run decides on: test stays held out).
    """
    tests = {
        "teacher": load_split(data.path, "test"),
        "student": load_split((student_data or data).path, "test"),
    }
    validations = {
        "teacher": load_split(data.path, "validation"),
        "student": load_split((student_data or data).path, "validation"),
    }
    labels = np.asarray(tests["teacher"]["label"])
    if list(tests["student"]["label"]) != labels.tolist():
        raise ValueError(
            f"evaluation: the student's test split ({(student_data or data).path}) holds other "
            f"rows than the teacher's ({data.path})"
        )
    label_names = list(data.manifest.label_names)
    report: dict[str, Any] = {"label_names": label_names, "test_size": len(labels)}
    predictions, validation_predictions = {}, {}
    for role, artifact in (("teacher", teacher), ("student", student)):
        model = load_classifier(artifact.path)
        logits = predict_logits(model, tests[role])
        np.save(folder / TEST_LOGITS[role], logits)
        predictions[role] = logits.argmax(-1)
        validation_predictions[role] = predict_logits(model, validations[role]).argmax(-1)
        report[role] = {
            **classification_metrics(logits, labels, len(label_names)),
            "params": count_parameters(model),
            "weights_bytes": artifact.manifest.weights_bytes,
        }
    report["retention"] = report["student"]["accuracy"] / report["teacher"]["accuracy"]
    report["agreement"] = float(np.mean(predictions["teacher"] == predictions["student"]))
    report["compression"] = report["teacher"]["params"] / report["student"]["params"]
    gap = compare(
        reference=validation_predictions["student"],
        candidate=validation_predictions["teacher"],
        labels=validations["teacher"]["label"],
        num_classes=len(label_names),
    )
    report["teacher_gap_validation"] = gap.model_dump(mode="json")
    warning = weak_teacher_warning(gap)
    if warning:
        log.warning(warning)
    (folder / REPORT).write_text(json.dumps(report, indent=2))
    plot_confusion_matrix(
        np.asarray(report["student"]["confusion_matrix"]),
        label_names,
        folder / CONFUSION_PNG,
    )
    return EvaluationManifest(
        report=REPORT,
        teacher_accuracy=report["teacher"]["accuracy"],
        teacher_macro_f1=report["teacher"]["macro_f1"],
        student_accuracy=report["student"]["accuracy"],
        student_macro_f1=report["student"]["macro_f1"],
        retention=report["retention"],
        agreement=report["agreement"],
        teacher_params=report["teacher"]["params"],
        student_params=report["student"]["params"],
        teacher_gap=gap,
        teacher_clearly_stronger=gap.significantly_better(),
    )


def weak_teacher_warning(gap: PairedComparison) -> str | None:
    """What to tell the user when the teacher (candidate) is not significantly better than its
    student (reference); None when it is."""
    if gap.significantly_better():
        return None
    return (
        f"the teacher is not clearly stronger than the student it produced (validation: "
        f"{gap.summary()}): distillation from it can gain little; {WEAK_TEACHER_ADVICE}"
    )


def plot_confusion_matrix(matrix: np.ndarray, label_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(3.0, 0.6 * len(label_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    display = ConfusionMatrixDisplay(matrix, display_labels=label_names)
    display.plot(ax=axes, cmap="Blues", colorbar=False, xticks_rotation=45)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Student confusion matrix (test)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
