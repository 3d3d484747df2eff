"""Fetching a registered model's edge bundle from MLflow (the bundle is logged as `bundle/`).

`models:/NAME@ALIAS` (or `models:/NAME/VERSION`) -> model version -> its run -> the run's
`bundle` artifact folder, verified by the edge runtime before it is written out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from deploy.bundle import BUNDLE_DIR, place_folder, tarball_path, write_tarball
from deploy.runtime import load_bundle


class BundleFetchError(ValueError):
    """The model URI, its version or its run's bundle cannot be used; the message says which."""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    rest = uri.removeprefix("models:/")
    if rest == uri or not rest:
        raise BundleFetchError(f"model URI must look like models:/NAME@ALIAS, got '{uri}'")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise BundleFetchError(f"model URI must look like models:/NAME@ALIAS, got '{uri}'")


def resolve_run(client: MlflowClient, uri: str) -> str:
    """The id of the run that logged the model version a model URI points at."""
    name, alias, version = parse_model_uri(uri)
    try:
        if alias is not None:
            found = client.get_model_version_by_alias(name, alias)
        else:
            found = client.get_model_version(name, str(version))
    except MlflowException as err:
        raise BundleFetchError(f"{uri}: {err.message}") from None
    if not found.run_id:
        raise BundleFetchError(f"{uri}: version {found.version} has no source run")
    return found.run_id


def fetch_bundle(model_uri: str, out: Path, tracking_uri: str) -> Path:
    """Download the bundle of `model_uri`'s run, verify it, write `out/` and `out.tar.gz`."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_id = resolve_run(client, model_uri)
    if not client.list_artifacts(run_id, BUNDLE_DIR):
        raise BundleFetchError(f"{model_uri}: run {run_id} has no '{BUNDLE_DIR}' artifact")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out.parent) as tmp:
        downloaded = Path(client.download_artifacts(run_id, BUNDLE_DIR, dst_path=tmp))
        bundle = load_bundle(downloaded)  # refuses a tampered or incomplete bundle
        if bundle.manifest.get("mlflow_run_id") != run_id:
            raise BundleFetchError(
                f"{model_uri}: the bundle in run {run_id} was built for run "
                f"{bundle.manifest.get('mlflow_run_id')!r}"
            )
        place_folder(downloaded, out)  # same file system: an atomic rename
    write_tarball(out, tarball_path(out))
    return out
