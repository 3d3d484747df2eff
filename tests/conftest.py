"""Shared fixtures: the tiny config, its prepared data, tiny random models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def run_cli(*args, cwd=REPO, env=None, timeout=120) -> subprocess.CompletedProcess:
    """The real CLI (`python -m flows.cli ARGS`) in a new process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def restore_environment():
    """Every test starts from the same environment variables. Code under test sets some for
    good (`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI, the CLI's
    `configure_environment` sets PREFECT_HOME ...); leaked into later tests, they sent those
    tests' runs, and their subprocesses', to another test's MLflow store."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from distill.config import load_config

    workdir = tmp_path_factory.mktemp("tiny-workdir")
    return load_config(TINY_CONFIG, [f"workdir={workdir}"])


@pytest.fixture(scope="session")
def tiny_data(tiny_config):
    from distill.data import data_stage

    return data_stage(tiny_config.workdir, tiny_config.data, tiny_config.teacher.model)


@pytest.fixture(scope="session")
def tokenizer():
    from distill.models import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source("minilm"))


@pytest.fixture
def tiny_classifier():
    from distill.config import RandomArchitecture
    from distill.models import random_classifier

    arch = RandomArchitecture(num_layers=3, hidden_size=32, num_heads=2, intermediate_size=64)
    return random_classifier(arch, 30522, 128, ["negative", "positive"], seed=0).eval()


@pytest.fixture(scope="session")
def tiny_stages(tiny_config, tiny_data):
    """Every stage up to INT8 on the tiny config, wired as the flow wires them (no Prefect)."""
    from deploy.chain import run_pipeline_stages

    return run_pipeline_stages(tiny_config, tiny_config.store_dir)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_stages, tmp_path_factory):
    """An edge bundle of the tiny pipeline (as if for MLflow run "run-tiny", version 3)."""
    from deploy.bundle import bundle_from_stages

    return bundle_from_stages(
        tmp_path_factory.mktemp("bundle-workdir"), tiny_stages, run_id="run-tiny", model_version="3"
    )


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """Prefect's embedded server with its state in a temporary home, started once for every test
    that runs flows in this process, and stopped at the end."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    home = tmp_path_factory.mktemp("prefect-home")
    settings = {
        PREFECT_HOME: str(home),
        PREFECT_API_URL: None,
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90,
    }
    with temporary_settings(settings):
        yield home
    SubprocessASGIServer().stop()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A real `dask scheduler` and two one-thread `dask worker`s on loopback; yields
    (scheduler address, the workers' addresses)."""
    import sys

    import distributed

    from tests.services import free_port, start, stop

    logs = tmp_path_factory.mktemp("dask-logs")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # The workers import this checkout's code (flows.cluster) to run the tasks.
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"PYTHONPATH": path}
    dask = Path(sys.executable).parent / "dask"
    scheduler = ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    processes = [start([dask, *scheduler], env, logs / "scheduler.log")]
    try:
        for n in range(2):
            worker = ["worker", address, "--host", "127.0.0.1", "--name", f"worker-{n}"]
            worker += ["--nworkers", "1", "--nthreads", "1", "--no-dashboard"]
            processes.append(start([dask, *worker], env, logs / f"worker-{n}.log"))
        with distributed.Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=90)
            workers = set(client.scheduler_info(n_workers=-1)["workers"])
        yield address, workers
    finally:
        for process in reversed(processes):
            stop(process, timeout=15)
        assert all(process.poll() is not None for process in processes)
