"""The model registry side of promotion: registration, MLflow's validation, aliases, tags.

Aliases: `champion` is the model to serve, `previous` the champion it replaced (what `rollback`
goes back to, never the champion itself), and `challenger` the newest version that was not
promoted (none when every version was). Every version the gates look at carries their results as
tags, so a reviewer sees in the registry why it was or was not promoted.

Registration is idempotent: a model whose ONNX sha256 and data fingerprint match a registered
version reuses that version. Registration and promotion of one registered model are serialised
by a file lock, and a workdir remembers the highest version it registered, so a registry that was
reset (its store deleted) is noticed instead of silently restarting at v1.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from deploy.onnx_eval import onnx_logits, open_session
from deploy.runtime import TOKENIZER as BUNDLE_TOKENIZER
from distill.files import file_sha256, write_json_atomic
from distill.gates import Gate, GateResult, Metric, all_passed, failure_summary, score
from tasks.recovery import NOT_JUDGED
from tasks.tracking import MlflowTracker, Registration, comparison_tags, mlflow_client

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
ONNX_FILE = "model.onnx"  # the file mlflow.onnx.save_model writes
CONFIG_ARTIFACT = "config/config.resolved.yaml"
BUNDLE_ARTIFACT = "bundle"
FINISHED_BADLY = {"FAILED", "KILLED"}
ONNX_SHA256, DATA_FINGERPRINT = "onnx_sha256", "data_fingerprint"  # version tags
REGISTRY_RECORD = "registry.json"  # in the workdir: the highest version registered through it
LOCK_TIMEOUT_S = 1800.0  # a promotion measures latency and scores the champion: minutes at most

log = logging.getLogger(__name__)
# validate_evaluation_results logs two INFO lines per gate; the gate results say more.
logging.getLogger("mlflow.models.evaluation.validation").setLevel(logging.WARNING)


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class ChampionScore:
    version: str
    score: float | None  # in the gates' metric; None: the champion cannot be scored on this data
    accuracy: float | None  # for the model card, whatever the metric
    path: Path  # its downloaded ONNX file, valid while the caller's folder lives
    split: Mapping[str, Sequence]  # the test split as the champion's own tokenizer encodes it
    # Its predicted label per test text (None when it cannot be scored on this data), for the
    # paired comparison with the challenger, and the data fingerprint it was trained on.
    predicted: np.ndarray | None = None
    data_fingerprint: str | None = None


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    promoted: bool
    alias: str  # what this version is now: champion, challenger, or "" (neither)
    replaced: str | None  # the champion it replaced, now `previous`
    reason: str
    judged: bool = True  # False: a reused version, judged by an earlier run


def mlflow_check(gate: Gate) -> str | None:
    """Judge one gate with `mlflow.validate_evaluation_results`; its message is the reason."""
    candidate = EvaluationResult(metrics={gate.name: float(gate.value)}, artifacts={})
    baseline = None
    if gate.kind == "absolute":
        threshold = MetricThreshold(
            threshold=float(gate.threshold), greater_is_better=gate.greater_is_better
        )
    elif gate.min_improvement > 0:
        threshold = MetricThreshold(
            min_absolute_change=float(gate.min_improvement),
            greater_is_better=gate.greater_is_better,
        )
        baseline = EvaluationResult(metrics={gate.name: float(gate.baseline)}, artifacts={})
    else:  # MetricThreshold wants a positive change: "not worse" (or a negative margin, in
        # smoke tests) is a plain threshold at baseline + margin
        threshold = MetricThreshold(
            threshold=float(gate.bound), greater_is_better=gate.greater_is_better
        )
    try:
        mlflow.validate_evaluation_results({gate.name: threshold}, candidate, baseline)
    except ModelValidationFailedException as err:
        return err.message.strip()
    return None


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise RegistryError(
            f"not a registered model URI: {uri!r} (use models:/NAME@ALIAS or models:/NAME/VERSION)"
        )
    return match["name"], match["alias"], match["version"]


def resolve_model_uri(client: MlflowClient, uri: str) -> tuple[str, str]:
    """The one `models:/` resolver: `models:/NAME@ALIAS` or `models:/NAME/VERSION` ->
    (name, version), the version checked to exist."""
    name, alias, version = parse_model_uri(uri)
    if alias is not None:
        version = aliases(client, name).get(alias)
        if version is None:
            raise RegistryError(f"{name} has no version with alias '{alias}'")
    try:
        client.get_model_version(name, str(version))
    except MlflowException as err:
        raise RegistryError(f"{uri}: {err.message}") from None
    return name, str(version)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version of a registered model; empty when the model does not exist yet."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def versions(client: MlflowClient, name: str) -> list[Any]:
    """Every version of a registered model (with tags; MLflow leaves their aliases empty)."""
    escaped = name.replace("'", "\\'")
    return list(client.search_model_versions(f"name='{escaped}'"))


def highest_version(client: MlflowClient, name: str) -> int:
    return max((int(version.version) for version in versions(client, name)), default=0)


# --- serialising registry writes ------------------------------------------------------------


def lock_path(tracking_uri: str, name: str) -> Path:
    """One lock file per (tracking store, registered model), shared by every process here."""
    key = hashlib.sha256(f"{tracking_uri}\0{name}".encode()).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / "distillery-registry-locks"
    folder.mkdir(exist_ok=True)
    return folder / f"{key}.lock"


@contextmanager
def registry_lock(tracking_uri: str, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold while reading and moving a model's versions and aliases: two promotions at once
    would both see the same champion and both move it."""
    path = lock_path(tracking_uri, name)
    try:
        with FileLock(str(path), timeout=timeout):
            yield
    except Timeout:
        raise RegistryError(
            f"another registration or promotion of {name} at {tracking_uri} has held {path} "
            f"for {timeout:.0f} s; try again when it has finished"
        ) from None


# --- registry reset detection ---------------------------------------------------------------


def _read_record(record: Path) -> list[dict[str, Any]]:
    if not record.is_file():
        return []
    try:
        entries = json.loads(record.read_text())["registries"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RegistryError(
            f"{record} cannot be read ({err}); delete it to start the registry record over"
        ) from None
    return [entry for entry in entries if isinstance(entry, dict)]


def recorded_version(record: Path, tracking_uri: str, name: str) -> int:
    """The highest version of `name` at `tracking_uri` that this workdir registered (0: none)."""
    for entry in _read_record(record):
        if entry.get("tracking_uri") == tracking_uri and entry.get("registered_model") == name:
            return int(entry.get("highest_version", 0))
    return 0


def check_registry_record(client: MlflowClient, record: Path, tracking_uri: str, name: str) -> None:
    """Refuse a registry that has fewer versions than this workdir registered into it: its store
    was deleted or replaced, and new versions would reuse numbers that old bundles name."""
    remembered = recorded_version(record, tracking_uri, name)
    if remembered == 0:
        return
    now = highest_version(client, name)
    if now < remembered:
        raise RegistryError(
            f"the registry at {tracking_uri} has {name} up to v{now}, but {record} records that "
            f"v{remembered} was registered through this workdir: the registry was reset or "
            f"replaced. Restore it, point MLFLOW_TRACKING_URI at the right store, or delete "
            f"{record} to start the version numbers over"
        )


def remember_version(record: Path, tracking_uri: str, name: str, version: int) -> None:
    entries = [
        entry
        for entry in _read_record(record)
        if (entry.get("tracking_uri"), entry.get("registered_model")) != (tracking_uri, name)
    ]
    highest = max(version, recorded_version(record, tracking_uri, name))
    entries.append(
        {"tracking_uri": tracking_uri, "registered_model": name, "highest_version": highest}
    )
    write_json_atomic(record, {"registries": entries})


# --- registration ---------------------------------------------------------------------------


def find_identical(
    client: MlflowClient, name: str, onnx_sha256: str, fingerprint: str
) -> str | None:
    """The oldest version of the same graph trained on the same data, if any."""
    same = [
        int(version.version)
        for version in versions(client, name)
        if version.tags.get(ONNX_SHA256) == onnx_sha256
        and version.tags.get(DATA_FINGERPRINT) == fingerprint
    ]
    return str(min(same)) if same else None


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def refresh_challenger(client: MlflowClient, name: str) -> str | None:
    """Point `challenger` at the newest version that was not promoted; remove it when every
    version was. Returns the challenger's version."""
    waiting = [
        int(version.version)
        for version in versions(client, name)
        if version.tags.get("promotion.decision") != "promoted"
    ]
    current = aliases(client, name).get(CHALLENGER)
    newest = str(max(waiting)) if waiting else None
    if newest is not None and newest != current:
        client.set_registered_model_alias(name, CHALLENGER, newest)
    elif newest is None and current is not None:
        client.delete_registered_model_alias(name, CHALLENGER)
    return newest


def register_model(
    tracker: MlflowTracker,
    onnx_path: Path,
    name: str,
    num_labels: int,
    version_tags: Mapping[str, Any],
) -> Registration:
    """Register the run's ONNX model as a new version of `name`, unless a version with the same
    graph (sha256) and data fingerprint exists: then that version is reused, no alias moves,
    and both the run and the returned Registration say so. A new version becomes `challenger`.
    """
    client, uri = tracker.client, tracker.tracking_uri
    digest = file_sha256(onnx_path)
    fingerprint = str(version_tags.get(DATA_FINGERPRINT, ""))
    with registry_lock(uri, name):
        if tracker.registry_record is not None:
            check_registry_record(client, tracker.registry_record, uri, name)
        same = find_identical(client, name, digest, fingerprint) if fingerprint else None
        if same is not None:
            log.info("%s v%s is this very model (same ONNX sha256 and data): reused", name, same)
            tracker.set_tags({"registry.reused_version": same})
            return Registration(name, same, f"models:/{name}/{same}", reused=True)
        source = tracker.log_onnx_model(onnx_path, num_labels)
        _ensure_registered_model(client, name)
        created = client.create_model_version(name, source, run_id=tracker.run_id)
        version = str(created.version)
        tags = {**version_tags, ONNX_SHA256: digest}
        set_version_tags(client, name, version, tags)
        refresh_challenger(client, name)
        if tracker.registry_record is not None:
            remember_version(tracker.registry_record, uri, name, int(version))
    return Registration(name, version, f"models:/{name}/{version}")


# --- scoring the champion -------------------------------------------------------------------


def download_onnx(tracking_uri: str, name: str, version: str, folder: Path) -> Path:
    # The version's own source: a `models:/` URI would resolve through the process-wide
    # registry URI, which this module never sets.
    source = mlflow_client(tracking_uri).get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=str(folder), tracking_uri=tracking_uri
    )
    return Path(local) / ONNX_FILE


def onnx_predictions(path: Path, split: Mapping[str, Sequence]) -> tuple[np.ndarray, int]:
    """Predicted labels on the split, and the model's number of outputs (classes)."""
    logits = onnx_logits(open_session(path), split["input_ids"], split["attention_mask"])
    return logits.argmax(-1), int(logits.shape[-1])


def score_champion(
    tracking_uri: str,
    name: str,
    test_split: Mapping[str, Sequence],
    num_labels: int,
    folder: Path,
    max_length: int,
    metric: Metric = "accuracy",
) -> ChampionScore | None:
    """The current champion's score (in `metric`) on this run's test split (data may have
    changed since it was trained), or None when there is no champion.

    The texts are encoded with the tokenizer from the champion's own edge bundle: a champion
    with a trimmed vocabulary reads other ids than this run's tokenizer writes."""
    client = mlflow_client(tracking_uri)
    version = aliases(client, name).get(CHAMPION)
    if version is None:
        return None
    fingerprint = client.get_model_version(name, version).tags.get(DATA_FINGERPRINT)
    path = download_onnx(tracking_uri, name, version, folder)
    tokenizer = download_bundle_tokenizer(tracking_uri, name, version, folder / "bundle")
    from deploy.vocab_trim import tokenized_split  # imports torch: not for promote/lineage

    split = test_split if tokenizer is None else tokenized_split(tokenizer, test_split, max_length)
    predicted, outputs = onnx_predictions(path, split)
    if outputs != num_labels:  # trained for other labels: its score here would mean nothing
        return ChampionScore(version, None, None, path, split, None, fingerprint)
    labels = split["label"]
    return ChampionScore(
        version,
        score(metric, labels, predicted, num_labels),
        score("accuracy", labels, predicted, num_labels),
        path,
        split,
        predicted,
        fingerprint,
    )


def download_bundle_tokenizer(
    tracking_uri: str, name: str, version: str, folder: Path
) -> Path | None:
    """The tokenizer of the version's edge bundle, or None for a run that logged no bundle."""
    client = mlflow_client(tracking_uri)
    run_id = client.get_model_version(name, version).run_id
    listed = client.list_artifacts(run_id, BUNDLE_ARTIFACT)
    wanted = f"{BUNDLE_ARTIFACT}/{BUNDLE_TOKENIZER}"
    if wanted not in {item.path for item in listed}:
        return None
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=wanted, dst_path=str(folder), tracking_uri=tracking_uri
    )
    return Path(local)


def gate_tags(results: Iterable[GateResult]) -> dict[str, str]:
    tags = {}
    for result in results:
        prefix = f"gate.{result.name}"
        tags[prefix] = "passed" if result.passed else "failed"
        tags[f"{prefix}.value"] = "" if result.value is None else f"{result.value:.6g}"
        tags[f"{prefix}.threshold"] = "" if result.threshold is None else f"{result.threshold:.6g}"
        tags[f"{prefix}.reason"] = result.reason
        if result.comparison is not None:
            tags |= comparison_tags(f"{prefix}.", result.comparison)
    return tags


def set_version_tags(
    client: MlflowClient, name: str, version: str, tags: Mapping[str, Any]
) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def move_champion(client: MlflowClient, name: str, version: str) -> str | None:
    """Point `champion` at `version`; the version it replaces becomes `previous`.

    MLflow stores one row per (model, alias) and setting an alias rewrites that row in a single
    statement, so `champion` always names exactly one version and is never deleted here. The
    order matters if we are stopped between the calls: moving `previous` first leaves the old
    champion as both champion and previous until `champion` moves, one statement later;
    moving `champion` first would lose the version to roll back to. `previous` never ends up
    naming the new champion.
    """
    current = aliases(client, name)
    old = current.get(CHAMPION)
    if old == version:
        return None
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
    elif current.get(PREVIOUS) == version:
        client.delete_registered_model_alias(name, PREVIOUS)
    client.set_registered_model_alias(name, CHAMPION, version)
    return old


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def alias_of(client: MlflowClient, name: str, version: str) -> str:
    now = aliases(client, name)
    return next((alias for alias in (CHAMPION, CHALLENGER) if now.get(alias) == version), "")


def judge_registration(
    client: MlflowClient,
    registration: Registration,
    results: Sequence[GateResult],
    description: str,
    run_id: str,
) -> Outcome:
    """The gates' verdict on what run `run_id` registered (or found registered).

    A new version is judged. A reused one (the very same model registered before) keeps its
    tags and aliases, unless no run ever judged it: its registering run was killed between
    registration and the gates. Then this run, which measured the gates, judges it."""
    name, version = registration.name, registration.version
    if not registration.reused:
        return apply_gates(client, name, version, results, description)
    decision = client.get_model_version(name, version).tags.get("promotion.decision")
    if decision in (None, NOT_JUDGED):
        return apply_gates(client, name, version, results, description, judged_by=run_id)
    reason = (
        f"unchanged model: v{version} has the same ONNX sha256 and data fingerprint and was "
        f"{decision} before; reused, no alias moved"
    )
    return Outcome(name, version, False, alias_of(client, name, version), None, reason, False)


def apply_gates(
    client: MlflowClient,
    name: str,
    version: str,
    results: Sequence[GateResult],
    description: str,
    judged_by: str | None = None,
) -> Outcome:
    """Record the gates on the version and promote it when every gate passed.

    Tags are written before any alias moves, so a champion always carries its gate results.
    A version whose run failed or was killed is never promoted by the gates; `judged_by` names
    the run that measured the gates when that is not the run that registered the version (it
    then stands for it). The caller holds `registry_lock` from scoring the champion to here.
    """
    run_id = judged_by or client.get_model_version(name, version).run_id
    run_status = client.get_run(run_id).info.status if run_id else "UNKNOWN"
    passed = all_passed(results) and run_status not in FINISHED_BADLY
    reason = failure_summary(results)
    if all_passed(results) and not passed:
        reason = f"run {run_id} ended {run_status}"
    client.update_model_version(name, version, description=description)
    champion = aliases(client, name).get(CHAMPION)
    tags = gate_tags(results) | {
        "promotion.decision": "promoted" if passed else "rejected",
        "promotion.reason": reason,
        "promotion.at": _now(),
        "promotion.by": "gates",
        "promotion.override": "false",
    }
    if judged_by is not None:
        tags["promotion.judged_by_run"] = judged_by
    if passed and champion is not None and champion != version:
        tags["promotion.replaces"] = champion
    set_version_tags(client, name, version, tags)
    replaced = move_champion(client, name, version) if passed else None
    refresh_challenger(client, name)
    return Outcome(name, version, passed, alias_of(client, name, version), replaced, reason)


def override_promote(
    client: MlflowClient, name: str, version: str, by: str | None = None, reason: str = ""
) -> Outcome:
    """A reviewer's manual promotion, whatever the gates said; recorded as such on the version."""
    client.get_model_version(name, version)  # fails clearly when there is no such version
    champion = aliases(client, name).get(CHAMPION)
    if champion == version:
        raise RegistryError(f"{name} v{version} is already the champion")
    tags = {
        "promotion.decision": "promoted",
        "promotion.override": "true",
        "promotion.by": by or getpass.getuser(),
        "promotion.at": _now(),
        "promotion.reason": reason or "manual override",
    }
    if champion is not None:
        tags["promotion.replaces"] = champion
    set_version_tags(client, name, version, tags)
    replaced = move_champion(client, name, version)
    refresh_challenger(client, name)
    return Outcome(name, version, True, CHAMPION, replaced, tags["promotion.reason"])


def rollback(client: MlflowClient, name: str, by: str | None = None) -> Outcome:
    """Make `previous` the champion again; `previous` then steps one further back.

    `champion` moves in one statement, before `previous` is re-pointed: stopped in between, both
    name the restored version, and running rollback again only finishes re-pointing `previous`.
    """
    current = aliases(client, name)
    restored = current.get(PREVIOUS)
    if restored is None:
        raise RegistryError(f"{name} has no '{PREVIOUS}' version to roll back to")
    demoted = current.get(CHAMPION)
    if demoted != restored:
        if demoted is not None:
            stamp = {"rollback.by": by or getpass.getuser(), "rollback.at": _now()}
            set_version_tags(client, name, demoted, stamp)
        client.set_registered_model_alias(name, CHAMPION, restored)
    before = client.get_model_version(name, restored).tags.get("promotion.replaces")
    if before and before != restored:
        client.set_registered_model_alias(name, PREVIOUS, before)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    return Outcome(name, restored, True, CHAMPION, demoted, f"rolled back from v{demoted}")


def lineage(client: MlflowClient, uri: str) -> dict[str, Any]:
    """Where a registered version came from: run, config, data, both models, code, bundle."""
    name, version = resolve_model_uri(client, uri)
    model_version = client.get_model_version(name, version)
    run = client.get_run(model_version.run_id)
    with tempfile.TemporaryDirectory() as folder:
        try:
            config_path = client.download_artifacts(run.info.run_id, CONFIG_ARTIFACT, folder)
            config = yaml.safe_load(Path(config_path).read_text())
        except (MlflowException, OSError):
            config = None
    bundle = [item.path for item in client.list_artifacts(run.info.run_id, BUNDLE_ARTIFACT)]
    tags = {**run.data.tags, **model_version.tags}
    return {
        "model_uri": uri,
        "name": name,
        "version": version,
        "aliases": sorted(model_version.aliases),
        "run_id": run.info.run_id,
        "run_status": run.info.status,
        "config": config,
        "data_fingerprint": tags.get("data_fingerprint"),
        "teacher_sha256": tags.get("teacher_sha256"),
        # Both models (versions registered before these tags existed show None).
        "teacher": {key: tags.get(f"teacher_{key}") for key in ("source", "family")},
        "student": {
            key: tags.get(f"student_{key}") for key in ("source", "family", "init", "sha256")
        },
        "git_commit": run.data.tags.get("git_commit"),
        "bundle_uri": f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT}",
        "bundle_logged": bool(bundle),
    }


def champion_fingerprint(tracking_uri: str, name: str) -> tuple[str, str | None] | None:
    """(version, data_fingerprint tag) of the current champion, or None without one."""
    client = mlflow_client(tracking_uri)
    version = aliases(client, name).get(CHAMPION)
    if version is None:
        return None
    return version, client.get_model_version(name, version).tags.get("data_fingerprint")
