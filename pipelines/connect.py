"""One way for every job (embed, train, serve) to reach Ray.

`--address` (or RAY_ADDRESS) attaches to a running cluster; nothing at all starts a private
local cluster inside this process, sized to the machine, so every command works with no flags.
Ray's own INFO chatter is turned down to warnings: our logs should say what happened.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def resolve_address(address: str | None) -> str | None:
    """The cluster to attach to: the flag, else RAY_ADDRESS, else None (start a local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(
    address: str | None = None,
    *,
    runtime_env: dict[str, Any] | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    log_to_driver: bool = True,
    namespace: str | None = None,
):
    """`ray.init` for a job: attach to `address`/RAY_ADDRESS or start an embedded local cluster.

    Returns Ray's context. If Ray is already initialised in this process (tests, notebooks),
    that connection is reused and `runtime_env` must already be in place.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    target = resolve_address(address)
    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": log_to_driver,
        "namespace": namespace,
        "runtime_env": runtime_env,
    }
    if target is None:
        # A private cluster lives and dies with this process; no dashboard to start or serve.
        kwargs.update(include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus)
    for attempt in (1, 2):
        try:
            ctx = ray.init(address=target, **kwargs)
            break
        except Exception as e:  # Ray raises a bare Exception for this
            # Ray gives a new local node 30 s (hard-coded) to register; on an overloaded box it
            # can miss that once. Try one more time before giving up.
            if target is not None or attempt == 2 or "timed out during startup" not in str(e):
                raise
            log.warning("local Ray node was slow to start (%s); retrying once", e)
            ray.shutdown()
    res = ray.cluster_resources()
    log.info(
        "Ray: %s (%g CPUs, %g GPUs)",
        f"attached to {target}" if target else "started a local cluster",
        res.get("CPU", 0),
        res.get("GPU", 0),
    )
    return ctx


def forwarded_env(prefixes: tuple[str, ...] = ("AWS_", "MLFLOW_", "HF_")) -> dict[str, str]:
    """Environment a job's workers need but a long-running cluster may not have (S3 credentials,
    tracking URI, offline hub): pass as `runtime_env={"env_vars": forwarded_env()}`."""
    return {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
