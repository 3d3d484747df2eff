"""The README's configuration table is generated from the config models and cannot drift."""

from pathlib import Path

import pytest
from pydantic import Field

from distill import config_docs
from distill.config import OnTie, Section, TrainingConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_config_key_has_a_description():
    assert config_docs.undocumented() == []


def test_the_readme_table_is_the_generated_one():
    readme = README.read_text()
    assert config_docs.with_table(readme, config_docs.table()) == readme, (
        "README's config table differs from distill/config.py: run "
        "`python -m distill.config_docs --write README.md`"
    )


def test_the_table_names_every_key_a_config_can_set():
    text = config_docs.table()
    for key in ("data.split.seed", "quantize.max_accuracy_drop", "compute.shard_rows"):
        assert f"`{key}`" in text
    # The training section is one row per key for teacher and student, with both defaults.
    assert "| `{teacher,student}.training.epochs` | `2` / `3` | >= 1 |" in text
    assert len([name for name in TrainingConfig.model_fields]) == text.count(
        "`{teacher,student}.training."
    )


def test_a_new_key_without_a_description_is_named():
    class Extra(Section):
        documented: int = Field(1, description="a key")
        forgotten: int = 2

    class Top(Section):
        extra: Extra = Extra()

    assert config_docs.undocumented(Top) == ["extra.forgotten"]


def test_the_table_shows_defaults_bounds_and_choices():
    class Inner(Section):
        rate: float = Field(0.5, gt=0, le=1, description="a rate")
        mode: OnTie = Field("keep", description="a choice")

    class Top(Section):
        inner: Inner = Inner(rate=0.25)

    text = config_docs.table(Top)
    assert "| `inner.rate` | `0.25` | > 0, <= 1 | a rate |" in text
    assert (
        "| `inner.mode` | `keep` | `keep`, `replace`, `replace_if_data_changed` | a choice |"
        in text
    )


def test_a_readme_without_markers_is_refused_with_the_markers_named():
    with pytest.raises(ValueError, match="config table markers"):
        config_docs.with_table("# no table here\n", "| table |")
