"""Every stage of the pipeline, declared once, in the order the pipeline builds them.

One `Stage` row says everything the rest of the code needs to know about a stage besides how
to build it: its folder name in the store, its manifest type, what a run records from it in
MLflow (`Recording`), whether `distillery gc` may collect its unused folders, and whether it
runs once per sweep cell (and so which config section a sweep may vary). `tasks/stages.py`
(MLflow recording), `flows/gc.py`, the sweep and `RunArtifacts.by_stage` all read this table.

It lives in `deploy/`, the lowest layer that knows every stage (the core's and the edge
side's). Manifest types are named by import path and resolved on demand
(`Stage.manifest_type`), so reading the table imports no stage code: `distillery gc` reads it
without loading torch.
`tests/test_stage_table.py` checks that every path resolves and that every manifest field a
recording names exists on that type; `tasks.stages.record_stage` reads those fields strictly
too, so a misspelled field fails instead of being skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass

from distill.store import StageManifest


@dataclass(frozen=True)
class Recording:
    """What MLflow gets from a stage besides its manifest, seconds and reuse flag.

    Every string naming a manifest field must be a field of the stage's manifest type."""

    metrics: tuple[str, ...] = ()  # manifest fields logged as `<stage>/<field>` (None: skipped)
    files: tuple[str, ...] = ()  # files of the folder to log; "{file}" is the manifest's `file`
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # tag -> manifest field
    # param -> manifest field: settings resolved at run time (e.g. the device actually used)
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    curves: bool = False  # the stage logs training curves through a metrics log
    # tag prefix -> manifest field holding a paired comparison (a gate's evidence): its counts,
    # difference, interval and p-values become tags `<prefix>.texts`, `<prefix>.p_worse`, ...
    comparisons: dict[str, str] = dataclasses.field(default_factory=dict)

    def manifest_fields(self) -> set[str]:
        """Every manifest field this recording reads."""
        named = {*self.metrics, *self.tags.values(), *self.params.values()}
        named |= set(self.comparisons.values())
        if any("{file}" in name for name in self.files):
            named.add("file")
        if self.curves:
            named.add("history")  # replayed into MLflow when the stage is reused
        return named


@dataclass(frozen=True)
class Stage:
    name: str  # the stage's folder in the store and its name in MLflow (`stage.<name>.key`)
    manifest: str  # "package.module:Class", a `StageManifest` subclass
    # What a pipeline run records in MLflow; None: not recorded on its own (a logit shard is
    # part of the cache, which is).
    recording: Recording | None = None
    collectable: bool = True  # `distillery gc` removes its folders no kept run uses
    # Runs once per sweep cell (after the shared cache); `section` is the config section a
    # sweep grid may vary for it (None: the stage has no settings of its own).
    sweep_cell: bool = False
    section: str | None = None

    def manifest_type(self) -> type[StageManifest]:
        return _resolve(self.manifest)


@functools.cache
def _resolve(path: str) -> type[StageManifest]:
    module, _, name = path.partition(":")
    found = getattr(importlib.import_module(module), name)
    if not (isinstance(found, type) and issubclass(found, StageManifest)):
        raise TypeError(f"stage table: {path} is not a StageManifest")
    return found


def runtime_params(stage: str) -> dict[str, str]:
    """MLflow params for the device and precision a stage actually used."""
    return {f"resolved.{stage}.device": "device", f"resolved.{stage}.precision": "precision"}


TRAINING_METRICS = ("best_val_accuracy", "best_epoch", "params", "steps")

STAGES: tuple[Stage, ...] = (
    Stage(
        "data",
        "distill.data:DataManifest",
        Recording(files=("labels.json", "split.json"), tags={"data_fingerprint": "fingerprint"}),
    ),
    Stage(
        "teacher",
        "distill.teacher:TeacherManifest",
        Recording(
            metrics=TRAINING_METRICS,
            tags={"teacher_sha256": "weights_sha256", "teacher.stop_reason": "stop_reason"},
            params=runtime_params("teacher"),
            curves=True,
        ),
    ),
    Stage("augment", "distill.augment:AugmentManifest", Recording(metrics=("rows",))),
    # The teacher as an ONNX graph (fp32 or INT8) that labels the cache (teacher.labelling);
    # recorded with the cache (which tags the graph it used, so gc keeps that one).
    Stage("teacher_onnx", "deploy.teacher_onnx:TeacherOnnxManifest"),
    # Where PyTorch would label in bf16: its validation logits and batch times against fp32, the
    # evidence `auto` labelling judges it on (not tagged: gc may collect it, a run rebuilds it).
    Stage("teacher_precision", "deploy.teacher_precision:PrecisionCheckManifest"),
    # One unit of a sharded logit cache; assembled into logit_cache.
    Stage("logit_shard", "distill.shards:ShardManifest"),
    Stage(
        "logit_cache",
        "distill.logit_cache:CacheManifest",
        Recording(
            metrics=(
                "labelling_max_abs_logit_diff",
                "labelling_agreement",
                "labelling_mean_kl",
            ),
            params=runtime_params("logit_cache") | {"resolved.labelling": "labelling_runtime"},
            tags={"stage.teacher_onnx.key": "labelling_graph_key"},
        ),
    ),
    # teacher.ensemble: the main teacher's cache averaged with the members' (their own teacher,
    # logit_cache and student_data stages are built inside it, and not tagged: gc may collect
    # them, and a later run then builds them again).
    Stage(
        "ensemble_cache",
        "distill.ensemble:EnsembleManifest",
        Recording(tags={"stage.logit_cache.key": "main_cache_key"}),
    ),
    # A student with its own tokenizer: the same rows in its ids (absent when it shares the
    # teacher's tokenizer; an ensemble member's rows in its ids too).
    Stage("student_data", "distill.data:DataManifest", Recording(files=("labels.json",))),
    Stage("student_augment", "distill.augment:AugmentManifest", Recording(metrics=("rows",))),
    Stage(
        "student",
        "distill.student:StudentManifest",
        Recording(
            metrics=TRAINING_METRICS,
            tags={"student.stop_reason": "stop_reason"},
            params=runtime_params("student"),
            curves=True,
        ),
        sweep_cell=True,
        section="student",
    ),
    Stage(
        "evaluation",
        "distill.evaluation:EvaluationManifest",
        Recording(
            metrics=(
                "teacher_accuracy",
                "teacher_macro_f1",
                "student_accuracy",
                "student_macro_f1",
                "retention",
                "agreement",
                "teacher_params",
                "student_params",
            ),
            files=("report.json", "confusion_matrix.png"),
        ),
        sweep_cell=True,
    ),
    Stage(
        "export",
        "deploy.export:ExportManifest",
        Recording(
            metrics=(
                "max_abs_logit_diff",
                "label_agreement",
                "validation_accuracy",
                "test_accuracy",
                "bytes",
            ),
            files=("{file}",),
            comparisons={"gate.trimming": "trimming_comparison"},
        ),
        sweep_cell=True,
        section="export",
    ),
    Stage(
        "quantize",
        "deploy.quantize:QuantizeManifest",
        Recording(
            metrics=(
                "validation_accuracy",
                "test_accuracy",
                "accuracy_drop",
                "label_agreement_with_fp32",
                "bytes",
            ),
            files=("{file}",),
            comparisons={
                "gate.int8.validation": "validation_comparison",
                "gate.int8.test": "test_comparison",
            },
        ),
        sweep_cell=True,
        section="quantize",
    ),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
STAGE_FOLDERS = tuple(stage.name for stage in STAGES)  # pipeline order
COLLECTABLE = tuple(stage.name for stage in STAGES if stage.collectable)
CELL_STAGES = tuple(stage.name for stage in STAGES if stage.sweep_cell)
# Config sections a sweep grid may vary: read only after the shared cache.
SWEEPABLE_SECTIONS = tuple(stage.section for stage in STAGES if stage.sweep_cell and stage.section)


def stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}: not in deploy/stage_table.py STAGES") from None
