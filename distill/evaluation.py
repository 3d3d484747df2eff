"""Evaluation stage: teacher and student on the test split, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from distill.data import load_split
from distill.metrics import classification_metrics
from distill.models import count_parameters, load_classifier
from distill.store import Artifact, run_stage, stable_hash
from distill.training import predict_logits

REPORT = "report.json"


def evaluation_stage(
    workdir: Path, teacher: Artifact, student: Artifact, data: Artifact
) -> Artifact:
    key = stable_hash(
        "evaluation",
        teacher.manifest["weights_sha256"],
        student.manifest["weights_sha256"],
        data.manifest["fingerprint"],
    )
    return run_stage(
        workdir, "evaluation", key, lambda folder: evaluate(teacher, student, data, folder)
    )


def evaluate(teacher: Artifact, student: Artifact, data: Artifact, folder: Path) -> dict[str, Any]:
    test = load_split(data.path, "test")
    labels = np.asarray(test["label"])
    label_names = list(data.manifest["label_names"])
    report: dict[str, Any] = {"label_names": label_names, "test_size": len(labels)}
    predictions = {}
    for role, artifact in (("teacher", teacher), ("student", student)):
        model = load_classifier(artifact.path)
        logits = predict_logits(model, test)
        np.save(folder / f"{role}_test_logits.npy", logits)
        predictions[role] = logits.argmax(-1)
        report[role] = {
            **classification_metrics(logits, labels, len(label_names)),
            "params": count_parameters(model),
            "weights_bytes": artifact.manifest["weights_bytes"],
        }
    report["retention"] = report["student"]["accuracy"] / report["teacher"]["accuracy"]
    report["agreement"] = float(np.mean(predictions["teacher"] == predictions["student"]))
    report["compression"] = report["teacher"]["params"] / report["student"]["params"]
    (folder / REPORT).write_text(json.dumps(report, indent=2))
    plot_confusion_matrix(
        np.asarray(report["student"]["confusion_matrix"]),
        label_names,
        folder / "confusion_matrix.png",
    )
    return {
        "report": REPORT,
        "teacher_accuracy": report["teacher"]["accuracy"],
        "teacher_macro_f1": report["teacher"]["macro_f1"],
        "student_accuracy": report["student"]["accuracy"],
        "student_macro_f1": report["student"]["macro_f1"],
        "retention": report["retention"],
        "agreement": report["agreement"],
        "teacher_params": report["teacher"]["params"],
        "student_params": report["student"]["params"],
    }


def plot_confusion_matrix(matrix: np.ndarray, label_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.0, 0.6 * len(label_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    axes.set_yticks(range(len(label_names)), label_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Student confusion matrix (test)")
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(
            col,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > matrix.max() / 2 else "black",
        )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
