"""The Serve application's settings: the YAML (serve deploy / RayService form), its overrides,
and the validated arguments `build_app` receives.

One file drives every way of running the app (`vljepa serve` locally, `serve deploy`, a KubeRay
RayService), so the YAML is validated against Ray's own `ServeDeploySchema` *and* the app's
`args` against `AppArgs` before anything starts: a typo fails in the CLI, not in a replica.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jepa.config import DetectorConfig

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
APP_NAME = "vljepa"
DEPLOYMENTS = ("Ingress", "Encoder", "TextEncoder", "Decoder")


class AppArgs(BaseModel):
    """`args:` of the application in the Serve config; validated once in `build_app`."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(
        "", description="models:/name/version, runs:/ID/path, s3://..., a local dir; '' = preset"
    )
    model_preset: str = Field("tiny", description="preset built (untrained) when model_uri is ''")
    mlflow_tracking_uri: str = Field("", description="for models:/ and runs:/ URIs")
    allowed_uri_prefixes: list[str] = Field(
        default_factory=list, description="clip URIs must start with one of these (none: no URIs)"
    )
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    auth_token_env: str = Field(
        "",
        description="name of an env var holding the bearer token that every route but /healthz "
        "and /readyz requires ('' = no auth); a named variable that is unset or empty stops the "
        "app from starting (fails closed)",
    )
    public_docs: bool = Field(
        False,
        description="serve /docs, /redoc and /openapi.json without the bearer token (with a "
        "token and false, they need it like the API)",
    )
    min_clip_frames: int = Field(2, ge=1, description="shorter clips are rejected (422)")
    max_labels: int = Field(256, ge=1, description="most labels one /v1/classify takes (422)")
    max_candidates: int = Field(
        256, ge=1, description="most candidate answers one /v1/vqa takes (422)"
    )
    max_query_chars: int = Field(
        2000, ge=1, description="longest query, question, label or candidate (422)"
    )
    max_new_tokens: int = Field(24, ge=1, le=256)
    detector: DetectorConfig | None = Field(
        None,
        description="online selective decoding; None = the model's own `config.detector` "
        "(calibrated at registration), else DetectorConfig() defaults; a value overrides both",
    )
    decode_retry_budget_s: float = Field(
        30.0,
        ge=0,
        description="how long the ingress waits for the Decoder (retrying a dead or restarting "
        "replica, waiting for one to start from zero) before /v1/caption answers 503; also how "
        "long it retries a restarting or recreated stream store",
    )
    stream_store: str = Field(
        "", description="name of the detached stream-state actor ('' = vljepa-streams-<app>)"
    )
    stream_store_path: str = Field(
        "",
        description="where the stream store writes each stream's state and events through "
        "(local folder or s3://bucket/prefix; one folder per store under it). '' = "
        "vljepa-streams/ in the Ray session folder of the store's node: survives the store's "
        "restart on that node, not the node's loss or a new Ray cluster; s3:// (or a shared "
        "mount) survives both, as a RayService should use. Changing it starts the store afresh "
        "on what the new location holds",
    )
    stream_decode_wait_s: float = Field(
        2.0,
        ge=0,
        description="how long a stream request waits for its captions; one not ready by then "
        "(the Decoder starting from zero replicas, or busy) is answered `pending` and filled in "
        "the background as soon as the Decoder answers (GET /v1/streams/{id}/events shows it)",
    )

    @field_validator("allowed_uri_prefixes")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        out = []
        for p in v:
            if not p or ".." in p.split("/"):
                raise ValueError(f"bad allowed URI prefix {p!r}")
            if not p.startswith("s3://"):
                p = os.path.abspath(p[len("file://") :] if p.startswith("file://") else p)
            out.append(p.rstrip("/") + "/")
        return out


def served_detector(
    explicit: DetectorConfig | None, stored: dict[str, Any] | None
) -> tuple[dict[str, float], str]:
    """The detector a served app runs and where it came from: the app's explicit `detector`
    ("config"), else the one the model was registered with ("model"), else the defaults."""
    if explicit is not None:
        return explicit.model_dump(), "config"
    if stored:
        return DetectorConfig.model_validate(stored).model_dump(), "model"
    return DetectorConfig().model_dump(), "default"


def with_tracking_store(cfg: dict[str, Any], uri: str, app_name: str = APP_NAME) -> dict[str, Any]:
    """A copy of `cfg` whose app reads MLflow at `uri`: in its args (`mlflow_tracking_uri`) and
    in the runtime env of every replica (`MLFLOW_TRACKING_URI`), whose working directory is
    never the one the store was resolved from."""
    from pipelines import tracking_store

    cfg = copy.deepcopy(cfg)
    app = app_entry(cfg, app_name)
    app["args"] = {**(app.get("args") or {}), "mlflow_tracking_uri": uri}
    runtime_env = dict(app.get("runtime_env") or {})
    runtime_env["env_vars"] = {
        **(runtime_env.get("env_vars") or {}),
        **tracking_store.worker_env(uri),
    }
    app["runtime_env"] = runtime_env
    return cfg


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The YAML as a dict (default: the packaged serve/serve_config.yaml)."""
    with open(path or DEFAULT_CONFIG) as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path or DEFAULT_CONFIG}: not a Serve config mapping")
    return cfg


def app_entry(cfg: dict[str, Any], name: str = APP_NAME) -> dict[str, Any]:
    for app in cfg.get("applications", []):
        if app.get("name") == name:
            return app
    raise ValueError(f"the Serve config has no application named {name!r}")


def apply_overrides(
    cfg: dict[str, Any],
    *,
    args: dict[str, Any] | None = None,
    deployments: dict[str, dict[str, Any]] | None = None,
    host: str | None = None,
    port: int | None = None,
    app_name: str = APP_NAME,
) -> dict[str, Any]:
    """A copy of `cfg` with app args, per-deployment settings and HTTP options replaced.

    Deployment overrides merge one level deep (so `{"Encoder": {"autoscaling_config": {...}}}`
    replaces that deployment's autoscaling block and keeps its other keys).
    """
    cfg = copy.deepcopy(cfg)
    app = app_entry(cfg, app_name)
    if args:
        app.setdefault("args", {}).update(args)
    for dname, over in (deployments or {}).items():
        if dname not in DEPLOYMENTS:
            raise ValueError(f"unknown deployment {dname!r}; the app has {', '.join(DEPLOYMENTS)}")
        entries = app.setdefault("deployments", [])
        entry = next((d for d in entries if d.get("name") == dname), None)
        if entry is None:
            entry = {"name": dname}
            entries.append(entry)
        for k, v in over.items():
            if v is None:
                entry.pop(k, None)
            else:
                entry[k] = copy.deepcopy(v)
        if "num_replicas" in over and over["num_replicas"] is not None:
            entry.pop("autoscaling_config", None)
        if "autoscaling_config" in over and over["autoscaling_config"] is not None:
            entry.pop("num_replicas", None)
    http = cfg.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    return cfg


def validate(cfg: dict[str, Any], app_name: str = APP_NAME):
    """Ray's ServeDeploySchema for the whole file + AppArgs for our app; returns the schema."""
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(cfg)
    app = app_entry(cfg, app_name)
    AppArgs.model_validate(app.get("args") or {})
    names = {d.get("name") for d in app.get("deployments", [])}
    unknown = names - set(DEPLOYMENTS)
    if unknown:
        raise ValueError(f"unknown deployments in the config: {sorted(unknown)}")
    return schema


def ingress_env_vars(cfg: dict[str, Any], app_name: str = APP_NAME) -> dict[str, str]:
    """The env vars the config itself gives the Ingress replicas: the app's runtime_env, then
    the Ingress deployment's own (which Serve merges over the app's)."""
    app = app_entry(cfg, app_name)
    env = dict((app.get("runtime_env") or {}).get("env_vars") or {})
    for d in app.get("deployments") or []:
        if d.get("name") == "Ingress":
            renv = (d.get("ray_actor_options") or {}).get("runtime_env") or {}
            env.update(renv.get("env_vars") or {})
    return {k: str(v) for k, v in env.items()}


def check_auth(
    cfg: dict[str, Any], environ: Mapping[str, str] | None, app_name: str = APP_NAME
) -> None:
    """Refuse, before anything starts, a config whose `auth_token_env` names a variable in
    which the Ingress replicas will find no token (AuthMisconfigured, one line).

    `environ`: the environment the replicas inherit (this process's, when it starts the local
    Ray), or None when they run on a cluster whose environment is not known here; then only a
    variable the config sets itself is judged, and each Ingress replica checks its own at start.
    """
    from serve.security import expected_token

    env_name = (app_entry(cfg, app_name).get("args") or {}).get("auth_token_env") or ""
    given = ingress_env_vars(cfg, app_name)
    if env_name in given:
        expected_token(env_name, given)
    elif environ is not None:
        expected_token(env_name, environ)


def urls(cfg: dict[str, Any], app_name: str = APP_NAME) -> dict[str, str]:
    """Where the app answers, for printing."""
    http = cfg.get("http_options") or {}
    host = http.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    prefix = (app_entry(cfg, app_name).get("route_prefix") or "/").rstrip("/")
    base = f"http://{host}:{http.get('port', 8000)}{prefix}"
    return {"api": base + "/v1", "docs": base + "/docs", "health": base + "/healthz"}


def deployed_at(app_name: str = APP_NAME) -> float | None:
    """When Serve last accepted a config for the app (its controller's clock), None if it does
    not run (or Serve is not started)."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception:  # noqa: BLE001 - Serve not started: nothing runs
        return None
    return None if app is None else float(app.last_deployed_time_s)


def deploy(cfg: dict[str, Any]) -> None:
    """Run the config on the connected Ray cluster the way `serve run config.yaml` does: start
    Serve with the file's HTTP options, then hand the whole config to the controller (which
    imports `serve.app:build_app` and applies the per-deployment settings). Returns once the
    controller has accepted it; `wait_running(..., replaced=deployed_at(...) taken before)` then
    waits for this deploy rather than trusting the status of the one it replaces."""
    from ray.serve._private import api as _private_api
    from ray.serve.config import gRPCOptions

    schema = validate(cfg)
    client = _private_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    client.deploy_apps(schema, _blocking=False)


def _why_failed(app) -> str:
    """The last line of each failing deployment's message: the exception its replicas raised
    (e.g. an Ingress refusing an empty token), not the whole traceback."""
    out = ""
    for name, d in app.deployments.items():
        status = str(getattr(d.status, "value", d.status))
        lines = [x.strip() for x in (d.message or "").splitlines() if x.strip()]
        if status in ("DEPLOY_FAILED", "UNHEALTHY") and lines:
            out += f"; {name}: {lines[-1]}"
    return out


def wait_running(
    app_name: str = APP_NAME, timeout_s: float = 180.0, replaced: float | None = None
) -> None:
    """Block until the app is RUNNING; raise with Serve's message if it fails to deploy.
    `replaced`: the `deployed_at` of the app this deploy replaces; its status does not count."""
    import time

    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None and replaced is not None and app.last_deployed_time_s == replaced:
            last = "the previous deploy is still the current one"
        elif app is not None:
            status = str(getattr(app.status, "value", app.status))
            last = f"{status}: {app.message}"
            if status == "RUNNING":
                return
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"Serve app {app_name!r} {last}{_why_failed(app)}")
        time.sleep(0.5)
    raise TimeoutError(f"Serve app {app_name!r} not running after {timeout_s:.0f}s ({last})")
