"""The pipeline's stage wiring, once, for the flow, the benchmarks and the tests.

Prefect-free: each stage is handed to a `runner(stage, build)` that returns its artifact. The
default runner just calls `build(None)`; the Prefect flow passes one that runs each stage as a
task (retries, timing, MLflow recording) and gives `build` a metrics log for training curves.
The export and quantize stages live in `deploy/`, so their wiring, and `RunArtifacts` (every
stage of a run), are `deploy.chain`'s: the core never names the edge side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from distill.augment import AugmentManifest, augmentation_stage
from distill.config import EnsembleMember, PipelineConfig, StudentConfig
from distill.data import DataManifest, data_stage, tokenized_for, tokenizer_identity
from distill.ensemble import Labelled, ensemble_cache_stage, member_teacher
from distill.evaluation import EvaluationManifest, evaluation_stage
from distill.fan_out import FanOut, run_each_here
from distill.labelling import Labelling, torch_only
from distill.logit_cache import CacheManifest, logit_cache_stage
from distill.store import Artifact
from distill.student import StudentManifest, student_stage, student_tokenizer_model
from distill.teacher import TeacherManifest, teacher_stage
from distill.training import MetricsLog

A = TypeVar("A", bound=Artifact)


class StageRunner(Protocol):
    def __call__(self, stage: str, build: Callable[[MetricsLog | None], A]) -> A: ...


class LabellingChooser(Protocol):
    """Picks the runtime that labels the cache (`teacher.labelling`), building what it needs
    (an ONNX graph: `deploy.labelling.choose_labelling`) in `store`."""

    def __call__(
        self,
        store: Path,
        config: PipelineConfig,
        teacher: Artifact[TeacherManifest],
        data: Artifact[DataManifest],
    ) -> Labelling: ...


def torch_labelling(
    store: Path,
    config: PipelineConfig,
    teacher: Artifact[TeacherManifest],
    data: Artifact[DataManifest],
) -> Labelling:
    """The core's chooser: PyTorch (`auto` included); another runtime is an error here."""
    teacher = config.teacher
    return torch_only(teacher.labelling, config.student.temperature, teacher.training)


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
class StudentRows:
    """The student's training data: the same rows as the cache's, in the student's token ids.

    `data`/`augmented` are the teacher-side artifacts themselves when the student shares the
    teacher's tokenizer."""

    data: Artifact[DataManifest]
    augmented: Artifact[AugmentManifest] | None


def run_until_cache(
    config: PipelineConfig,
    store: Path,
    runner: StageRunner = run_directly,
    fan_out: FanOut = run_each_here,
    labelling: LabellingChooser = torch_labelling,
) -> CacheArtifacts:
    """data -> teacher -> [augmentation] -> logit cache; the cache's shards go to `fan_out`,
    labelled by the runtime `labelling` picks (chosen inside the cache stage, so its export,
    checks and measurements count as the cache's time)."""
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
            labelling=labelling(store, config, teacher, data),
        ),
    )
    if config.teacher.ensemble:
        main = CacheArtifacts(data, teacher, augmented, cache)
        cache = runner(
            "ensemble_cache",
            lambda log: run_ensemble(config, store, main, fan_out, labelling),
        )
    return CacheArtifacts(data, teacher, augmented, cache)


def run_ensemble(
    config: PipelineConfig,
    store: Path,
    main: CacheArtifacts,
    fan_out: FanOut = run_each_here,
    labelling: LabellingChooser = torch_labelling,
) -> Artifact[CacheManifest]:
    """The main teacher's cache averaged with every `teacher.ensemble` member's; the members'
    stages are built (or reused) here, so their time counts as the ensemble cache's."""
    members = [Labelled(config.teacher.model, 1.0, main.teacher, main.cache)]
    for member in config.teacher.ensemble:
        members.append(label_member(config, store, main, member, fan_out, labelling))
    return ensemble_cache_stage(store, members, config.student.temperature)


def label_member(
    config: PipelineConfig,
    store: Path,
    main: CacheArtifacts,
    member: EnsembleMember,
    fan_out: FanOut,
    labelling: LabellingChooser,
) -> Labelled:
    """One member: the run's rows in its ids, fine-tuned, then its own logit cache."""
    teacher_config = member_teacher(config.teacher, member)
    member_config = config.model_copy(update={"teacher": teacher_config})
    rows = rows_in_ids_of(member.model, config, store, main.data, main.augmented)
    teacher = teacher_stage(store, teacher_config, rows.data)
    cache = logit_cache_stage(
        store,
        teacher,
        rows.data,
        rows.augmented,
        training=teacher_config.training,
        shard_rows=config.compute.shard_rows,
        fan_out=fan_out,
        labelling=labelling(store, member_config, teacher, rows.data),
    )
    return Labelled(member.model, member.weight, teacher, cache)


def run_student_rows(
    config: PipelineConfig,
    store: Path,
    upstream: CacheArtifacts,
    runner: StageRunner = run_directly,
) -> StudentRows:
    """The cache's rows in the student's own token ids (the teacher-side ones when shared).

    Tokenized once per distinct tokenizer; the augmented texts depend only on the train texts
    and the augmentation settings, so the student's copy holds the same texts in the same order.
    """
    model = student_tokenizer_model(config.student, config.teacher.model)
    if model == config.teacher.model:
        return StudentRows(upstream.data, upstream.augmented)
    return rows_in_ids_of(model, config, store, upstream.data, upstream.augmented, runner)


def rows_in_ids_of(
    model: str,
    config: PipelineConfig,
    store: Path,
    data: Artifact[DataManifest],
    augmented: Artifact[AugmentManifest] | None,
    runner: StageRunner = run_directly,
) -> StudentRows:
    """`data` and `augmented` in the token ids of `model`'s tokenizer (themselves when it is
    theirs): a student's or an ensemble member's rows."""
    source, tokenizer_id = tokenizer_identity(model)
    if tokenizer_id == data.manifest.tokenizer_id:
        return StudentRows(data, augmented)
    tokenized = runner("student_data", lambda log: tokenized_for(store, data, model))
    rows_augmented = None
    if augmented is not None:
        rows_augmented = runner(
            "student_augment",
            lambda log: augmentation_stage(
                store, config.augmentation, tokenized, Path(source), stage="student_augment"
            ),
        )
    return StudentRows(tokenized, rows_augmented)


def run_student(
    config: StudentConfig,
    store: Path,
    upstream: CacheArtifacts,
    runner: StageRunner = run_directly,
    rows: StudentRows | None = None,
) -> Artifact[StudentManifest]:
    """One student trained from the cached targets (a sweep calls this once per cell).

    `rows` are the student's own tokenization of the cache's rows (`run_student_rows`); None
    means the teacher's (a student that shares its tokenizer)."""
    rows = rows or StudentRows(upstream.data, upstream.augmented)
    return runner(
        "student",
        lambda log: student_stage(
            store,
            config,
            upstream.teacher,
            upstream.cache,
            rows.data,
            rows.augmented,
            log=log,
        ),
    )


def run_evaluation(
    store: Path,
    upstream: CacheArtifacts,
    student: Artifact[StudentManifest],
    runner: StageRunner = run_directly,
    student_data: Artifact[DataManifest] | None = None,
) -> Artifact[EvaluationManifest]:
    """Teacher on the teacher's ids, student on `student_data` (default: the same)."""
    return runner(
        "evaluation",
        lambda log: evaluation_stage(store, upstream.teacher, student, upstream.data, student_data),
    )
