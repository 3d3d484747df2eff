"""The pipeline's stage wiring, once, for the flow, the benchmarks and the tests.

Prefect-free: each stage is handed to a `runner(stage, build)` that returns its artifact. The
default runner just calls `build(None)`; the Prefect flow passes one that runs each stage as a
task (retries, timing, MLflow recording) and gives `build` a metrics log for training curves.
The export and quantize stages live in `deploy/`, so their wiring is `deploy.chain`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from distill.augment import AugmentManifest, augmentation_stage
from distill.config import PipelineConfig, StudentConfig
from distill.data import DataManifest, data_stage
from distill.evaluation import EvaluationManifest, evaluation_stage
from distill.logit_cache import CacheManifest, logit_cache_stage
from distill.shards import FanOut, run_each_here
from distill.store import Artifact
from distill.student import StudentManifest, student_stage
from distill.teacher import TeacherManifest, teacher_stage
from distill.training import MetricsLog

if TYPE_CHECKING:
    from deploy.export import ExportManifest
    from deploy.quantize import QuantizeManifest

A = TypeVar("A", bound=Artifact)


class StageRunner(Protocol):
    def __call__(self, stage: str, build: Callable[[MetricsLog | None], A]) -> A: ...


def run_directly(stage: str, build: Callable[[MetricsLog | None], A]) -> A:
    """The default runner: build (or reuse) the stage in this process, no metrics log."""
    return build(None)


@dataclass(frozen=True)
class CacheArtifacts:
    """Everything up to the teacher's cached targets: what any student trains from."""

    data: Artifact[DataManifest]
    teacher: Artifact[TeacherManifest]
    augmented: Artifact[AugmentManifest] | None
    cache: Artifact[CacheManifest]


@dataclass(frozen=True)
class RunArtifacts(CacheArtifacts):
    """Every stage of one pipeline run, typed; what the summary, bundle, card and gates read."""

    student: Artifact[StudentManifest]
    evaluation: Artifact[EvaluationManifest]
    export: Artifact[ExportManifest]
    quantize: Artifact[QuantizeManifest]

    def by_stage(self) -> dict[str, Artifact]:
        """Stage folder name -> artifact, in pipeline order (augmentation only when it ran)."""
        return {
            artifact.stage: artifact
            for artifact in (
                self.data,
                self.teacher,
                self.augmented,
                self.cache,
                self.student,
                self.evaluation,
                self.export,
                self.quantize,
            )
            if artifact is not None
        }


def run_until_cache(
    config: PipelineConfig,
    store: Path,
    runner: StageRunner = run_directly,
    fan_out: FanOut = run_each_here,
) -> CacheArtifacts:
    """data -> teacher -> [augmentation] -> logit cache; the cache's shards go to `fan_out`."""
    data = runner("data", lambda log: data_stage(store, config.data, config.teacher.model))
    teacher = runner("teacher", lambda log: teacher_stage(store, config.teacher, data, log))
    augmented = None
    if config.augmentation.multiplier > 0:
        augmented = runner(
            "augment",
            lambda log: augmentation_stage(store, config.augmentation, data, teacher.path),
        )
    cache = runner(
        "logit_cache",
        lambda log: logit_cache_stage(
            store,
            teacher,
            data,
            augmented,
            training=config.teacher.training,
            shard_rows=config.compute.shard_rows,
            fan_out=fan_out,
        ),
    )
    return CacheArtifacts(data, teacher, augmented, cache)


def run_student(
    config: StudentConfig,
    store: Path,
    upstream: CacheArtifacts,
    runner: StageRunner = run_directly,
) -> Artifact[StudentManifest]:
    """One student trained from the cached targets (a sweep calls this once per cell)."""
    return runner(
        "student",
        lambda log: student_stage(
            store,
            config,
            upstream.teacher,
            upstream.cache,
            upstream.data,
            upstream.augmented,
            log=log,
        ),
    )


def run_evaluation(
    store: Path,
    upstream: CacheArtifacts,
    student: Artifact[StudentManifest],
    runner: StageRunner = run_directly,
) -> Artifact[EvaluationManifest]:
    return runner(
        "evaluation",
        lambda log: evaluation_stage(store, upstream.teacher, student, upstream.data),
    )
