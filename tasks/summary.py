"""The run summary: the numbers a user looks at first, built from the stages' manifests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deploy.chain import RunArtifacts


def build_summary(
    artifacts: RunArtifacts,
    mlflow_run_id: str,
    registered_model: str,
    model_version: str,
    wall_seconds: float,
    promotion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    evaluation = artifacts.evaluation.manifest
    export = artifacts.export.manifest
    quantized = artifacts.quantize.manifest
    return {
        "teacher_accuracy": evaluation.teacher_accuracy,
        "student_accuracy": evaluation.student_accuracy,
        "retention": evaluation.retention,
        "agreement": evaluation.agreement,
        "teacher_macro_f1": evaluation.teacher_macro_f1,
        "student_macro_f1": evaluation.student_macro_f1,
        # How much better the teacher is than its student, paired on validation.
        "teacher_gap": evaluation.teacher_gap.difference,
        "teacher_clearly_stronger": evaluation.teacher_clearly_stronger,
        "onnx_fp32_accuracy": export.test_accuracy,
        "int8_accuracy": quantized.test_accuracy,
        "teacher_params": evaluation.teacher_params,
        "student_params": evaluation.student_params,
        "onnx_fp32_bytes": export.bytes,
        "onnx_int8_bytes": quantized.bytes,
        "onnx_max_abs_logit_diff": export.max_abs_logit_diff,
        "data_fingerprint": artifacts.data.manifest.fingerprint,
        "teacher_sha256": artifacts.teacher.manifest.weights_sha256,
        "mlflow_run_id": mlflow_run_id,
        "registered_model": registered_model,
        "model_version": model_version,
        "wall_seconds": wall_seconds,
        **_promotion_fields(promotion),
        "stages": {
            name: {
                "seconds": round(artifact.seconds, 3),
                "reused": artifact.reused,
                "key": artifact.key,
                "path": str(artifact.path),
            }
            for name, artifact in artifacts.by_stage().items()
        },
    }


def _promotion_fields(promotion: Mapping[str, Any] | None) -> dict[str, Any]:
    """The gates' verdict and the alias the version ended with (challenger when not gated)."""
    if promotion is None:
        return {"alias": "challenger"}
    return {
        "alias": promotion["alias"],
        "promoted": promotion["promoted"],
        "replaced_version": promotion.get("replaced_version"),
        "int8_latency_ms": promotion["latency_ms"]["p50"],
        "gates": list(promotion["gates"]),
        # The challenger against the champion, paired on the same test texts (None: no champion).
        "vs_champion": promotion.get("vs_champion"),
    }
