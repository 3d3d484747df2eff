"""The run summary: the numbers a user looks at first, built from the stages' manifests.

`RunSummary` is `summary.json`: the pipeline writes it, `distillery run` prints it and
`distillery gc` reads which stage folders it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from distill.gates import GateResult, PromotionResult
from distill.paired import PairedComparison

if TYPE_CHECKING:  # the stages' code (torch) is not needed to read a summary
    from deploy.chain import RunArtifacts


class StageUse(BaseModel):
    """One stage folder a run used: how long it took, whether it was reused, where it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float
    reused: bool
    key: str
    path: str
    # The process's peak resident memory while the stage ran (None where it is not measured).
    peak_rss_mb: float | None = None


class RunSummary(BaseModel):
    """`summary.json`. The promotion fields are absent (None) when the version was not gated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    teacher_accuracy: float
    student_accuracy: float
    retention: float
    agreement: float
    teacher_macro_f1: float
    student_macro_f1: float
    # How much better the teacher is than its student, paired on validation.
    teacher_gap: float
    teacher_clearly_stronger: bool
    onnx_fp32_accuracy: float
    int8_accuracy: float
    teacher_params: int
    student_params: int
    onnx_fp32_bytes: int
    onnx_int8_bytes: int
    onnx_max_abs_logit_diff: float
    data_fingerprint: str
    teacher_sha256: str
    mlflow_run_id: str
    registered_model: str
    model_version: str
    wall_seconds: float
    alias: str  # what the version ended as (challenger when not gated)
    promoted: bool | None = None
    replaced_version: str | None = None
    int8_latency_ms: float | None = None
    gates: tuple[GateResult, ...] | None = None
    # The challenger against the champion, paired on the same test texts (None: no champion).
    vs_champion: PairedComparison | None = None
    stages: dict[str, StageUse]
    bundle: str | None = None  # the gated bundle's folder and its size
    bundle_bytes: int | None = None

    def as_json(self) -> dict:
        """What `summary.json` holds: the fields of an ungated run's summary only when set."""
        return self.model_dump(mode="json", exclude=_unset_when_ungated(self))


PROMOTION_FIELDS = frozenset(
    {"promoted", "replaced_version", "int8_latency_ms", "gates", "vs_champion"}
)


def _unset_when_ungated(summary: RunSummary) -> set[str]:
    unset = set() if summary.gates is not None else set(PROMOTION_FIELDS)
    return unset | {name for name in ("bundle", "bundle_bytes") if getattr(summary, name) is None}


def build_summary(
    artifacts: RunArtifacts,
    mlflow_run_id: str,
    registered_model: str,
    model_version: str,
    wall_seconds: float,
    promotion: PromotionResult | None = None,
    bundle: Path | None = None,
    bundle_bytes: int | None = None,
) -> RunSummary:
    evaluation = artifacts.evaluation.manifest
    export = artifacts.export.manifest
    quantized = artifacts.quantize.manifest
    return RunSummary(
        teacher_accuracy=evaluation.teacher_accuracy,
        student_accuracy=evaluation.student_accuracy,
        retention=evaluation.retention,
        agreement=evaluation.agreement,
        teacher_macro_f1=evaluation.teacher_macro_f1,
        student_macro_f1=evaluation.student_macro_f1,
        teacher_gap=evaluation.teacher_gap.difference,
        teacher_clearly_stronger=evaluation.teacher_clearly_stronger,
        onnx_fp32_accuracy=export.test_accuracy,
        int8_accuracy=quantized.test_accuracy,
        teacher_params=evaluation.teacher_params,
        student_params=evaluation.student_params,
        onnx_fp32_bytes=export.bytes,
        onnx_int8_bytes=quantized.bytes,
        onnx_max_abs_logit_diff=export.max_abs_logit_diff,
        data_fingerprint=artifacts.data.manifest.fingerprint,
        teacher_sha256=artifacts.teacher.manifest.weights_sha256,
        mlflow_run_id=mlflow_run_id,
        registered_model=registered_model,
        model_version=model_version,
        wall_seconds=wall_seconds,
        **_promotion_fields(promotion),
        stages={
            name: StageUse(
                seconds=round(artifact.seconds, 3),
                reused=artifact.reused,
                key=artifact.key,
                path=str(artifact.path),
                peak_rss_mb=(
                    None
                    if artifact.peak_rss_bytes is None
                    else round(artifact.peak_rss_bytes / 2**20, 1)
                ),
            )
            for name, artifact in artifacts.by_stage().items()
        },
        bundle=None if bundle is None else str(bundle),
        bundle_bytes=bundle_bytes,
    )


def _promotion_fields(promotion: PromotionResult | None) -> dict:
    """The gates' verdict and the alias the version ended with (challenger when not gated)."""
    if promotion is None:
        return {"alias": "challenger"}
    return {
        "alias": promotion.alias,
        "promoted": promotion.promoted,
        "replaced_version": promotion.replaced_version,
        "int8_latency_ms": promotion.latency_ms.p50,
        "gates": promotion.gates,
        "vs_champion": promotion.vs_champion,
    }
