"""Cheap checks run before any heavy work: inputs exist, columns are there, settings fit.

Model shapes come from config files only (no weights are loaded), so a pretrained student's
depth and width are checked here, before the teacher is fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.config import (
    ConfigError,
    PipelineConfig,
    PretrainedInit,
    RandomInit,
    TeacherLayersInit,
)
from distill.data import load_examples, load_unlabeled
from distill.models import (
    UnsupportedModelError,
    feed_forward_width,
    model_family,
    resolve_model_source,
)


@dataclass(frozen=True)
class Shape:
    """What the checks need to know about a model, read from its config."""

    layers: int
    feed_forward: int
    hidden: int
    model_type: str


def model_shape(model: str, key: str) -> Shape:
    """The shape of the model `model` (bundled name, folder or hub name) set at config `key`."""
    from transformers import AutoConfig

    try:
        source = resolve_model_source(model)
        found = AutoConfig.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - hub or disk, any failure means "cannot use it"
        where = "local folder" if Path(model).exists() else "local folder nor a reachable hub model"
        raise ConfigError(f"{key} '{model}' is neither a usable {where}: {err}") from None
    try:
        width = feed_forward_width(found)
    except UnsupportedModelError:
        width = getattr(found, "intermediate_size", 0)  # only carving needs the family table
    return Shape(found.num_hidden_layers, width, found.hidden_size, found.model_type)


def teacher_shape(config: PipelineConfig) -> Shape:
    if config.teacher.random_init is not None:
        arch = config.teacher.random_init
        return Shape(arch.num_layers, arch.intermediate_size, arch.hidden_size, "bert")
    return model_shape(config.teacher.model, "teacher.model")


def student_hidden_size(config: PipelineConfig, teacher: Shape) -> int:
    init = config.student.init
    if isinstance(init, RandomInit):
        return init.hidden_size
    if isinstance(init, PretrainedInit):
        return model_shape(init.model, "student.init.model").hidden
    return teacher.hidden


def check_carving(init: TeacherLayersInit | PretrainedInit, shape: Shape, owner: str) -> None:
    """The chosen layers exist, the narrowed width fits, and the family can be carved."""
    try:
        model_family(shape.model_type)
    except UnsupportedModelError as err:
        raise ConfigError(f"config key 'student.init.kind': {err}") from None
    missing = [index for index in init.layers if index >= shape.layers]
    if missing:
        raise ConfigError(
            f"config key 'student.init.layers': {owner} has layers 0..{shape.layers - 1}, "
            f"no layer {missing}"
        )
    if (init.intermediate_size or 0) > shape.feed_forward:
        raise ConfigError(
            f"config key 'student.init.intermediate_size': {init.intermediate_size} is wider "
            f"than the {owner}'s feed-forward width {shape.feed_forward}"
        )


def check_hidden_distillation(config: PipelineConfig, teacher: Shape) -> None:
    """Patient-KD compares [CLS] states elementwise: both models must be equally wide."""
    if config.student.hidden.weight == 0:
        return
    student = student_hidden_size(config, teacher)
    if student != teacher.hidden:
        raise ConfigError(
            f"config key 'student.hidden.weight': Patient-KD compares hidden states, but the "
            f"student is {student} wide and the teacher {teacher.hidden}; set "
            "student.hidden.weight=0 or pick models of the same width"
        )
    layer_map = config.student.hidden.layer_map or []
    too_deep = [teacher_layer for _, teacher_layer in layer_map if teacher_layer >= teacher.layers]
    if too_deep:
        raise ConfigError(
            f"config key 'student.hidden.layer_map': teacher has layers "
            f"0..{teacher.layers - 1}, no layer {too_deep}"
        )


def check_devices(config: PipelineConfig) -> None:
    """A device or precision this machine lacks fails here, before any data is read."""
    from distill.devices import resolve_runtime

    resolve_runtime(config.teacher.training, "teacher.training")
    resolve_runtime(config.student.training, "student.training")


def check_inputs(config: PipelineConfig) -> None:
    """Raise ConfigError or DataError naming the problem; return quietly when all is usable."""
    check_devices(config)
    load_examples(config.data, Path(config.workdir) / ".hf-datasets-cache")
    if config.data.unlabeled is not None:  # a missing file or an empty text fails here
        load_unlabeled(config.data.unlabeled, Path(config.workdir) / ".hf-datasets-cache")
    teacher = teacher_shape(config)
    init = config.student.init
    if isinstance(init, TeacherLayersInit):
        check_carving(init, teacher, "teacher")
    elif isinstance(init, PretrainedInit):
        check_carving(init, model_shape(init.model, "student.init.model"), f"model {init.model}")
    check_hidden_distillation(config, teacher)
