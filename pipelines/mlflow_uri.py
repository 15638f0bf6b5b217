"""Download what an MLflow URI names (runs:/, models:/, mlflow-artifacts:/, a store path) from
an explicit tracking store, without touching MLflow's process-global URIs.

Why not `mlflow.artifacts.download_artifacts(..., tracking_uri=..., registry_uri=...)` alone:
MLflow 3's `models:/` repository resolves the version through `mlflow.get_registry_uri()` and
ignores the argument, so a process that talks to two stores (a Serve replica, a test session,
an eval comparing models) would read the registry of whichever store was set last. Here the
version is resolved with our own `MlflowClient` first, and only its source URI is downloaded.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def model_version_source(uri: str, tracking_uri: str | None) -> str:
    """`models:/<name>/<version|stage|latest>[/path]` or `models:/<name>@<alias>[/path]` -> the
    artifact URI the version was registered from (plus the sub-path); other URIs unchanged."""
    if not uri.startswith("models:/"):
        return uri
    from mlflow import MlflowClient
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient(tracking_uri or None, registry_uri=tracking_uri or None)
    base, sub_path = ModelsArtifactRepository.split_models_uri(uri)
    parts = get_model_name_and_version(client, base)
    if len(parts) == 1:  # models:/<logged model id>
        source = client.get_logged_model(parts[0]).artifact_location
    else:
        source = client.get_model_version_download_uri(*parts)
    source = source.rstrip("/") + (f"/{sub_path}" if sub_path else "")
    log.info("%s is %s", uri, source)
    return source


def download(uri: str, tracking_uri: str | None, dst: str) -> str:
    """Download `uri` into `dst` (a directory) from the store at `tracking_uri`; returns the
    local path of what it names."""
    import mlflow

    source = model_version_source(uri, tracking_uri)
    return mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri or None
    )
