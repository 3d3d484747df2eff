"""Does prefect-dask pass Dask resource annotations to the scheduler? (docs/scaling.md, section 4)

    .venv/bin/python -m bench.dask_resources

Starts a real `dask scheduler`, one worker with `--resources GPU=1` and one without, then runs a
Prefect flow on `DaskTaskRunner(address=...)` that submits tasks inside
`dask.annotate(resources={"GPU": 1})` and plain tasks. Prints where each kind ran; exits 1 when an
annotated task ran on the worker without the resource.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import free_port

BIN = Path(sys.executable).parent


def main() -> int:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    import dask
    from distributed import Client, get_worker
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    common = ["--nthreads", "1", "--no-dashboard"]
    scheduler = [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", port]
    procs = [subprocess.Popen([*scheduler, "--no-dashboard"])]
    try:
        time.sleep(3)
        for resources in (["--resources", "GPU=1"], []):
            procs.append(subprocess.Popen([BIN / "dask", "worker", address, *common, *resources]))
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            workers = client.scheduler_info()["workers"].items()
            gpu_workers = {addr for addr, info in workers if info.get("resources", {}).get("GPU")}

        @task
        def where(_: int) -> str:
            time.sleep(0.5)
            return get_worker().address

        @flow(task_runner=DaskTaskRunner(address=address))
        def probe() -> dict[str, list[str]]:
            with dask.annotate(resources={"GPU": 1}):
                annotated = [where.submit(i) for i in range(6)]
            plain = [where.submit(i) for i in range(6)]
            return {
                "annotated": [a.result() for a in annotated],
                "plain": [p.result() for p in plain],
            }

        ran = probe()
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    honoured = set(ran["annotated"]) <= gpu_workers
    result = {
        "gpu_workers": sorted(gpu_workers),
        "annotated_ran_on": sorted(set(ran["annotated"])),
        "plain_ran_on": sorted(set(ran["plain"])),
        "annotations_honoured": honoured,
    }
    print(json.dumps(result, indent=2))
    return 0 if honoured else 1


if __name__ == "__main__":
    raise SystemExit(main())
