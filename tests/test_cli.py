"""The CLI refuses bad input before any heavy work, with one line that names the problem."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, TINY_CONFIG
from tests.conftest import run_cli as distillery


def in_process(*args):
    """The CLI's own code path in this process: no Python start and imports per case (seconds
    each); test_a_config_mistake_in_a_real_process_... runs one through a real process."""
    # Imported first: these libraries give their loggers a handler on sys.stderr at import,
    # which inside the runner is its own stream, closed when the invocation ends.
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


def fault(name, item, *values):
    """A case that is also a row of the fault report (tests/faults/conftest.py)."""
    return pytest.param(*values, id=name, marks=pytest.mark.fault_report(name, item))


def error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        fault(
            "unknown_config_key",
            "-",
            "student.temprature=2",
            "unknown config key 'student.temprature'",
        ),
        ("teacher.training.epochs=two", "config key 'teacher.training.epochs'"),
        ("student.init.layers=[0, 7]", "student.init.layers"),
        ("student.init.intermediate_size=100000", "student.init.intermediate_size"),
        fault(
            "epochs_true",
            "13",
            "teacher.training.epochs=true",
            "'teacher.training.epochs': expected a number, got true",
        ),
        fault(
            "bad_layer_map",
            "13",
            "student.hidden.layer_map=[[0, 9]]",
            "'student.hidden.layer_map': teacher has layers",
        ),
        fault(
            "missing_teacher_folder",
            "13",
            "teacher.model=/nonexistent/teacher",
            "'teacher.model': '/nonexistent/teacher'",
        ),
    ],
)
def test_config_mistakes_stop_the_run_and_name_the_key(tmp_path, override, expected):
    # In this process (the CLI's own code path, without a Python start per case); the next test
    # runs one mistake through a real process.
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(
        app, ["run", str(TINY_CONFIG), f"workdir={tmp_path / 'w'}", override]
    )
    assert (
        result.exit_code == 2
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    assert expected in error_line(result)
    assert not (tmp_path / "w" / "data").exists()


def test_a_config_mistake_in_a_real_process_is_one_line_without_traceback(tmp_path):
    result = distillery("run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", "student.temprature=2")
    assert result.returncode == 2
    assert "unknown config key 'student.temprature'" in error_line(result)


def test_missing_data_file_is_named(tmp_path):
    missing = tmp_path / "absent.csv"
    result = in_process("run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", f"data.source={missing}")
    assert result.exit_code == 2
    assert f"data file not found: {missing}" in error_line(result)
    assert not (tmp_path / "w" / "data").exists()


@pytest.mark.fault_report("missing_text_column", "-")
def test_missing_column_is_named(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["good", "bad"] * 10, "label": [1, 0] * 10}).to_csv(path, index=False)
    result = in_process("run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", f"data.source={path}")
    assert result.exit_code == 2
    assert "column 'text' not found" in error_line(result)


@pytest.mark.fault_report("unreachable_cluster", "25.7")
def test_an_unreachable_cluster_is_one_line_before_any_work(tmp_path):
    from tests.services import free_port

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    result = in_process(
        "run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", f"compute.cluster={address}"
    )
    assert result.exit_code == 2
    assert f"compute.cluster: nothing answers at {address}" in error_line(result)
    assert not (tmp_path / "w" / "data").exists()


def test_show_config_prints_the_resolved_config():
    result = distillery("show-config", TINY_CONFIG, "student.alpha=0.9")
    assert result.returncode == 0, result.stderr
    assert "alpha: 0.9" in result.stdout


@pytest.mark.fault_report("rare_class_max_examples", "11")
def test_a_class_made_rare_by_max_examples_is_named_before_any_mlflow_run(tmp_path):
    path = tmp_path / "skewed.csv"
    labels = ["pos"] * 300 + ["neg"] * 24
    texts = [f"review number {i}" for i in range(len(labels))]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    workdir = tmp_path / "w"
    result = distillery(
        "run", TINY_CONFIG, f"workdir={workdir}", f"data.source={path}", "data.max_examples=100"
    )
    assert result.returncode == 2
    assert "class 'neg' (7) after data.max_examples=100" in error_line(result)
    assert not (workdir / "mlflow.db").exists() and not (workdir / "data").exists()


@pytest.mark.fault_report("latin1_csv", "13")
def test_a_latin1_file_is_named_with_the_data_encoding_hint(tmp_path):
    path = tmp_path / "latin.csv"
    rows = "text,label\n" + "".join(f"caf\xe9 number {i},{i % 2}\n" for i in range(60))
    path.write_bytes(rows.encode("latin-1"))
    result = distillery("run", TINY_CONFIG, f"workdir={tmp_path / 'w'}", f"data.source={path}")
    assert result.returncode == 2
    line = error_line(result)
    assert f"data file {path} is not valid utf-8 text" in line and "data.encoding=" in line


@pytest.mark.fault_report("unwritable_workdir", "12")
def test_a_read_only_workdir_is_reported_as_such(tmp_path):
    from tests.test_preflight import unwritable_folder

    workdir = unwritable_folder(tmp_path) / "distillery-workdir"
    result = distillery("run", TINY_CONFIG, f"workdir={workdir}")
    assert result.returncode == 2
    line = error_line(result)
    # The workdir lock is taken (and the folder made) before anything else, so the message comes
    # from there: it names the workdir and says it must be writable, never "could not be read".
    assert f"workdir {workdir} cannot be used" in line and "writable" in line
    assert "could not be read" not in line


@pytest.mark.fault_report("unreachable_mlflow", "-")
def test_an_unreachable_tracking_server_is_one_line_before_the_flow_starts(tmp_path):
    import os
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(TINY_CONFIG), f"workdir={tmp_path / 'w'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in error_line(result)
    assert "Flow run" not in result.stderr  # refused before Prefect ran anything
    assert not (tmp_path / "w" / "data").exists()


def test_a_reset_registry_is_one_line_before_the_flow_starts(tmp_path):
    import json

    from tasks.tracking import sqlite_uri

    workdir = tmp_path / "w"
    workdir.mkdir()
    # This workdir registered v3; its mlflow.db has since been deleted.
    record = {"tracking_uri": sqlite_uri(workdir), "registered_model": "distillery-tiny-student"}
    (workdir / "registry.json").write_text(
        json.dumps({"registries": [{**record, "highest_version": 3}]})
    )
    result = distillery("run", TINY_CONFIG, f"workdir={workdir}")
    assert result.returncode == 2
    line = error_line(result)
    assert "was reset or replaced" in line and "v3" in line and "registry.json" in line
    assert "Flow run" not in result.stderr
    assert not (workdir / "data").exists()


def test_a_users_mistake_inside_a_flow_is_logged_without_its_traceback():
    """Prefect's engine logs a failed flow's traceback; for errors the CLI reports as one line,
    the log keeps the message and drops the traceback. Other errors keep theirs."""
    import logging

    from flows.runtime_env import WithoutTraceback

    def record_of(error):
        try:
            raise error
        except Exception:
            import sys

            return logging.LogRecord(
                "prefect", logging.ERROR, "", 0, "failed: %r", (error,), sys.exc_info()
            )

    quiet = WithoutTraceback((ValueError,))
    mistake, bug = record_of(ValueError("column 'text' not found")), record_of(KeyError("x"))
    assert quiet.filter(mistake) and quiet.filter(bug)
    assert mistake.exc_info is None and "column 'text'" in mistake.getMessage()
    assert bug.exc_info is not None
