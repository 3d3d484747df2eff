"""Cheap checks run before any heavy work: inputs exist, columns are there, settings fit."""

from __future__ import annotations

from pathlib import Path

from distill.config import ConfigError, PipelineConfig, TeacherLayersInit
from distill.data import load_examples
from distill.models import resolve_model_source


def teacher_shape(config: PipelineConfig) -> tuple[int, int]:
    """The teacher's number of layers and feed-forward width."""
    if config.teacher.random_init is not None:
        arch = config.teacher.random_init
        return arch.num_layers, arch.intermediate_size
    from transformers import AutoConfig

    source = resolve_model_source(config.teacher.model)
    try:
        found = AutoConfig.from_pretrained(source)
        return found.num_hidden_layers, found.intermediate_size
    except Exception as err:  # noqa: BLE001 - hub or disk, any failure means "cannot use it"
        where = (
            "local folder" if Path(source).exists() else "local folder nor a reachable hub model"
        )
        raise ConfigError(
            f"teacher.model '{config.teacher.model}' is neither a usable {where}: {err}"
        ) from None


def check_devices(config: PipelineConfig) -> None:
    """A device or precision this machine lacks fails here, before any data is read."""
    from distill.devices import resolve_runtime

    resolve_runtime(config.teacher.training, "teacher.training")
    resolve_runtime(config.student.training, "student.training")


def check_inputs(config: PipelineConfig) -> None:
    """Raise ConfigError or DataError naming the problem; return quietly when all is usable."""
    check_devices(config)
    load_examples(config.data, Path(config.workdir) / ".hf-datasets-cache")
    layers, width = teacher_shape(config)
    init = config.student.init
    if isinstance(init, TeacherLayersInit):
        missing = [index for index in init.layers if index >= layers]
        if missing:
            raise ConfigError(
                f"config key 'student.init.layers': teacher has layers 0..{layers - 1}, "
                f"no layer {missing}"
            )
        if (init.intermediate_size or 0) > width:
            raise ConfigError(
                f"config key 'student.init.intermediate_size': {init.intermediate_size} is wider "
                f"than the teacher's feed-forward width {width}"
            )
