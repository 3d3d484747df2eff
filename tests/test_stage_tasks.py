"""Stage tasks under the real Prefect engine: a transient failure is retried, bad input is not,
and the flow's runner records each stage in a real (SQLite) MLflow run."""

import pytest

from distill.store import StageManifest, StoreFullError, run_stage


class CountManifest(StageManifest):
    attempts: int
    # The fields the logit cache's recording reads (recordings read their fields strictly).
    device: str | None = None
    precision: str | None = None
    labelling_runtime: str | None = None
    labelling_max_abs_logit_diff: float | None = None
    labelling_agreement: float | None = None
    labelling_mean_kl: float | None = None
    labelling_graph_key: str | None = None


@pytest.fixture
def prefect_engine(prefect_api):
    """The session's embedded Prefect server (conftest)."""
    return prefect_api


@pytest.fixture
def tracker(tmp_path):
    from tasks.tracking import MlflowTracker

    tracker = MlflowTracker(
        f"sqlite:///{tmp_path}/mlflow.db", "stage-task-tests", tmp_path / "artifacts"
    )
    tracker.start_run(run_name="stage-tasks", tags={})
    yield tracker
    tracker.end_run(True)


def failing_build(tmp_path, failures: int, error: Exception):
    """A stage build that raises `error` on its first `failures` attempts (counted on disk)."""
    counter = tmp_path / "attempts"

    def build(log):
        attempts = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempts))
        if attempts <= failures:
            raise error
        return run_stage(
            tmp_path / "store",
            "logit_cache",
            "key",
            lambda folder: CountManifest(attempts=attempts),
            CountManifest,
        )

    return build, counter


def test_a_transient_failure_is_retried(prefect_engine, tracker, tmp_path):
    from prefect import flow

    from tasks.stages import prefect_runner

    build, counter = failing_build(tmp_path, failures=1, error=OSError("disk hiccup"))

    @flow
    def one_stage():
        return prefect_runner(tracker)("logit_cache", build)

    artifact = one_stage()
    assert counter.read_text() == "2"
    assert artifact.manifest == CountManifest(attempts=2)
    run = tracker.client.get_run(tracker.run_id)
    assert run.data.tags["stage.logit_cache.key"] == "key"
    assert run.data.metrics["logit_cache/reused"] == 0.0


@pytest.mark.parametrize(
    "error",
    [ValueError("column 'text' empty"), StoreFullError("disk full")],
    ids=["bad input", "full disk"],
)
def test_bad_input_and_a_full_disk_are_not_retried(prefect_engine, tracker, tmp_path, error):
    from prefect import flow

    from tasks.stages import prefect_runner

    build, counter = failing_build(tmp_path, failures=5, error=error)

    @flow
    def one_stage():
        return prefect_runner(tracker)("logit_cache", build)

    with pytest.raises(type(error), match=str(error)):
        one_stage()
    assert counter.read_text() == "1"


def test_ctrl_c_in_a_stage_stops_the_run_instead_of_retrying_it(prefect_engine, tracker, tmp_path):
    from prefect import flow

    from tasks.stages import prefect_runner

    build, counter = failing_build(tmp_path, failures=5, error=KeyboardInterrupt())

    @flow
    def one_stage():
        return prefect_runner(tracker)("logit_cache", build)

    with pytest.raises(KeyboardInterrupt):
        one_stage()
    assert counter.read_text() == "1"


def test_manifests_and_mlflow_params_record_the_device_and_precision_used(tiny_stages, tracker):
    from tasks.stages import RECORDINGS, record_stage

    for stage in ("teacher", "cache", "student"):
        artifact = getattr(tiny_stages, stage)
        # The tiny config asks for `auto`: on this CPU-only machine that resolves to cpu / fp32.
        assert (artifact.manifest.device, artifact.manifest.precision) == ("cpu", "fp32")
        record_stage(tracker, artifact, RECORDINGS[artifact.stage])
    params = tracker.client.get_run(tracker.run_id).data.params
    for stage in ("teacher", "logit_cache", "student"):
        assert params[f"resolved.{stage}.device"] == "cpu"
        assert params[f"resolved.{stage}.precision"] == "fp32"


def test_the_compression_gates_evidence_is_tagged_on_the_run(tiny_stages, tracker):
    from tasks.stages import RECORDINGS, record_stage

    for stage in ("export", "quantize"):
        artifact = getattr(tiny_stages, stage)
        record_stage(tracker, artifact, RECORDINGS[artifact.stage])
    tags = tracker.client.get_run(tracker.run_id).data.tags
    trimming = tiny_stages.export.manifest.trimming_comparison
    assert tags["gate.trimming.texts"] == str(trimming.n)
    assert tags["gate.trimming.only_reference_right"] == str(trimming.only_reference_right)
    shipped = tiny_stages.quantize.manifest.validation_comparison
    assert float(tags["gate.int8.validation.p_worse"]) == pytest.approx(shipped.p_worse, rel=1e-5)
    assert tags["gate.int8.test.interval"].startswith("[")
