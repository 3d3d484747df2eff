"""The model registry side of promotion: MLflow's validation, the champion's score, aliases, tags.

Aliases: `challenger` is the latest registered candidate, `champion` the model to serve,
`previous` the champion it replaced (what `rollback` goes back to). Every version the gates look
at carries their results as tags, so a reviewer sees in the registry why it was or was not
promoted.
"""

from __future__ import annotations

import getpass
import logging
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from deploy.benchmark import onnx_accuracy
from deploy.runtime import TOKENIZER as BUNDLE_TOKENIZER
from deploy.vocab_trim import tokenized_split
from distill.gates import Gate, GateResult, all_passed, failure_summary

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
ONNX_FILE = "model.onnx"  # the file mlflow.onnx.log_model writes
CONFIG_ARTIFACT = "config/config.resolved.yaml"
BUNDLE_ARTIFACT = "bundle"
FINISHED_BADLY = {"FAILED", "KILLED"}

# validate_evaluation_results logs two INFO lines per gate; the gate results say more.
logging.getLogger("mlflow.models.evaluation.validation").setLevel(logging.WARNING)


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class ChampionScore:
    version: str
    accuracy: float | None  # None: the champion cannot be scored on this data
    path: Path  # its downloaded ONNX file, valid while the caller's folder lives
    split: Mapping[str, Sequence]  # the test split as the champion's own tokenizer encodes it


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    promoted: bool
    alias: str  # the alias that says what this version is now: champion or challenger
    replaced: str | None  # the champion it replaced, now `previous`
    reason: str


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
    else:  # MetricThreshold wants a positive change; "not worse" is a threshold at the baseline
        threshold = MetricThreshold(
            threshold=float(gate.baseline), greater_is_better=gate.greater_is_better
        )
    try:
        mlflow.validate_evaluation_results({gate.name: threshold}, candidate, baseline)
    except ModelValidationFailedException as err:
        return err.message.strip()
    return None


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version of a registered model; empty when the model does not exist yet."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def download_onnx(tracking_uri: str, name: str, version: str, folder: Path) -> Path:
    # `models:/` URIs resolve through the process-wide registry URI only.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(folder)
    )
    return Path(local) / ONNX_FILE


def score_champion(
    tracking_uri: str,
    name: str,
    test_split: Mapping[str, Sequence],
    num_labels: int,
    folder: Path,
    max_length: int,
) -> ChampionScore | None:
    """The current champion's accuracy on this run's test split (data may have changed since
    it was trained), or None when there is no champion.

    The texts are encoded with the tokenizer from the champion's own edge bundle: a champion
    with a trimmed vocabulary reads other ids than this run's tokenizer writes."""
    version = aliases(registry_client(tracking_uri), name).get(CHAMPION)
    if version is None:
        return None
    path = download_onnx(tracking_uri, name, version, folder)
    tokenizer = download_bundle_tokenizer(tracking_uri, name, version, folder / "bundle")
    split = test_split if tokenizer is None else tokenized_split(tokenizer, test_split, max_length)
    accuracy, outputs = onnx_accuracy(path, split)
    if outputs != num_labels:  # trained for other labels: its score here would mean nothing
        return ChampionScore(version, None, path, split)
    return ChampionScore(version, accuracy, path, split)


def download_bundle_tokenizer(
    tracking_uri: str, name: str, version: str, folder: Path
) -> Path | None:
    """The tokenizer of the version's edge bundle, or None for a run that logged no bundle."""
    run_id = registry_client(tracking_uri).get_model_version(name, version).run_id
    listed = MlflowClient(tracking_uri).list_artifacts(run_id, BUNDLE_ARTIFACT)
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
    order matters if we are stopped between the two calls: moving `previous` first leaves the old
    champion as both champion and previous (harmless, and a rerun finishes the job); moving
    `champion` first would lose the version to roll back to.
    """
    old = aliases(client, name).get(CHAMPION)
    if old == version:
        return None
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, version)
    return old


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def apply_gates(
    client: MlflowClient,
    name: str,
    version: str,
    results: Sequence[GateResult],
    description: str,
) -> Outcome:
    """Record the gates on the version and promote it when every gate passed.

    Tags are written before any alias moves, so a champion always carries its gate results.
    A version whose run failed or was killed is never promoted by the gates.
    """
    run_id = client.get_model_version(name, version).run_id
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
    if passed and champion is not None and champion != version:
        tags["promotion.replaces"] = champion
    set_version_tags(client, name, version, tags)
    if not passed:
        return Outcome(name, version, False, CHALLENGER, None, reason)
    replaced = move_champion(client, name, version)
    return Outcome(name, version, True, CHAMPION, replaced, reason)


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


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def resolve_model_uri(client: MlflowClient, uri: str) -> tuple[str, str]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (name, version)."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise RegistryError(f"not a registered model URI: {uri!r} (use models:/NAME@ALIAS)")
    name = match["name"]
    if match["version"]:
        return name, match["version"]
    version = aliases(client, name).get(match["alias"])
    if version is None:
        raise RegistryError(f"{name} has no version with alias '{match['alias']}'")
    return name, version


def lineage(client: MlflowClient, uri: str) -> dict[str, Any]:
    """Where a registered version came from: run, config, data, teacher, code and edge bundle."""
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
        "git_commit": run.data.tags.get("git_commit"),
        "bundle_uri": f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT}",
        "bundle_logged": bool(bundle),
    }


def champion_fingerprint(tracking_uri: str, name: str) -> tuple[str, str | None] | None:
    """(version, data_fingerprint tag) of the current champion, or None without one."""
    client = registry_client(tracking_uri)
    version = aliases(client, name).get(CHAMPION)
    if version is None:
        return None
    return version, client.get_model_version(name, version).tags.get("data_fingerprint")
