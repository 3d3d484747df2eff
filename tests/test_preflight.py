"""The pretrained student init: config parsing and the pre-flight checks on model shapes."""

import pytest
from transformers import DistilBertConfig, GPT2Config

from distill.config import ConfigError, PretrainedInit, build_config, load_config
from distill.preflight import check_inputs
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


def test_distilbert_feed_forward_width_is_read_from_its_own_key(tmp_path):
    folder = tmp_path / "distilbert"
    DistilBertConfig(n_layers=2, dim=32, n_heads=2, hidden_dim=64).save_pretrained(folder)
    base = [f"teacher.model={folder}", "teacher.random_init=null", "student.init.layers=[1]"]
    check_inputs(tiny(tmp_path, *base, "student.init.intermediate_size=48"))
    with pytest.raises(ConfigError, match=r"intermediate_size.*feed-forward width 64"):
        check_inputs(tiny(tmp_path, *base, "student.init.intermediate_size=65"))
