"""Cheap checks run before any heavy work: inputs exist, columns are there, settings fit.

Model shapes come from config files only (no weights are loaded), so a pretrained student's
depth and width are checked here, before the teacher is fine-tuned.
"""

from __future__ import annotations

import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distill.config import (
    ConfigError,
    PipelineConfig,
    PretrainedInit,
    RandomInit,
    TeacherLayersInit,
)
from distill.data import load_examples, load_unlabeled, plan_splits
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
    """The [CLS]-state terms (Patient-KD, cosine) compare states elementwise: both models must
    be equally wide."""
    layer_map = config.student.hidden.layer_map or []
    too_deep = [teacher_layer for _, teacher_layer in layer_map if teacher_layer >= teacher.layers]
    if too_deep:
        raise ConfigError(
            f"config key 'student.hidden.layer_map': teacher has layers "
            f"0..{teacher.layers - 1}, no layer {too_deep}"
        )
    weighted = [f"student.hidden.{name}" for name in config.student.hidden.weighted()]
    if not weighted:
        return
    student = student_hidden_size(config, teacher)
    if student != teacher.hidden:
        raise ConfigError(
            f"config key '{weighted[0]}': the [CLS]-state terms compare hidden states, but the "
            f"student is {student} wide and the teacher {teacher.hidden}; set "
            f"{', '.join(f'{key}=0' for key in weighted)} or pick models of the same width"
        )


def check_devices(config: PipelineConfig) -> None:
    """A device or precision this machine lacks fails here, before any data is read."""
    from distill.devices import resolve_runtime

    resolve_runtime(config.teacher.training, "teacher.training")
    resolve_runtime(config.student.training, "student.training")


def check_writable(folder: Path, key: str) -> None:
    """`folder` (or the nearest folder above it that exists) accepts new files."""
    folder = Path(folder).expanduser().absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise ConfigError(f"config key '{key}': {existing} is a file, not a folder")
    try:  # a real write tells the truth where os.access may not (ACLs, network filesystems)
        with tempfile.TemporaryFile(dir=existing, prefix=".distillery-write-check-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"config key '{key}': {folder} is not writable "
            f"({existing}: {err.strerror or err}); choose a folder this user can write"
        ) from None


def check_tokenizer_source(model: str, key: str, note: str = "") -> None:
    """The model whose tokenizer the data is tokenized with is there (also with random_init)."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(resolve_model_source(model))
    except Exception as err:  # noqa: BLE001 - missing folder, missing files, unreachable hub
        what = (
            "has no usable tokenizer"
            if Path(model).exists()
            else "is neither a local folder nor a reachable hub model"
        )
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"config key '{key}': '{model}' {what}{note}: {reason}") from None


SAFETENSORS_HEADER_LIMIT = 100_000_000  # the format's own cap on the JSON header


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (header, size), or None when it is.

    Reads only the header: the tensors' byte ranges say how long the file must be.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, too short for a safetensors header"
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(SAFETENSORS_HEADER_LIMIT, size - 8):
            return f"header of {header_size} bytes does not fit in {size} bytes (truncated?)"
        try:
            header = json.loads(handle.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not valid JSON"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    needed = 8 + header_size + max(ends, default=0)
    if size < needed:
        return f"truncated: {size} bytes, its header needs {needed}"
    return None


# What `from_pretrained` loads weights from (a single file or a sharded index).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model.bin", "*.index.json")


def check_weight_files(model: str, key: str) -> None:
    """A local model folder has weights, and every safetensors file is complete (a cheap header
    check)."""
    folder = Path(resolve_model_source(model))
    if not folder.is_dir():
        return  # a hub model: downloaded and checked by the hub client
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ConfigError(
            f"config key '{key}': model folder {folder} has no weights (no model.safetensors or "
            "pytorch_model.bin, nor a sharded index): copy the whole model folder"
        )
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise ConfigError(f"config key '{key}': weights file {path} is not usable: {problem}")


def check_data(config: PipelineConfig) -> None:
    """The data reads, has enough examples of every class and splits as the data stage will."""
    examples = load_examples(config.data, Path(config.workdir) / ".hf-datasets-cache")
    plan_splits(examples, config.data)


def check_inputs(config: PipelineConfig) -> None:
    """Raise ConfigError or DataError naming the problem; return quietly when all is usable."""
    check_writable(config.workdir, "workdir")
    if config.store is not None:
        check_writable(config.store, "store")
    check_devices(config)
    check_data(config)
    if config.data.unlabeled is not None:  # a missing file or an empty text fails here
        load_unlabeled(config.data.unlabeled, Path(config.workdir) / ".hf-datasets-cache")
    random_teacher = config.teacher.random_init is not None
    note = " (teacher.random_init still uses its tokenizer)" if random_teacher else ""
    check_tokenizer_source(config.teacher.model, "teacher.model", note)
    teacher = teacher_shape(config)
    init = config.student.init
    if isinstance(init, TeacherLayersInit):
        check_carving(init, teacher, "teacher")
    elif isinstance(init, PretrainedInit):
        check_carving(init, model_shape(init.model, "student.init.model"), f"model {init.model}")
        check_weight_files(init.model, "student.init.model")
    check_hidden_distillation(config, teacher)
    if not random_teacher:  # after the settings: a wrong layer or width is named first
        check_weight_files(config.teacher.model, "teacher.model")
    for number, member in enumerate(config.teacher.ensemble):
        key = f"teacher.ensemble[{number}].model"
        check_tokenizer_source(member.model, key)
        if member.random_init is None:
            check_weight_files(member.model, key)
