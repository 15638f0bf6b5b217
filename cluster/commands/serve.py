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
    return cfg, tracking_uri


def run(args: argparse.Namespace) -> int:
    from serve import config as sc

    cfg, tracking_uri = build_config(args)

    import ray
    from ray import serve

    if args.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.address, namespace="serve", logging_level="WARNING")
    else:
        # A local Ray counts at least 4 logical CPUs so the Encoder/Decoder can add a replica
        # on a small dev machine (they share the cores; on a cluster the CPUs are real).
        ray.init(num_cpus=max(4, os.cpu_count() or 1), namespace="serve", logging_level="WARNING")
    sc.deploy(cfg)
    t0 = time.monotonic()
    print(f"deploying the vljepa Serve app (MLflow store {tracking_uri}) ...", flush=True)
    try:
        sc.wait_running(sc.APP_NAME, timeout_s=600)
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
    try:
        while True:
            time.sleep(5)
    except KeyboardInterrupt:
        print("shutting down Serve ...", flush=True)
        from serve.streams import drop_store, store_name

        serve.shutdown()
        drop_store(
            store_name(sc.APP_NAME, sc.app_entry(cfg).get("args", {}).get("stream_store", ""))
        )
    return 0
