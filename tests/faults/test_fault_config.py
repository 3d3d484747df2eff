"""Bad configs and inputs given to `distillery run`: refused as one `error:` line that names the
problem, before anything is registered. The other config mistakes of the fault report are rows
of tests/test_cli.py (marked `fault_report` there)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.suite import clean_error, review_rows, versions, write_csv

pytestmark = pytest.mark.faults


def one_class_csv(folder: Path) -> Path:
    return write_csv(folder / "one.csv", [(text, "pos") for text, _ in review_rows(80)])


def weightless_teacher(folder: Path) -> Path:
    """A model folder with its config and tokenizer but no weights."""
    from distill.models import resolve_model_source

    teacher = folder / "weightless-teacher"
    teacher.mkdir()
    for path in Path(resolve_model_source("minilm")).iterdir():
        if path.is_file() and path.suffix in (".json", ".txt"):
            shutil.copy(path, teacher / path.name)
    return teacher


# Inputs a row names as {placeholder} in its overrides and words, made in its workdir.
INPUTS = {"one_class_csv": one_class_csv, "weightless_teacher": weightless_teacher}


def fault(name: str, item: str, overrides: list[str], words: list[str]):
    return pytest.param(overrides, words, id=name, marks=pytest.mark.fault_report(name, item))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        fault(
            "single_class_data",
            "1",
            ["data.source={one_class_csv}", "data.max_examples=null"],
            ["only the class 'pos'"],
        ),
        fault(
            "invalid_registered_model", "13", ["tracking.registered_model=bad/name"], ["bad/name"]
        ),
        fault(
            "weightless_teacher_folder",
            "25.6",
            ["teacher.model={weightless_teacher}", "teacher.random_init=null"],
            ["{weightless_teacher}", "no weights"],
        ),
    ],
)
def test_a_bad_config_is_one_line_and_registers_nothing(suite, verdict, request, overrides, words):
    workdir, _ = suite.fresh(request.node.callspec.id)
    text = " ".join(overrides + words)
    paths = {key: make(workdir) for key, make in INPUTS.items() if f"{{{key}}}" in text}
    overrides = [override.format(**paths) for override in overrides]
    result = suite.run(workdir, *overrides, store=workdir / "store")  # never the shared store
    ok, line = clean_error(result, *(word.format(**paths) for word in words))
    built = (workdir / "summary.json").exists() or bool(versions(workdir))
    verdict(detected=ok, recovered=not built, message=line)


@pytest.mark.fault_report("malformed_yaml", "-")
def test_malformed_yaml(suite, verdict):
    workdir, _ = suite.fresh("malformed_yaml")
    config = workdir / "bad.yaml"
    config.write_text("name: x\ndata: [unclosed\n")
    ok, line = clean_error(suite.cli("run", config, f"workdir={workdir}", timeout=120), "bad.yaml")
    verdict(detected=ok, recovered=ok, message=line)
