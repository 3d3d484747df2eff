"""Gates, model card, lineage and scheduled retraining with the real services.

One `prefect server` serves every run here (the embedded server's start, ~20 s a run, is
tested in test_end_to_end), and one tiny pipeline run (SQLite MLflow) is shared by every test.
The scheduling test starts `distillery schedule` (which serves the retraining deployment); the
tracking test starts `mlflow server`. Everything is started and stopped here.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, TINY_CONFIG, run_cli
from tests.services import free_port, http_ok, start, stop, wait_until

pytestmark = pytest.mark.slow

MODEL = "distillery-tiny-student"
CRON = "0 3 * * 1"
# The tiny teacher is random and near chance: its retention and its margin over the majority
# class say nothing, so only the wiring of the gates is under test here (tests/test_gates.py and
# test_registry.py test the logic).
LENIENT = ["promotion.min_retention=0", "promotion.min_margin_over_baseline=-1"]
CARD_FILES = {
    "model_card.md",
    "gates.json",
    "training_curves.png",
    "confusion_matrix.png",
    "accuracy_vs_latency.png",
}
BIN = Path(sys.executable).parent


def clean_env(**extra):
    """This process's environment without Prefect or MLflow settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | extra


def distillery(*args, env=None, timeout=600):
    result = run_cli(*args, env=env or clean_env(), timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def last_json_line(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = clean_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    log = home / "server.log"
    server = start(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port], env, log
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), 90, "prefect server", server, log)
        yield url
    finally:
        stop(server)


@pytest.fixture(scope="module")
def tiny_run(prefect_api, tmp_path_factory):
    """One gated pipeline run; the first model of a fresh registry, so it becomes champion."""
    workdir = tmp_path_factory.mktemp("promotion")
    env = clean_env(PREFECT_API_URL=prefect_api)
    result = distillery("run", TINY_CONFIG, f"workdir={workdir}", *LENIENT, env=env)
    summary = json.loads((workdir / "summary.json").read_text())
    return workdir, summary, result.stdout


def sqlite_client(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_gated_run_promotes_the_first_model_and_reports_its_gates(tiny_run):
    workdir, summary, _ = tiny_run
    assert summary["alias"] == "champion" and summary["promoted"] is True
    gates = {gate["name"]: gate for gate in summary["gates"]}
    assert set(gates) == {
        "retention",
        "accuracy_over_baseline",
        "latency_ms",
        "accuracy_vs_champion",
    }
    baseline = gates["accuracy_over_baseline"]
    assert 0 < baseline["threshold"] + 1 <= 1  # the measured majority-class accuracy, margin -1
    assert all(gate["passed"] for gate in gates.values())
    assert 0 < gates["latency_ms"]["value"] == summary["int8_latency_ms"] < 20

    client = sqlite_client(workdir)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == summary["model_version"]
    assert set(client.get_registered_model(MODEL).aliases) == {"champion"}  # not challenger
    assert version.tags["gate.latency_ms"] == "passed"
    assert version.tags["promotion.decision"] == "promoted"


def test_every_version_gets_a_model_card(tiny_run):
    workdir, summary, _ = tiny_run
    client = sqlite_client(workdir)
    version = client.get_model_version(MODEL, summary["model_version"])
    card = version.description
    assert card.startswith(f"# {MODEL} v{summary['model_version']}")
    for text in (
        summary["data_fingerprint"],  # data
        "| train | 280 |",  # split sizes
        "| split | negative | positive |",  # label balance
        "Data quality: texts in two splits",  # duplicates across splits, what was dropped
        "| teacher | `minilm` (bert) |",  # both models: source and family
        "| student | `teacher` (bert, init teacher_layers) |",
        "student ONNX INT8",
        "| latency_ms |",  # gates
        "accuracy_vs_latency.png",  # plots
        "`bundle/tokenizer.json`",  # the trimmed vocabulary's tokenizer goes with the graph
        "to the shipped",  # what trimming and INT8 cost, each and together
        "together",
        "the gates decide on validation",  # and on which split: test stays held out
        "Held-out test accuracy",
        "## Evidence (test split, shipped model, 95% bootstrap intervals)",  # intervals
        "| macro F1 |",
        "| class | precision | recall | support |",
        "No champion to compare with",  # the first model of the registry
        "validation texts the compression gates decided on",
        "Teacher gap (validation): the teacher is **not** significantly stronger",  # random
    ):
        assert text in card, text
    files = {
        Path(item.path).name
        for item in client.list_artifacts(summary["mlflow_run_id"], "model_card")
    }
    assert files == CARD_FILES
    local = Path(client.download_artifacts(summary["mlflow_run_id"], "model_card/gates.json"))
    assert [gate["name"] for gate in json.loads(local.read_text())][0] == "retention"


def test_lineage_of_the_champion(tiny_run):
    workdir, summary, _ = tiny_run
    result = distillery("lineage", f"models:/{MODEL}@champion", "--workdir", workdir)
    info = json.loads(result.stdout)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert info["run_id"] == summary["mlflow_run_id"]
    assert info["version"] == summary["model_version"]
    assert info["config"]["name"] == "tiny"
    assert info["config"]["promotion"]["min_retention"] == 0
    assert info["data_fingerprint"] == summary["data_fingerprint"]
    assert info["teacher_sha256"] == summary["teacher_sha256"]
    assert info["teacher"] == {"source": "minilm", "family": "bert"}
    assert info["student"]["source"] == "teacher" and info["student"]["init"] == "teacher_layers"
    assert info["student"]["family"] == "bert" and len(info["student"]["sha256"]) == 64
    assert info["git_commit"] == (commit or "unknown")
    assert info["bundle_uri"].endswith(f"{summary['mlflow_run_id']}/artifacts/bundle")


def test_an_unchanged_rerun_reuses_the_registered_version(tiny_run, prefect_api):
    workdir, summary, _ = tiny_run
    client = sqlite_client(workdir)
    aliases_before = dict(client.get_registered_model(MODEL).aliases)
    env = clean_env(PREFECT_API_URL=prefect_api)
    distillery("run", TINY_CONFIG, f"workdir={workdir}", *LENIENT, env=env)
    rerun = json.loads((workdir / "summary.json").read_text())
    assert rerun["model_version"] == summary["model_version"]
    assert rerun["mlflow_run_id"] != summary["mlflow_run_id"]
    assert rerun["alias"] == "champion" and rerun["promoted"] is False
    # Gated against itself as champion, paired on the same texts: not one text differs.
    assert summary["vs_champion"] is None
    same = rerun["vs_champion"]
    assert same["only_candidate_right"] == same["only_reference_right"] == 0
    assert same["p_worse"] == same["p_better"] == 1.0
    assert dict(client.get_registered_model(MODEL).aliases) == aliases_before
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert [str(v.version) for v in versions] == [summary["model_version"]]
    tags = client.get_run(rerun["mlflow_run_id"]).data.tags
    assert tags["registry.reused_version"] == summary["model_version"]
    assert tags["promotion.decision"] == "reused"
    record = json.loads((workdir / "registry.json").read_text())["registries"]
    assert record[0]["highest_version"] == int(summary["model_version"])


def test_scheduled_retraining_skips_unchanged_data(tiny_run, prefect_api, tmp_path, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workdir, summary, _ = tiny_run
    env = clean_env(PREFECT_API_URL=prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    overrides = [f"workdir={workdir}", *LENIENT]
    serve = start(
        [sys.executable, "-m", "flows.cli", "schedule", TINY_CONFIG, "--cron", CRON]
        + ["--name", "weekly", *overrides],
        env,
        log,
    )
    try:
        with (
            temporary_settings({PREFECT_API_URL: prefect_api}),
            get_client(sync_client=True) as client,
        ):
            deployment = wait_until(
                lambda: client.read_deployment_by_name("distillery-retrain/weekly"),
                180,
                "served deployment",
                serve,
                log,
            )
            assert [s.schedule.cron for s in deployment.schedules] == [CRON]
            assert all(s.active for s in deployment.schedules)
            assert deployment.parameters == {
                "config_path": str(TINY_CONFIG),
                "overrides": overrides,
            }

            started = time.perf_counter()
            flow_run = run_deployment(
                "distillery-retrain/weekly", timeout=300, poll_interval=1, as_subflow=False
            )
            seconds = time.perf_counter() - started
            assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-3000:]}"

            only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
            messages = wait_until(
                lambda: [
                    entry.message
                    for entry in client.read_logs(only_this_run)
                    if "nothing to do" in entry.message
                ],
                30,
                "the run's log",
            )
    finally:
        stop(serve)
    assert summary["data_fingerprint"] in messages[0]
    versions = sqlite_client(workdir).search_model_versions(f"name='{MODEL}'")
    assert [str(v.version) for v in versions] == [summary["model_version"]]  # nothing retrained
    with capsys.disabled():
        print(f"\nunchanged-data scheduled run: {seconds:.1f} s from trigger to completed state")


def test_a_pipeline_against_an_mlflow_server(tiny_run, prefect_api, tmp_path):
    workdir, summary, _ = tiny_run
    port = free_port()
    log = tmp_path / "mlflow.log"
    artifacts = tmp_path / "server-artifacts"
    server = start(
        [BIN / "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db"]
        + ["--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", port]
        + ["--workers", "1"],
        clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        log,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{uri}/health"), 120, "mlflow server", server, log)
        # A registry without a champion: the retraining flow must run the pipeline and gates
        # (every stage is reused from the tiny run's workdir).
        result = distillery(
            "retrain",
            TINY_CONFIG,
            f"workdir={workdir}",
            *LENIENT,
            env=clean_env(MLFLOW_TRACKING_URI=uri, PREFECT_API_URL=prefect_api),
        )
        outcome = last_json_line(result.stdout)
        assert outcome["action"] == "retrained"
        assert outcome["model_version"] == "1" and outcome["alias"] == "champion"

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # REST
        model = client.get_registered_model(MODEL)
        assert {alias: str(v) for alias, v in model.aliases.items()} == {"champion": "1"}
        version = client.get_model_version(MODEL, "1")
        assert version.tags["data_fingerprint"] == summary["data_fingerprint"]
        assert version.tags["gate.accuracy_vs_champion"] == "passed"
        assert version.description.startswith(f"# {MODEL} v1")
        run = client.get_run(version.run_id)
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server
        card = {
            Path(item.path).name for item in client.list_artifacts(run.info.run_id, "model_card")
        }
        assert card == CARD_FILES
        assert list(artifacts.rglob("model_card.md")), "the server's artifact store holds the card"
        assert not (workdir / "mlartifacts" / run.info.run_id).exists()
    finally:
        stop(server)
