"""The one place that decides which MLflow store a command talks to.

Order: the command's flag, else `MLFLOW_TRACKING_URI`, else the embedded default, a SQLite file
at `./mlruns/mlflow.db` (absolute, because Ray workers and Serve replicas run in other
directories). The answer is always passed on explicitly: to an `MlflowClient`, in a job's config,
and to workers and replicas in their runtime env (`worker_env`). Library code never sets MLflow's
process-global URIs (`mlflow.set_tracking_uri` / `set_registry_uri`): a process that talks to two
stores (a test session, a Serve replica, an eval comparing models) would read whichever was set
last. The registry lives in the same store as the runs.
"""

from __future__ import annotations

import os

ENV_VAR = "MLFLOW_TRACKING_URI"
DEFAULT_DIR = "mlruns"
DEFAULT_DB = "mlflow.db"


def default_uri(cwd: str | None = None) -> str:
    """The embedded store: SQLite under ./mlruns of `cwd` (default: this process's cwd)."""
    root = os.path.abspath(os.path.join(cwd or os.getcwd(), DEFAULT_DIR))
    return "sqlite:///" + os.path.join(root, DEFAULT_DB)


def absolute(uri: str) -> str:
    """Relative sqlite:/// and bare paths made absolute; every other URI unchanged."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if uri.startswith("file://"):
        return "file://" + os.path.abspath(uri[len("file://") :])
    if "://" not in uri and not uri.startswith("databricks"):
        return "file://" + os.path.abspath(uri)
    return uri


def resolve(flag: str | None = None) -> str:
    """The tracking (and registry) URI for a command: flag, else the env var, else the default."""
    uri = flag or os.environ.get(ENV_VAR) or default_uri()
    return absolute(uri)


# MLflow 3 phones home (config.mlflow-telemetry.io) from every process that uses it; nothing
# here may reach the network unasked, so it is off unless the user's environment says otherwise.
TELEMETRY_VAR = "MLFLOW_DISABLE_TELEMETRY"


def no_telemetry() -> None:
    """Turn MLflow's telemetry off in this process (before MLflow is imported) unless set."""
    os.environ.setdefault(TELEMETRY_VAR, "true")


def worker_env(uri: str) -> dict[str, str]:
    """What a Ray worker or Serve replica needs to reach the same store (telemetry as here)."""
    return {ENV_VAR: uri, TELEMETRY_VAR: os.environ.get(TELEMETRY_VAR, "true")}


def sqlite_path(uri: str) -> str | None:
    return uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None


def client(uri: str):
    """An MlflowClient on `uri` for runs and registry alike (the SQLite folder created first)."""
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment `name` in the store, created if missing. With SQLite, artifacts go
    beside the database (`mlruns/artifacts/<name>`), not into whatever folder the driver ran from."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    path = sqlite_path(uri)
    if path:
        location = "file://" + os.path.join(os.path.dirname(path), "artifacts", name)
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
