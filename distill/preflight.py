"""Cheap checks run before any heavy work: inputs exist, columns are there, settings fit."""

from __future__ import annotations

from pathlib import Path

from distill.config import ConfigError, PipelineConfig, TeacherLayersInit
from distill.data import load_examples
from distill.models import resolve_model_source


def teacher_num_layers(config: PipelineConfig) -> int:
    if config.teacher.random_init is not None:
        return config.teacher.random_init.num_layers
    from transformers import AutoConfig

    source = resolve_model_source(config.teacher.model)
    try:
        return AutoConfig.from_pretrained(source).num_hidden_layers
    except Exception as err:  # noqa: BLE001 - hub or disk, any failure means "cannot use it"
        where = (
            "local folder" if Path(source).exists() else "local folder nor a reachable hub model"
        )
        raise ConfigError(
            f"teacher.model '{config.teacher.model}' is neither a usable {where}: {err}"
        ) from None


def check_inputs(config: PipelineConfig) -> None:
    """Raise ConfigError or DataError naming the problem; return quietly when all is usable."""
    load_examples(config.data, Path(config.workdir) / ".hf-datasets-cache")
    layers = teacher_num_layers(config)
    init = config.student.init
    if isinstance(init, TeacherLayersInit):
        missing = [index for index in init.layers if index >= layers]
        if missing:
            raise ConfigError(
                f"config key 'student.init.layers': teacher has layers 0..{layers - 1}, "
                f"no layer {missing}"
            )
