"""The MLflow tracking side of a run: one client factory, one tracker per pipeline run.

Everything goes through an explicit client and run id (MlflowClient), never the fluent
thread-local "active run" or the process-wide tracking URI, so Prefect's worker threads can log
safely and nothing ends a run behind the flow's back. The core sees only `MetricsLog` callables
made here. Registry policy (aliases, gates, idempotent registration) lives in `tasks.registry`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types import Schema, TensorSpec

from distill.paired import PairedComparison

if TYPE_CHECKING:  # at run time: `distillery gc/promote/lineage` need no torch (seconds)
    from distill.training import MetricsLog

MAX_PARAM_LENGTH = 6000
BATCH = 100


def sqlite_uri(workdir: Path) -> str:
    """The SQLite store inside a workdir (four slashes: an absolute path)."""
    return f"sqlite:///{Path(workdir).resolve()}/mlflow.db"


def default_tracking_uri(workdir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store inside the workdir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(workdir)


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """The one way to reach MLflow here: tracking and registry in the same store."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def onnx_signature(num_labels: int) -> ModelSignature:
    """Dynamic batch and sequence axes (infer_signature would freeze the example's length)."""
    int64 = np.dtype("int64")
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(int64, (-1, -1), "input_ids"),
                TensorSpec(int64, (-1, -1), "attention_mask"),
            ]
        ),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, num_labels), "logits")]),
    )


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer, even after MLflow's bounded HTTP retries."""


def _is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def _unreachable(tracking_uri: str, err: MlflowException) -> bool:
    # MLflow reports transport failures (refused, timed out, retries exhausted) this way.
    return _is_remote(tracking_uri) and "failed with exception" in err.message


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    model_uri: str
    reused: bool = False  # an identical model was registered before: its version, no new one


class MlflowTracker:
    """One pipeline run in MLflow: params, metrics by step, artifacts, the registered model."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_root: Path | None,
        registry_record: Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        # Where the highest version registered through this workdir is remembered (see
        # tasks.registry.check_registry_record); None: not remembered.
        self.registry_record = registry_record
        self.client = mlflow_client(tracking_uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
        except MlflowException as err:
            if not _unreachable(tracking_uri, err):
                raise
            raise TrackingUnavailable(
                f"MLflow tracking server {tracking_uri} is unreachable after "
                f"{MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries "
                f"(MLFLOW_HTTP_REQUEST_MAX_RETRIES): {err.message}"
            ) from None
        if found is None:
            # A local store keeps artifacts beside the run; a server keeps its own.
            local = artifact_root is not None and not _is_remote(tracking_uri)
            location = artifact_root.resolve().as_uri() if local else None
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location
            )
        else:
            self.experiment_id = found.experiment_id
        self.run_id = ""

    def start_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        return self.run_id

    def end_run(self, succeeded: bool = False, status: str | None = None) -> None:
        """End the run FINISHED or FAILED, or with `status` when given (e.g. "KILLED")."""
        if status is None:
            status = RunStatus.to_string(RunStatus.FINISHED if succeeded else RunStatus.FAILED)
        self.client.set_terminated(self.run_id, status=status)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        timestamp = _now_ms()
        items = [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + BATCH])

    def metrics_log(self, prefix: str) -> MetricsLog:
        def log(metrics: Mapping[str, float], step: int) -> None:
            self.log_metrics({f"{prefix}/{key}": value for key, value in metrics.items()}, step)

        return log

    def log_history(self, prefix: str, history: list[Mapping[str, float]]) -> None:
        """Replay a stage's recorded training curve (for stages reused from an earlier run)."""
        for entry in history:
            step = int(entry["step"])
            self.log_metrics(
                {f"{prefix}/{key}": value for key, value in entry.items() if key != "step"}, step
            )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_onnx_model(self, onnx_path: Path, num_labels: int, artifact_path: str = "model") -> str:
        """Log an ONNX graph as an MLflow model folder of this run; returns its artifact URI.

        Saved locally and uploaded with the client: `mlflow.onnx.log_model` needs the fluent
        active run, whose context manager would mark this run FINISHED on exit."""
        import tempfile

        import mlflow.onnx
        import onnx

        with tempfile.TemporaryDirectory(prefix="distillery-model-") as tmp:
            folder = Path(tmp) / artifact_path
            mlflow.onnx.save_model(
                onnx.load(str(onnx_path)),
                str(folder),
                signature=onnx_signature(num_labels),
                onnx_execution_providers=["CPUExecutionProvider"],
                save_as_external_data=False,
                # Stated, not inferred: inference imports the model in a subprocess (~4 s here)
                # to find what an ONNX graph always needs.
                pip_requirements=[
                    *mlflow.onnx.get_default_pip_requirements(),
                    f"numpy=={np.__version__}",
                ],
            )
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)
        run = self.client.get_run(self.run_id)
        return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def comparison_tags(prefix: str, comparison: PairedComparison) -> dict[str, str]:
    """A paired comparison as registry tags/params: counts, difference, interval, p-values."""
    low, high = comparison.interval
    return {
        f"{prefix}texts": str(comparison.n),
        f"{prefix}only_candidate_right": str(comparison.only_candidate_right),
        f"{prefix}only_reference_right": str(comparison.only_reference_right),
        f"{prefix}difference": f"{comparison.difference:.6g}",
        f"{prefix}interval": f"[{low:.6g}, {high:.6g}]",
        f"{prefix}p_worse": f"{comparison.p_worse:.6g}",
        f"{prefix}p_better": f"{comparison.p_better:.6g}",
    }
