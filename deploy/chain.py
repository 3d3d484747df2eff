"""The whole pipeline's stage wiring: `distill.chain` up to evaluation, then export and quantize,
and `RunArtifacts`, every stage of one run (here, since it names deploy's manifests).

Prefect-free like `distill.chain`; the flow, the benchmarks and the tests call these functions,
so none of them can wire stages differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.export import ExportManifest, export_stage
from deploy.labelling import choose_labelling
from deploy.quantize import QuantizeManifest, quantize_stage
from deploy.stage_table import STAGE_FOLDERS
from distill.augment import AugmentManifest
from distill.chain import (
    CacheArtifacts,
    StageRunner,
    run_directly,
    run_evaluation,
    run_student,
    run_student_rows,
)
from distill.chain import (
    run_until_cache as run_until_cache_with,
)
from distill.config import ExportConfig, PipelineConfig, QuantizeConfig
from distill.data import DataManifest
from distill.evaluation import EvaluationManifest
from distill.fan_out import FanOut, run_each_here
from distill.store import Artifact
from distill.student import StudentManifest


@dataclass(frozen=True)
class RunArtifacts(CacheArtifacts):
    """Every stage of one pipeline run, typed; what the summary, bundle, card and gates read.

    `data` is tokenized for the teacher (its fingerprint is the run's data fingerprint);
    `student_data` holds the same rows in the student's ids (`data` itself when they share a
    tokenizer): the student, its export, INT8 model and bundle read that one."""

    student: Artifact[StudentManifest]
    evaluation: Artifact[EvaluationManifest]
    export: Artifact[ExportManifest]
    quantize: Artifact[QuantizeManifest]
    student_data: Artifact[DataManifest]
    student_augmented: Artifact[AugmentManifest] | None = None

    def by_stage(self) -> dict[str, Artifact]:
        """Stage folder name -> artifact, in the stage table's (pipeline) order (augmentation
        only when it ran, the student's own tokenization only when it differs from the
        teacher's)."""
        student_side = [
            artifact
            for artifact, shared in (
                (self.student_data, self.data),
                (self.student_augmented, self.augmented),
            )
            if artifact is not None and artifact is not shared
        ]
        present = {
            artifact.stage: artifact
            for artifact in (
                self.data,
                self.teacher,
                self.augmented,
                self.cache,
                *student_side,
                self.student,
                self.evaluation,
                self.export,
                self.quantize,
            )
            if artifact is not None
        }
        unknown = set(present) - set(STAGE_FOLDERS)
        if unknown:
            raise KeyError(f"stages {sorted(unknown)} are not in deploy/stage_table.py STAGES")
        return {name: present[name] for name in STAGE_FOLDERS if name in present}


def run_export_quantize(
    export: ExportConfig,
    quantize: QuantizeConfig,
    store: Path,
    student: Artifact[StudentManifest],
    data: Artifact[DataManifest],
    runner: StageRunner = run_directly,
) -> tuple[Artifact[ExportManifest], Artifact[QuantizeManifest]]:
    """The student as a parity-checked fp32 ONNX graph, then the gated INT8 (or fp32) model."""
    exported = runner(
        "export",
        lambda log: export_stage(store, export, student, data, quantize.max_accuracy_drop),
    )
    quantized = runner("quantize", lambda log: quantize_stage(store, quantize, exported, data))
    return exported, quantized


def run_until_cache(
    config: PipelineConfig,
    store: Path,
    runner: StageRunner = run_directly,
    fan_out: FanOut = run_each_here,
) -> CacheArtifacts:
    """`distill.chain.run_until_cache` with every labelling runtime wired: the cache is labelled
    by the runtime `teacher.labelling` picks (`deploy.labelling.choose_labelling`). What the
    flows and the benchmarks call, so they measure the path a run takes."""
    return run_until_cache_with(config, store, runner, fan_out, choose_labelling)


def run_pipeline_stages(
    config: PipelineConfig,
    store: Path,
    runner: StageRunner = run_directly,
    fan_out: FanOut = run_each_here,
) -> RunArtifacts:
    """Every content-addressed stage of the pipeline, in order; cache shards go to `fan_out`,
    labelled by the runtime `teacher.labelling` picks (`deploy.labelling.choose_labelling`)."""
    upstream = run_until_cache(config, store, runner, fan_out)
    return run_after_cache(config, store, upstream, runner)


def run_after_cache(
    config: PipelineConfig,
    store: Path,
    upstream: CacheArtifacts,
    runner: StageRunner = run_directly,
) -> RunArtifacts:
    """[the student's own tokenization] -> student -> evaluation -> export -> quantize, from
    finished upstream stages. Export and quantize read the student's ids."""
    rows = run_student_rows(config, store, upstream, runner)
    student = run_student(config.student, store, upstream, runner, rows)
    evaluation = run_evaluation(store, upstream, student, runner, rows.data)
    exported, quantized = run_export_quantize(
        config.export, config.quantize, store, student, rows.data, runner
    )
    return RunArtifacts(
        data=upstream.data,
        teacher=upstream.teacher,
        augmented=upstream.augmented,
        cache=upstream.cache,
        student=student,
        evaluation=evaluation,
        export=exported,
        quantize=quantized,
        student_data=rows.data,
        student_augmented=rows.augmented,
    )
