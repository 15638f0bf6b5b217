"""Run the Ray Serve application locally from its config file and block until Ctrl-C.

Reads serve/serve_config.yaml (or --config), applies the flags (model, port, host, allowed clip
URI prefixes, the MLflow store: `pipelines.tracking_store.resolve`, given to every replica in the
app's args and runtime env), validates the whole file against Ray's ServeDeploySchema and the
app's arguments, deploys it to a local Ray (started here) or the cluster at --address, waits
until it is RUNNING and prints the URLs. The same file deploys unchanged with `serve deploy` or in
a RayService.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="models:/name/version, runs:/RUN_ID/path, s3://..., or a local dir "
        "(default: the config's model_uri; empty = the tiny preset, untrained)",
    )
    p.add_argument(
        "--config", default=None, help="Serve config YAML (default: serve/serve_config.yaml)"
    )
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    p.add_argument("--host", default=None, help="HTTP host (default: the config's)")
    p.add_argument("--address", default=None, help="Ray address (default: start a local Ray)")
    p.add_argument(
        "--allow-uri-prefix",
        action="append",
        default=None,
        metavar="PREFIX",
        help="clip URIs allowed under this prefix (repeatable; replaces the config's list)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store for models:/ and runs:/ URIs (default: the config's "
        "mlflow_tracking_uri, else MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)",
    )
    p.add_argument("--no-block", action="store_true", help="deploy, print the URLs and return")


def build_config(args: argparse.Namespace) -> tuple[dict, str]:
    """The validated Serve config the flags describe, and the MLflow store it was given."""
    from cluster.cli import UsageError
    from pipelines import tracking_store
    from serve import config as sc

    try:
        cfg = sc.load_config(args.config)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the Serve config: {e}") from e
    over: dict = {}
    if args.model is not None:
        over["model_uri"] = args.model
    if args.allow_uri_prefix is not None:
        over["allowed_uri_prefixes"] = args.allow_uri_prefix
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    cfg = sc.apply_overrides(cfg, args=over, host=args.host, port=args.port)
    # One store for the whole app, resolved here (flag, else the config's, else the env var,
    # else ./mlruns of THIS folder) and handed to every replica in its args and runtime env:
    # a replica's working directory is not this one.
    configured = (sc.app_entry(cfg).get("args") or {}).get("mlflow_tracking_uri") or None
    tracking_uri = tracking_store.resolve(getattr(args, "tracking_uri", None) or configured)
    cfg = sc.with_tracking_store(cfg, tracking_uri)
    try:
        sc.validate(cfg)
    except ValueError as e:  # pydantic ValidationError is a ValueError
        if type(e).__name__ == "ValidationError":
            raise
        raise UsageError(str(e)) from e
    # Auth fails closed: a named token variable that is unset or empty refuses here, in one
    # line. A local Ray's replicas inherit this environment; a cluster's replicas check theirs.
    remote = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
    try:
        sc.check_auth(cfg, None if remote else os.environ)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return cfg, tracking_uri


def run(args: argparse.Namespace) -> int:
    from pipelines.connect import connect, quiet, resolve_address
    from serve import config as sc

    cfg, tracking_uri = build_config(args)
    remote = resolve_address(args.address)
    # A model that cannot load fails here, in one line, before any Ray process starts.
    check_model((sc.app_entry(cfg).get("args") or {}).get("model_uri", ""), tracking_uri, remote)

    # Serve's controller and proxies are this driver's actors: their output is Ray's, not ours.
    # A local Ray counts at least 4 logical CPUs so the Encoder/Decoder can add a replica on a
    # small dev machine (they share the cores; on a cluster the CPUs are real).
    connect(
        args.address,
        namespace="serve",
        num_cpus=None if remote else max(4, os.cpu_count() or 1),
        log_to_driver=not quiet(),
    )
    # SIGTERM (a supervisor, `kill`) stops as cleanly as Ctrl-C. Installed after Ray's start:
    # Ray's core worker puts a native handler on SIGTERM that dumps a stack and dies, leaving
    # the local Ray's processes behind (`connect` does this too when run from the CLI).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        replaced = sc.deployed_at(sc.APP_NAME)  # redeploying over a running app: wait for ours
        sc.deploy(cfg)
        t0 = time.monotonic()
        print(f"deploying the vljepa Serve app (MLflow store {tracking_uri}) ...", flush=True)
        try:
            sc.wait_running(sc.APP_NAME, timeout_s=600, replaced=replaced)
        except (RuntimeError, TimeoutError) as e:
            print(f"vljepa serve: {e}", flush=True)
            return 1
        urls = sc.urls(cfg)
        print(f"vljepa serve: running after {time.monotonic() - t0:.0f}s", flush=True)
        for name, url in urls.items():
            print(f"  {name:7s} {url}", flush=True)
        if args.no_block:
            return 0
        print("press Ctrl-C to stop", flush=True)
        while True:
            time.sleep(5)
    except KeyboardInterrupt:
        _stop(cfg, local=remote is None)
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _stop(cfg: dict, local: bool) -> None:
    """Serve shut down (replicas drained), the stream store actor killed (its streams stay in
    `stream_store_path` for the next `vljepa serve` on it), and the local Ray this command
    started stopped with every process it ran; a second signal meanwhile is ignored."""
    import contextlib

    import ray
    from ray import serve

    from serve import config as sc
    from serve.streams import drop_store, store_name

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    print("shutting down Serve ...", flush=True)
    with contextlib.suppress(Exception):  # already gone (a failed deploy): nothing to stop
        serve.shutdown()
    with contextlib.suppress(Exception):
        drop_store(
            store_name(sc.APP_NAME, sc.app_entry(cfg).get("args", {}).get("stream_store", "")),
            wipe=False,
        )
    ray.shutdown()
    print("vljepa serve: stopped" + (" (local Ray stopped)" if local else ""), flush=True)


def check_model(uri: str, tracking_uri: str, remote: str | None = None) -> None:
    """Raise UsageError (one line) if `uri` names no model: a folder that does not exist or holds
    no saved VLJEPA, a `models:/` version or `runs:/` run the MLflow store does not have, or an
    empty S3 prefix. Creates nothing: a SQLite store that does not exist is not created. With a
    remote cluster (`remote`), local paths are the cluster's to resolve and are not checked.
    '' (the untrained preset) and other schemes pass."""
    from cluster.cli import UsageError
    from pipelines import storage, tracking_store

    if not uri:
        return
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    if "://" not in path and not path.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        if remote:
            return
        from serve.model_loading import find_model_dir

        if not os.path.isdir(path):
            raise UsageError(f"model {uri!r}: no such folder")
        try:
            find_model_dir(path)
        except FileNotFoundError as e:
            raise UsageError(f"model {uri!r}: {e}") from None
        return
    if storage.is_s3(uri):
        try:
            found = storage.list_files(uri, recursive=True)
        except OSError as e:
            raise UsageError(f"model {uri!r}: cannot list it ({e})") from None
        if not found:
            raise UsageError(f"model {uri!r}: nothing stored there")
        return
    if not uri.startswith(("models:/", "runs:/")):
        return
    db = tracking_store.sqlite_path(tracking_uri)
    if db and not os.path.exists(db):
        if remote:
            return
        raise UsageError(
            f"model {uri!r}: no MLflow store at {db} (give --tracking-uri or MLFLOW_TRACKING_URI)"
        )
    try:
        _resolve_in_store(uri, tracking_uri)
    except Exception as e:  # MlflowException (unknown model/version/run), store unreachable
        reason = (getattr(e, "message", None) or str(e) or type(e).__name__).splitlines()[0]
        raise UsageError(f"model {uri!r} does not resolve in {tracking_uri}: {reason}") from None


def _resolve_in_store(uri: str, tracking_uri: str) -> None:
    """The registered version (models:/) or the run (runs:/) `uri` names, or an exception."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    from pipelines import mlflow_uri

    if uri.startswith("models:/"):
        mlflow_uri.model_version_source(uri, tracking_uri)
        return
    run_id, _ = RunsArtifactRepository.parse_runs_uri(uri)
    MlflowClient(tracking_uri, registry_uri=tracking_uri).get_run(run_id)
