"""Environment defaults for an embedded, offline-friendly run; set before prefect is imported."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def configure_environment(workdir: Path) -> None:
    """Embedded Prefect with its state in the workdir unless the user points elsewhere."""
    workdir = Path(workdir).resolve()
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(workdir / ".prefect"))
    # The temporary server needs ~20 s to start on 2 cores; Prefect's default timeout is 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow retries an unreachable server 7 times with up to 120 s per request (minutes):
    # fail a run within seconds instead, with the server named (tasks.tracking).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    # Show the core's progress lines (epochs, loss terms, validation accuracy, ETA) in Prefect's
    # run log: Prefect attaches its handlers to these loggers but leaves their level to the root
    # logger (WARNING), so the `distill` logger is opened at INFO here.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "distill,deploy")
    logging.getLogger("distill").setLevel(logging.INFO)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


# transformers' per-load and per-save bars: the pipeline loads and saves models often and logs
# each stage itself; in a log that is not a terminal every bar update is a line of its own.
QUIET_BARS = ("Loading weights", "Writing model shards")


def quiet_weight_loading() -> None:
    """Hide transformers' "Loading weights" and "Writing model shards" bars; download bars for
    hub models stay."""
    from transformers.utils import logging as hf_logging

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in QUIET_BARS:
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(hook)


class WithoutTraceback(logging.Filter):
    """Drops the traceback from log records of the given exception types, keeping the message.

    A user's mistake found inside a flow (a full disk, a corrupt cache) ends the CLI with one
    `error:` line naming the problem; Prefect's engine would log its traceback first."""

    def __init__(self, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_tracebacks_of(errors: tuple[type[BaseException], ...]) -> None:
    """Install `WithoutTraceback(errors)` on every handler Prefect logs through."""
    quiet = WithoutTraceback(errors)
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(quiet)
