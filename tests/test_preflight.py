"""The pretrained student init: config parsing and the pre-flight checks on model shapes."""

import os
from pathlib import Path

import pandas as pd
import pytest
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
)

from distill.config import ConfigError, PretrainedInit, build_config, load_config
from distill.data import DataError
from distill.preflight import check_inputs, safetensors_problem
from tests.conftest import TINY_CONFIG

PRETRAINED = "student.init={kind: pretrained, model: minilm, layers: [0, 2, 5]}"


def test_pretrained_init_parses_with_its_own_model_and_layers():
    config = build_config({}, [PRETRAINED, "student.init.intermediate_size=512"])
    assert isinstance(config.student.init, PretrainedInit)
    assert config.student.init.model == "minilm"
    assert config.student.init.intermediate_size == 512
    assert config.student.num_layers == 3


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["student.init.layers=[]"], "'student.init.layers' must name at least one layer"),
        (["student.init.colour=red"], "unknown config key 'student.init.colour'"),
        (["student.hidden.weight=1"], "'student.hidden.layer_map' is required .* pretrained"),
    ],
)
def test_pretrained_init_mistakes_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        build_config({}, [PRETRAINED, *overrides])


def tiny(tmp_path, *overrides):
    return load_config(TINY_CONFIG, [f"workdir={tmp_path}", *overrides])


def test_patient_kd_between_different_widths_is_refused_naming_student_hidden(tmp_path):
    # The tiny teacher is 32 wide; MiniLM, the pretrained student, is 384 wide.
    config = tiny(
        tmp_path, PRETRAINED, "student.hidden.weight=1", "student.hidden.layer_map=[[0, 1]]"
    )
    with pytest.raises(ConfigError, match=r"student\.hidden.*student is 384 wide.*teacher 32"):
        check_inputs(config)


def test_the_cosine_term_between_different_widths_is_refused_naming_its_key(tmp_path):
    config = tiny(
        tmp_path, PRETRAINED, "student.hidden.cosine_weight=1", "student.hidden.layer_map=[[0, 1]]"
    )
    with pytest.raises(
        ConfigError, match=r"student\.hidden\.cosine_weight'.*student is 384 wide.*teacher 32"
    ):
        check_inputs(config)


def test_patient_kd_between_equal_widths_passes(tmp_path):
    config = tiny(
        tmp_path,
        "teacher.random_init=null",  # the MiniLM teacher: as wide as the MiniLM student
        PRETRAINED,
        "student.hidden.weight=1",
        "student.hidden.layer_map=[[0, 1], [2, 5]]",
    )
    check_inputs(config)


def test_pretrained_student_layers_are_checked_against_its_own_model(tmp_path):
    config = tiny(tmp_path, PRETRAINED, "student.init.layers=[0, 9]")
    with pytest.raises(ConfigError, match=r"student\.init\.layers.*model minilm has layers 0\.\.5"):
        check_inputs(config)


def test_unreachable_pretrained_student_is_named(tmp_path):
    config = tiny(tmp_path, PRETRAINED, f"student.init.model={tmp_path / 'absent'}")
    with pytest.raises(ConfigError, match="student.init.model"):
        check_inputs(config)


def test_teacher_family_without_block_list_is_refused_for_carving(tmp_path):
    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=2, n_embd=16, n_head=2).save_pretrained(folder)
    config = tiny(tmp_path, "teacher.random_init=null", f"teacher.model={folder}")
    with pytest.raises(ConfigError, match=r"student\.init\.kind.*'gpt2'"):
        check_inputs(config)


def test_distilbert_feed_forward_width_is_read_from_its_own_key(tmp_path, tokenizer):
    folder = tmp_path / "distilbert"
    arch = DistilBertConfig(vocab_size=len(tokenizer), n_layers=2, dim=32, n_heads=2, hidden_dim=64)
    DistilBertForSequenceClassification(arch).save_pretrained(folder)  # weights: checked too
    tokenizer.save_pretrained(folder)  # the pre-flight also checks the teacher's tokenizer
    base = [f"teacher.model={folder}", "teacher.random_init=null", "student.init.layers=[1]"]
    check_inputs(tiny(tmp_path, *base, "student.init.intermediate_size=48"))
    with pytest.raises(ConfigError, match=r"intermediate_size.*feed-forward width 64"):
        check_inputs(tiny(tmp_path, *base, "student.init.intermediate_size=65"))


def unwritable_folder(tmp_path):
    """A folder this process cannot write to: read-only by mode, or /proc for root (root
    ignores file modes, but not /proc's refusal to hold new files)."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_a_read_only_workdir_is_named_before_the_data_is_read(tmp_path):
    workdir = unwritable_folder(tmp_path) / "distillery-workdir"
    with pytest.raises(ConfigError, match=rf"config key 'workdir': {workdir} is not writable"):
        check_inputs(tiny(tmp_path, f"workdir={workdir}"))
    with pytest.raises(ConfigError, match=r"config key 'store': .* is not writable"):
        check_inputs(tiny(tmp_path, f"store={workdir}"))


def test_a_workdir_below_a_file_is_named(tmp_path):
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(ConfigError, match=r"'workdir': .*plain-file is a file, not a folder"):
        check_inputs(tiny(tmp_path, f"workdir={tmp_path / 'plain-file' / 'w'}"))


def test_a_missing_teacher_folder_is_named_also_with_random_init(tmp_path):
    missing = tmp_path / "no-such-teacher"
    config = tiny(tmp_path, f"teacher.model={missing}")  # tiny sets teacher.random_init
    with pytest.raises(ConfigError, match=rf"'teacher.model': '{missing}' .*random_init"):
        check_inputs(config)


def test_a_truncated_safetensors_file_in_the_teacher_folder_is_named(tmp_path, tokenizer):
    folder = tmp_path / "teacher"
    arch = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForSequenceClassification(arch).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    assert safetensors_problem(weights) is None
    config = tiny(tmp_path, f"teacher.model={folder}", "teacher.random_init=null")
    check_inputs(config)
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert "truncated" in safetensors_problem(weights)
    with pytest.raises(ConfigError, match=rf"weights file {weights} is not usable: truncated"):
        check_inputs(config)
    weights.write_bytes(weights.read_bytes()[:5])
    assert "too short" in safetensors_problem(weights)


def test_a_teacher_folder_without_weights_is_refused_before_any_work(tmp_path, tokenizer):
    """config.json and a tokenizer but no weights: transformers would fail three retries later."""
    folder = tmp_path / "teacher"
    arch = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2)
    arch.num_attention_heads, arch.intermediate_size = 2, 64
    BertForSequenceClassification(arch).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    config = tiny(tmp_path, f"teacher.model={folder}", "teacher.random_init=null")
    with pytest.raises(
        ConfigError, match=rf"'teacher.model': model folder {folder} has no weights"
    ):
        check_inputs(config)


def test_a_layer_map_beyond_the_teacher_is_refused_even_when_unused(tmp_path):
    config = tiny(tmp_path, "student.hidden.layer_map=[[0, 9]]")  # weight 0: map not used yet
    with pytest.raises(ConfigError, match=r"'student.hidden.layer_map': teacher has layers 0\.\.1"):
        check_inputs(config)


def test_a_class_made_rare_by_max_examples_is_named_in_the_preflight(tmp_path):
    path = tmp_path / "skewed.csv"
    texts = [f"review {i}" for i in range(324)]
    labels = ["pos"] * 300 + ["neg"] * 24
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    config = tiny(tmp_path, f"data.source={path}", "data.max_examples=100")
    with pytest.raises(DataError, match=r"class 'neg' \(7\) after data.max_examples=100"):
        check_inputs(config)
    one_class = tmp_path / "one.csv"
    pd.DataFrame({"text": texts, "label": ["pos"] * 324}).to_csv(one_class, index=False)
    with pytest.raises(DataError, match="only the class 'pos'"):
        check_inputs(tiny(tmp_path, f"data.source={one_class}"))
