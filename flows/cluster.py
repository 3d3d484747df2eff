"""Where a flow's submitted tasks run: Prefect's thread pool, or a Dask cluster via prefect-dask.

`compute.cluster` picks it: null keeps everything in this process, "local:N" starts N worker
processes for the run, "tcp://host:port" attaches to a running `dask scheduler`. Only tasks a
flow `.submit()`s or `.map()`s run on the cluster; plain task calls stay in the flow's process.
Workers read and write the workdir themselves, so they must share its filesystem.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import distributed
import psutil
from distributed.diagnostics.plugin import WorkerPlugin
from prefect import Flow
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from distill.config import ComputeConfig

F = TypeVar("F", bound=Flow)

TORCH_THREADS_PLUGIN = "distillery-torch-threads"
CONNECT_TIMEOUT_S = 30


class TorchThreads(WorkerPlugin):
    """Gives torch a fixed number of threads in each Dask worker process it is set up in.

    Without it a worker's torch uses every core (or one, under the nanny's OMP_NUM_THREADS=1),
    and workers sharing a machine slow each other down.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: distributed.Worker) -> None:
        import torch  # here, so that building the plugin does not import torch

        # torch keeps the count process-wide; each task thread picks it up on its first op.
        torch.set_num_threads(self.threads)


def task_runner_for(compute: ComputeConfig) -> TaskRunner:
    """The Prefect task runner `compute` asks for (nothing is started until a flow enters it)."""
    threads = compute.threads_per_worker
    workers = compute.local_workers
    if workers is not None:
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": threads,
                "processes": True,
                "dashboard_address": None,
                # Worker keyword: set up in each worker process before it takes tasks.
                "plugins": (TorchThreads(threads),),
            }
        )
    if compute.scheduler_address is not None:
        return DaskTaskRunner(address=compute.scheduler_address)
    return ThreadPoolTaskRunner()


def host_of(url: str) -> str:
    """The host of a URL or Dask address ("tcp://host:port"), without IPv6 brackets."""
    return urlsplit(url).hostname or ""


def is_loopback(url: str) -> bool:
    """Whether a URL or Dask address names this machine's loopback interface."""
    host = host_of(url)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def this_machines_hosts() -> set[str]:
    """Every address of this machine's interfaces, and its host name."""
    addresses = {
        address.address.split("%")[0]  # IPv6 link-local scope
        for interface in psutil.net_if_addrs().values()
        for address in interface
        if address.family in (socket.AF_INET, socket.AF_INET6)
    }
    return addresses | {socket.gethostname(), "localhost"}


def workers_cut_off(api_url: str | None, workers: Iterable[str], here: set[str]) -> list[str]:
    """The workers that cannot reach a Prefect API listening on loopback: those whose host is
    not one of `here` (this machine's addresses)."""
    if not api_url or not is_loopback(api_url):
        return []
    return sorted(w for w in workers if not is_loopback(w) and host_of(w) not in here)


class ClusterUnreachable(ConnectionError):
    """compute.cluster names a scheduler that cannot be used; the message says why."""


def check_listening(address: str, timeout: float) -> None:
    """Fail at once when nothing listens at a tcp:// address: Dask's client would retry a
    refused connection until its whole timeout is spent."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if not port.isdigit():
        return  # another protocol (tls://, ucx://): left to the client
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClusterUnreachable(
            f"compute.cluster: nothing answers at {address} ({err.strerror or err}); start "
            "`dask scheduler` there or fix the address"
        ) from None


def check_scheduler_listens(compute: ComputeConfig) -> None:
    if compute.scheduler_address is not None:
        check_listening(compute.scheduler_address, CONNECT_TIMEOUT_S)


def prepare_scheduler(address: str, threads: int, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Check that a scheduler answers at `address` and that its workers can reach Prefect's API,
    and have every worker (current and future) run torch with `threads` threads; registering
    again under the same name replaces it."""
    check_listening(address, timeout)
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except OSError as err:
        raise ClusterUnreachable(
            f"compute.cluster: no Dask scheduler answers at {address} within {timeout} s ({err})"
        ) from None
    with client:
        api_url = PREFECT_API_URL.value()
        workers = client.scheduler_info(n_workers=-1)["workers"]
        cut_off = workers_cut_off(api_url, workers, this_machines_hosts())
        if cut_off:
            raise ClusterUnreachable(
                f"compute.cluster: workers {', '.join(cut_off)} of {address} cannot reach "
                f"Prefect's API at {api_url} (loopback); set PREFECT_API_URL to a Prefect "
                "server they can reach"
            )
        client.register_plugin(TorchThreads(threads), name=TORCH_THREADS_PLUGIN)


def with_compute(flow: F, compute: ComputeConfig) -> F:
    """`flow` with the task runner `compute` asks for; an external scheduler is checked and its
    workers prepared first, so a wrong address fails before any work starts. Call it inside
    `prefect_api_for_workers(compute)`, which gives the workers an API to report to."""
    if compute.scheduler_address is not None:
        prepare_scheduler(compute.scheduler_address, compute.threads_per_worker)
    return flow.with_options(task_runner=task_runner_for(compute))


@contextmanager
def prefect_api_for_workers(compute: ComputeConfig) -> Iterator[str | None]:
    """Make Prefect's API reachable from Dask workers for the duration; yields its URL.

    Task runs on a worker report to the API by URL. Without PREFECT_API_URL every worker
    process would try to start an embedded server of its own (and fail), so start this
    process's embedded server now and hand its loopback URL to the tasks. Workers on other
    machines cannot reach loopback: point PREFECT_API_URL at a server they can reach.
    """
    configured = PREFECT_API_URL.value()
    if compute.cluster is None or configured:
        yield configured or None
        return
    server = SubprocessASGIServer()  # the one Prefect would start here anyway; stopped at exit
    server.start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server.api_url


def worker_identity() -> dict[str, Any]:
    """Where the calling code runs: process id, Dask worker address (None outside a worker) and
    torch's thread count there. For checking that work reached the cluster."""
    import torch

    try:
        address: str | None = distributed.get_worker().address
    except ValueError:  # not inside a Dask worker
        address = None
    return {"pid": os.getpid(), "worker": address, "torch_threads": torch.get_num_threads()}
