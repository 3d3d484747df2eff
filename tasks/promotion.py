"""Gate a freshly registered version: measure it, judge it, write its model card, move aliases.

Called by the `promote` task once every stage of a run has finished and the INT8 model is
registered as `challenger`; it runs nowhere else, so the gates never see a failed or partial run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.benchmark import onnx_latencies, torch_latency
from deploy.quantize import model_split
from distill.chain import RunArtifacts
from distill.config import PromotionConfig
from distill.data import load_split
from distill.evaluation import CONFUSION_PNG
from distill.gates import Measurements, evaluate_gates
from distill.model_card import ModelPoint, description_text, render_model_card, write_model_card
from tasks import registry
from tasks.registry import ChampionScore
from tasks.tracking import MlflowTracker, Registration

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
    own_split = model_split(export, artifacts.data, "test")
    onnx = {
        "fp32": (export.file(export.manifest.file), own_split),
        "int8": (quantized.file(quantized.manifest.file), own_split),
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


def gate_and_promote(
    config: PromotionConfig,
    registration: Registration,
    artifacts: RunArtifacts,
    tracker: MlflowTracker,
    latency_samples: int,
) -> dict[str, Any]:
    data, quantized = artifacts.data, artifacts.quantize
    test = load_split(data.path, "test")
    with tempfile.TemporaryDirectory(prefix="distillery-promote-") as tmp:
        folder = Path(tmp)
        champion = registry.score_champion(
            tracker.tracking_uri,
            registration.name,
            test,
            len(data.manifest.label_names),
            folder / "champion",
            data.manifest.max_length,
        )
        points = measure_models(artifacts, test, champion, latency_samples)
        candidate = points["int8"]
        measured = Measurements(
            parity_passed=True,  # an export artifact exists only when parity held
            retention=artifacts.evaluation.manifest.retention,
            int8_accuracy_drop=quantized.manifest.accuracy_drop,
            latency_ms=candidate.p50_ms,
            accuracy=candidate.accuracy,
            champion_version=None if champion is None else champion.version,
            champion_accuracy=None if champion is None else champion.accuracy,
        )
        results = evaluate_gates(config, measured, registry.mlflow_check)
        card = render_model_card(
            registration.name,
            registration.version,
            tracker.run_id,
            artifacts,
            list(points.values()),
            results,
            measured.champion_version,
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

    outcome = registry.apply_gates(
        tracker.client, registration.name, registration.version, results, description_text(card)
    )
    tracker.log_metrics(
        {
            "promotion/int8_accuracy": candidate.accuracy,
            "promotion/latency_p50_ms": candidate.p50_ms,
            "promotion/latency_p95_ms": candidate.p95_ms,
            "promotion/promoted": float(outcome.promoted),
        }
        | {f"gate/{result.name}": float(result.passed) for result in results}
    )
    tracker.set_tags({"promotion.decision": "promoted" if outcome.promoted else "rejected"})
    return {
        "promoted": outcome.promoted,
        "alias": outcome.alias,
        "replaced_version": outcome.replaced,
        "champion_before": measured.champion_version,
        "reason": outcome.reason,
        "latency_ms": {"p50": candidate.p50_ms, "p95": candidate.p95_ms},
        "gates": [result.as_dict() for result in results],
    }
