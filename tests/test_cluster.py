"""The `compute:` setting and its Dask task runners, against a real `dask scheduler` and workers.

The fixture starts a scheduler and two single-thread workers with the `dask` CLI on free
loopback ports (stopped at the end); a tiny flow maps a pure task over them and over a
`local:2` cluster, and both must give the in-process runner's results.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import cloudpickle
import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from distill.config import ComputeConfig, ConfigError, build_config
from flows.cluster import (
    ClusterUnreachable,
    TorchThreads,
    is_loopback,
    prefect_api_for_workers,
    prepare_scheduler,
    task_runner_for,
    this_machines_hosts,
    with_compute,
    worker_identity,
    workers_cut_off,
)
from tests.services import free_port

# Workers cannot import this test module (pytest imports it by file), so ship its functions
# by value; flows.cluster is importable there and goes by reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ITEMS = list(range(6))


@task
def square_where(x: int) -> dict:
    time.sleep(0.2)  # long enough that one idle worker does not take every task
    return {"x": x, "square": x * x, **worker_identity()}


@flow
def map_squares(items: list[int]) -> list[dict]:
    return [future.result() for future in square_where.map(items)]


def run_on(compute: ComputeConfig) -> list[dict]:
    with prefect_api_for_workers(compute):
        return with_compute(map_squares, compute)(ITEMS)


def values(rows: list[dict]) -> list[tuple[int, int]]:
    return [(row["x"], row["square"]) for row in rows]


# --- the setting ----------------------------------------------------------------------------


def test_compute_defaults_to_in_process():
    compute = build_config({}).compute
    assert compute.cluster is None and compute.threads_per_worker == 1
    assert isinstance(task_runner_for(compute), ThreadPoolTaskRunner)


@pytest.mark.parametrize(
    "bad", ["local:0", "local:two", "local", "127.0.0.1:8786", "tcp://host", "tcp://h:99999"]
)
def test_bad_cluster_names_the_key(bad):
    with pytest.raises(ConfigError, match=r"config key 'compute\.cluster': .*is not null"):
        build_config({}, [f"compute.cluster={bad}"])


def test_threads_per_worker_must_be_positive():
    with pytest.raises(ConfigError, match=r"compute\.threads_per_worker"):
        build_config({}, ["compute.threads_per_worker=0"])


def test_runner_for_local_and_remote_clusters():
    local = task_runner_for(ComputeConfig(cluster="local:3", threads_per_worker=2))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    kwargs = dict(local.cluster_kwargs)
    (plugin,) = kwargs.pop("plugins")
    assert isinstance(plugin, TorchThreads) and plugin.threads == 2
    assert kwargs == {
        "n_workers": 3,
        "threads_per_worker": 2,
        "processes": True,
        "dashboard_address": None,
    }
    remote = task_runner_for(ComputeConfig(cluster="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"


def test_unreachable_scheduler_fails_naming_the_setting():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(
        ClusterUnreachable, match=rf"compute\.cluster: nothing answers at {address}"
    ):
        prepare_scheduler(address, threads=1, timeout=2)


def test_workers_on_other_machines_are_cut_off_from_a_loopback_api():
    assert is_loopback("http://127.0.0.1:4200/api") and is_loopback("tcp://localhost:8786")
    assert is_loopback("tcp://[::1]:8786") and not is_loopback("tcp://10.0.0.7:40111")
    assert not is_loopback("http://prefect.internal:4200/api")
    here = {"10.0.0.2", "fe80::1", "node-a", "localhost"}
    workers = [
        "tcp://127.0.0.1:40111",
        "tcp://10.0.0.2:40112",  # this machine's own address: reaches loopback
        "tcp://[fe80::1]:40113",
        "tcp://10.0.0.7:40111",
        "tcp://gpu-3:40111",
    ]
    loopback_api = "http://127.0.0.1:4200/api"
    cut_off = ["tcp://10.0.0.7:40111", "tcp://gpu-3:40111"]
    assert workers_cut_off(loopback_api, workers, here) == cut_off
    assert workers_cut_off("http://prefect.internal:4200/api", workers, here) == []
    assert workers_cut_off(None, workers, here) == []


def test_this_machines_hosts_include_its_loopback_and_name():
    hosts = this_machines_hosts()
    assert {"127.0.0.1", "localhost", socket.gethostname()} <= hosts


# --- real clusters --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sequential(prefect_api):
    return run_on(ComputeConfig())


@pytest.mark.slow
def test_in_process_runner_stays_in_this_process(sequential):
    assert values(sequential) == [(x, x * x) for x in ITEMS]
    assert {row["pid"] for row in sequential} == {os.getpid()}
    assert {row["worker"] for row in sequential} == {None}


@pytest.mark.slow
def test_tasks_run_on_both_external_workers(prefect_api, dask_cluster, sequential):
    address, workers = dask_cluster
    # The workers were started with one thread each: 2 torch threads come from the setting.
    rows = run_on(ComputeConfig(cluster=address, threads_per_worker=2))
    assert values(rows) == values(sequential)
    assert {row["worker"] for row in rows} == workers
    assert os.getpid() not in {row["pid"] for row in rows}
    assert {row["torch_threads"] for row in rows} == {2}


@pytest.mark.slow
def test_tasks_run_on_two_local_worker_processes(prefect_api, sequential):
    # The nanny starts workers with OMP_NUM_THREADS=1, so torch's 2 threads come from the setting.
    rows = run_on(ComputeConfig(cluster="local:2", threads_per_worker=2))
    assert values(rows) == values(sequential)
    pids = {row["pid"] for row in rows}
    assert len(pids) == 2 and os.getpid() not in pids
    assert len({row["worker"] for row in rows} - {None}) == 2
    assert {row["torch_threads"] for row in rows} == {2}
