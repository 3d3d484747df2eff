"""Fetching a registered model's edge bundle from MLflow (the bundle is logged as `bundle/`).

`models:/NAME@ALIAS` (or `models:/NAME/VERSION`) -> model version -> its run -> the run's
`bundle` artifact folder, verified by the edge runtime before it is written out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow import MlflowClient

from deploy.bundle import BUNDLE_DIR, place_folder, tarball_path, write_tarball
from deploy.runtime import load_bundle
from tasks.registry import RegistryError, resolve_model_uri
from tasks.tracking import mlflow_client


class BundleFetchError(ValueError):
    """The model URI, its version or its run's bundle cannot be used; the message says which."""


def resolve_run(client: MlflowClient, uri: str) -> str:
    """The id of the run that logged the model version a model URI points at."""
    try:
        name, version = resolve_model_uri(client, uri)
    except RegistryError as err:
        raise BundleFetchError(str(err)) from None
    found = client.get_model_version(name, version)
    if not found.run_id:
        raise BundleFetchError(f"{uri}: version {found.version} has no source run")
    return found.run_id


def fetch_bundle(model_uri: str, out: Path, tracking_uri: str) -> Path:
    """Download the bundle of `model_uri`'s run, verify it, write `out/` and `out.tar.gz`."""
    client = mlflow_client(tracking_uri)
    run_id = resolve_run(client, model_uri)
    if not client.list_artifacts(run_id, BUNDLE_DIR):
        raise BundleFetchError(f"{model_uri}: run {run_id} has no '{BUNDLE_DIR}' artifact")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out.parent) as tmp:
        downloaded = Path(client.download_artifacts(run_id, BUNDLE_DIR, dst_path=tmp))
        bundle = load_bundle(downloaded)  # refuses a tampered or incomplete bundle
        if bundle.manifest.mlflow_run_id != run_id:
            raise BundleFetchError(
                f"{model_uri}: the bundle in run {run_id} was built for run "
                f"{bundle.manifest.mlflow_run_id!r}"
            )
        place_folder(downloaded, out)  # same file system: an atomic rename
    write_tarball(out, tarball_path(out))
    return out
