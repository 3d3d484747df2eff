"""Scheduled retraining with unchanged data: time from trigger to result on a real Prefect server.

    .venv/bin/python -m bench.scheduled_retrain --workdir runs/movie_reviews

Needs a finished run in --workdir whose version is the registry's champion. Starts
`prefect server` (own PREFECT_HOME in a temporary folder) and `distillery schedule`, triggers the
deployment with `run_deployment`, and stops both. Reports server start-up, trigger-to-completed,
and their sum; writes bench/results/scheduled_retrain.json and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import report as bench

BIN = Path(sys.executable).parent


def healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/movie_reviews.yaml")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="prefect-bench-"))
    port = bench.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    started = time.perf_counter()
    server_command = [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port]
    server = bench.start(server_command, env, home / "server.log")
    serve = None
    try:
        bench.wait_for(lambda: healthy(f"{api}/health"), 120, "prefect server")
        server_s = time.perf_counter() - started
        serve_env = env | {"PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        command = [sys.executable, "-m", "flows.cli", "schedule", args.config, "--cron"]
        command += ["0 3 * * 1", "--name", "bench", f"workdir={args.workdir}"]
        serve = bench.start(command, serve_env, home / "serve.log")
        os.environ["PREFECT_API_URL"] = api
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        with get_client(sync_client=True) as client:
            bench.wait_for(
                lambda: client.read_deployment_by_name("distillery-retrain/bench"),
                180,
                "served deployment",
            )
        triggered = time.perf_counter()
        flow_run = run_deployment(
            "distillery-retrain/bench", timeout=600, poll_interval=1, as_subflow=False
        )
        run_s = time.perf_counter() - triggered
        if not flow_run.state.is_completed():
            raise RuntimeError(f"scheduled run ended {flow_run.state}")
    finally:
        if serve is not None:
            bench.stop(serve, timeout=30)
        bench.stop(server, timeout=30)
    result = {
        "prefect_server_startup_s": server_s,
        "trigger_to_completed_s": run_s,
        "total_s": server_s + run_s,
        "workdir": args.workdir,
    }
    print(json.dumps(result, indent=2))
    output = bench.RESULTS / "scheduled_retrain.json"
    bench.publish(output, result, "scheduled-retrain", lambda: render(result))


def render(result: dict[str, float]) -> str:
    server_s, run_s = result["prefect_server_startup_s"], result["trigger_to_completed_s"]
    return bench.section(
        "## Scheduled retraining, unchanged data",
        "A real `prefect server` and `distillery schedule` serving the retraining "
        "deployment; the run compares the data fingerprint with the champion's and "
        'ends with "nothing to do". Goal: under 60 s including Prefect start-up.',
        bench.markdown_table(
            ["step", "seconds"],
            [
                ["prefect server start-up (to healthy)", f"{server_s:.1f}"],
                ["trigger (`run_deployment`) to completed", f"{run_s:.1f}"],
                ["total", f"{server_s + run_s:.1f}"],
            ],
        ),
    )


if __name__ == "__main__":
    main()
