"""Gate a registered version: measure it, judge it, write its model card, move aliases.

Called by the `promote` task once every stage of a run has finished and the INT8 model is
registered as `challenger`; it runs nowhere else, so the gates never see a failed or partial run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from deploy.benchmark import onnx_latencies, torch_latency
from deploy.chain import RunArtifacts
from deploy.onnx_eval import onnx_logits, open_session
from deploy.quantize import model_split, shipped_split
from distill.config import PromotionConfig
from distill.data import load_split
from distill.evaluation import CONFUSION_PNG, TEACHER_TEST_LOGITS, EvaluationManifest
from distill.gates import (
    Latency,
    Measurements,
    Metric,
    PromotionResult,
    evaluate_gates,
    majority_baseline,
    score,
)
from distill.paired import compare
from distill.store import Artifact
from tasks import registry
from tasks.model_card import (
    ModelPoint,
    card_evidence,
    description_text,
    render_model_card,
    write_model_card,
)
from tasks.registry import ChampionScore
from tasks.tracking import MlflowTracker, Registration, comparison_tags

CARD_ARTIFACTS = "model_card"


def measure_models(
    artifacts: RunArtifacts,
    test: Mapping[str, Sequence],
    champion: ChampionScore | None,
    samples: int,
) -> dict[str, ModelPoint]:
    """Accuracy and batch-1 latency on this run's test split: teacher, student fp32 and INT8,
    and the champion when it can be scored. The INT8 and champion models are scored by the
    same code on the same split, so their accuracies compare fairly."""
    teacher, evaluation = artifacts.teacher, artifacts.evaluation
    export, quantized = artifacts.export, artifacts.quantize
    # Each model is timed on the ids its own tokenizer writes (the vocabulary may be trimmed).
    student_data = artifacts.student_data
    onnx = {
        "fp32": (export.file(export.manifest.file), model_split(export, student_data, "test")),
        "int8": (
            quantized.file(quantized.manifest.file),
            shipped_split(quantized, student_data, "test"),
        ),
    }
    if champion is not None and champion.accuracy is not None:
        onnx["champion"] = (champion.path, champion.split)
    timings = onnx_latencies(onnx, samples)
    teacher_timing = torch_latency(teacher.path, test, samples)

    def point(label: str, key: str, accuracy: float, size: int) -> ModelPoint:
        timing = teacher_timing if key == "teacher" else timings[key]
        return ModelPoint(label, accuracy, timing.p50_ms, timing.p95_ms, size)

    points = {
        "teacher": point(
            "teacher (PyTorch)",
            "teacher",
            evaluation.manifest.teacher_accuracy,
            teacher.manifest.weights_bytes,
        ),
        "fp32": point(
            "student ONNX fp32", "fp32", export.manifest.test_accuracy, export.manifest.bytes
        ),
        "int8": point(
            "student ONNX INT8",
            "int8",
            # Measured by the quantize stage on the same split with the model's own tokenizer.
            quantized.manifest.test_accuracy,
            quantized.manifest.bytes,
        ),
    }
    if "champion" in onnx:
        points["champion"] = point(
            f"champion v{champion.version} INT8",
            "champion",
            champion.accuracy,
            champion.path.stat().st_size,
        )
    return points


def retention_in(metric: Metric, evaluation: Artifact[EvaluationManifest]) -> float:
    """Student score / teacher score (PyTorch, test split) in the gates' metric."""
    manifest = evaluation.manifest
    if metric == "accuracy":
        return manifest.retention
    teacher, student = manifest.teacher_macro_f1, manifest.student_macro_f1
    return student / teacher if teacher > 0 else 0.0


def gate_and_promote(
    config: PromotionConfig,
    registration: Registration,
    artifacts: RunArtifacts,
    tracker: MlflowTracker,
    latency_samples: int,
) -> PromotionResult:
    """Measure the registered model, judge the gates, and move aliases when they pass.

    Registry reads and writes are serialised (`registry_lock`) from scoring the champion to
    moving the aliases, so two runs finishing at once cannot both replace the same champion.
    A reused registration (the very same model was registered before) is measured and judged
    for the summary, but its version keeps its tags and aliases, unless no run ever judged it
    (its run was killed between registration and the gates): this run judges it then."""
    data, quantized = artifacts.data, artifacts.quantize
    metric, num_labels = config.metric, len(data.manifest.label_names)
    test = load_split(data.path, "test")
    train_labels = list(load_split(data.path, "train")["label"])
    with (
        registry.registry_lock(tracker.tracking_uri, registration.name),
        tempfile.TemporaryDirectory(prefix="distillery-promote-") as tmp,
    ):
        folder = Path(tmp)
        champion = registry.score_champion(
            tracker.tracking_uri,
            registration.name,
            test,
            num_labels,
            folder / "champion",
            data.manifest.max_length,
            metric,
        )
        points = measure_models(artifacts, test, champion, latency_samples)
        candidate = points["int8"]
        shipped_test = shipped_split(quantized, artifacts.student_data, "test")
        shipped_logits = onnx_logits(
            open_session(quantized.file(quantized.manifest.file)),
            shipped_test["input_ids"],
            shipped_test["attention_mask"],
        )
        predicted = shipped_logits.argmax(-1)
        measured = Measurements(
            retention=retention_in(metric, artifacts.evaluation),
            latency_ms=candidate.p50_ms,
            score=score(metric, test["label"], predicted, num_labels),
            baseline_score=majority_baseline(metric, train_labels, test["label"], num_labels),
            champion_version=None if champion is None else champion.version,
            champion_score=None if champion is None else champion.score,
            # Both models' predictions on the same test texts (each through its own tokenizer).
            champion_comparison=(
                None
                if champion is None or champion.predicted is None
                else compare(champion.predicted, predicted, test["label"], metric, num_labels)
            ),
            data_changed=champion is None or champion.data_fingerprint != data.manifest.fingerprint,
        )
        results = evaluate_gates(config, measured, registry.mlflow_check)
        evidence = card_evidence(
            test["text"],
            test["label"],
            shipped_logits,
            np.load(artifacts.evaluation.file(TEACHER_TEST_LOGITS)),
            data.manifest.label_names,
            measured.champion_comparison,
        )
        card = render_model_card(
            registration.name,
            registration.version,
            tracker.run_id,
            artifacts,
            list(points.values()),
            results,
            measured.champion_version,
            evidence,
        )
        write_model_card(
            folder / CARD_ARTIFACTS,
            card,
            {
                "teacher": artifacts.teacher.manifest.history,
                "student": artifacts.student.manifest.history,
            },
            list(points.values()),
            results,
            artifacts.evaluation.file(CONFUSION_PNG),
        )
        tracker.log_artifacts(folder / CARD_ARTIFACTS, CARD_ARTIFACTS)
        outcome = registry.judge_registration(
            tracker.client, registration, results, description_text(card), tracker.run_id
        )

    tracker.log_metrics(
        {
            "promotion/int8_accuracy": candidate.accuracy,
            f"promotion/{metric}": measured.score,
            f"promotion/baseline_{metric}": measured.baseline_score,
            "promotion/latency_p50_ms": candidate.p50_ms,
            "promotion/latency_p95_ms": candidate.p95_ms,
            "promotion/promoted": float(outcome.promoted),
        }
        | {f"gate/{result.name}": float(result.passed) for result in results}
    )
    decision = "promoted" if outcome.promoted else "rejected" if outcome.judged else "reused"
    tracker.set_tags({"promotion.decision": decision})
    if measured.champion_comparison is not None:
        tracker.set_tags(comparison_tags("promotion.vs_champion.", measured.champion_comparison))
    return PromotionResult(
        promoted=outcome.promoted,
        reused=registration.reused,
        alias=outcome.alias,
        replaced_version=outcome.replaced,
        champion_before=measured.champion_version,
        reason=outcome.reason,
        metric=metric,
        latency_ms=Latency(p50=candidate.p50_ms, p95=candidate.p95_ms),
        gates=tuple(results),
        vs_champion=measured.champion_comparison,
    )
