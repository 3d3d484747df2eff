"""The CLI refuses bad input before any heavy work, with one line that names the problem."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, TINY_CONFIG


def distillery(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("student.temprature=2", "unknown config key 'student.temprature'"),
        ("teacher.training.epochs=two", "config key 'teacher.training.epochs'"),
        ("student.init.layers=[0, 7]", "student.init.layers"),
        ("student.init.intermediate_size=100000", "student.init.intermediate_size"),
    ],
)
def test_config_mistakes_stop_the_run_and_name_the_key(tmp_path, override, expected):
    result = distillery("run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", override)
    assert result.returncode == 2
    assert expected in error_line(result)
    assert not (tmp_path / "w" / "data").exists()


def test_missing_data_file_is_named(tmp_path):
    missing = tmp_path / "absent.csv"
    result = distillery("run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", f"data.source={missing}")
    assert result.returncode == 2
    assert f"data file not found: {missing}" in error_line(result)
    assert not (tmp_path / "w" / "data").exists()


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["good", "bad"] * 10, "label": [1, 0] * 10}).to_csv(path, index=False)
    result = distillery("run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", f"data.source={path}")
    assert result.returncode == 2
    assert "column 'text' not found" in error_line(result)


def test_show_config_prints_the_resolved_config():
    result = distillery("show-config", TINY_CONFIG, "student.alpha=0.9")
    assert result.returncode == 0, result.stderr
    assert "alpha: 0.9" in result.stdout
