"""Shared by the serve tests: deploy the real config to the session's Ray cluster, build the
synthetic live streams, tear everything down so the rest of the suite gets its CPUs back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve import config as sc
from tests.services import free_port

APP = sc.APP_NAME
TOKEN = "serve-test-token-1234"
# Above the ~1.1 MB multipart body of test_vqa's 10000 candidates, so that case reaches the
# field-count guard it tests (test_serve_http's 413 case sends MAX_BYTES + 1).
MAX_BYTES = 2_000_000
# Tuned for the untrained tiny model on the synthetic streams (events of varied length, each
# one slow change, pauses between some): its predicted embeddings drift ~0.001 cosine per clip
# inside an event (it sees pixels, not meaning) and move ~0.02 across event changes. Smoothing
# and a 4 s gap keep that drift from firing: on the session corpus (seed 0) 3.3x fewer decodes
# than clips with 17/18 events captioned (seeds 1, 2: 3.8x 14/15, 3.7x 12/13); 0.0025 with no
# smoothing, tuned on the earlier streams that repeated one 2 s action, fires every ~2 clips.
DETECTOR = {"threshold": 0.005, "min_gap": 4.0, "smoothing": 0.25}
# What the package's model stores (its app overrides it with DETECTOR): any other value.
STORED_DETECTOR = {"threshold": 0.5, "min_gap": 7.0, "smoothing": 0.25}
SMALL = {"num_cpus": 0.1}
# Fixed replica counts for the HTTP tests; the scaling tests swap in wider autoscaling
# configs. Fixed counts are written as autoscaling min = max (not num_replicas) because Serve
# folds "which deployments autoscale" into the app's code version: switching from num_replicas
# to autoscaling_config would restart every replica instead of a lightweight update.
ONE = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}
BASE_DEPLOYMENTS = {
    "Ingress": {
        "num_replicas": 2,
        "ray_actor_options": {**SMALL, "runtime_env": {"env_vars": {"VLJEPA_TEST_TOKEN": TOKEN}}},
    },
    "Encoder": {"autoscaling_config": ONE, "ray_actor_options": SMALL},
    "TextEncoder": {"autoscaling_config": ONE, "ray_actor_options": SMALL},
    "Decoder": {"autoscaling_config": ONE, "ray_actor_options": SMALL},
}


def deploy(port: int, args: dict, deployments: dict, fresh: bool = True) -> dict:
    """Deploy serve/serve_config.yaml with overrides the way `vljepa serve` does; returns cfg.
    `fresh`: restart Serve first (its HTTP options are cluster-wide); otherwise the config is
    applied to the running app as an update."""
    from ray import serve

    if fresh:
        serve.shutdown()
    cfg = sc.apply_overrides(
        sc.load_config(), args=args, deployments=deployments, host="127.0.0.1", port=port
    )
    replaced = sc.deployed_at(APP)
    sc.deploy(cfg)
    sc.wait_running(APP, timeout_s=300, replaced=replaced)
    return cfg


def teardown(cfg: dict) -> None:
    from ray import serve

    from serve.streams import drop_store, store_name

    try:
        serve.delete(APP)
    finally:
        serve.shutdown()
        drop_store(store_name(APP, sc.app_entry(cfg).get("args", {}).get("stream_store", "")))


# A second application next to the package's (one per extra model): one replica of each
# deployment, no auth.
SIDE_DEPLOYMENTS = {
    "Ingress": {"num_replicas": 1, "ray_actor_options": SMALL},
    "Encoder": {"autoscaling_config": ONE, "ray_actor_options": SMALL},
    "TextEncoder": {"autoscaling_config": ONE, "ray_actor_options": SMALL},
    "Decoder": {"autoscaling_config": ONE, "ray_actor_options": SMALL},
}


@dataclass
class SideApp:
    name: str
    base: str  # http://127.0.0.1:PORT/NAME
    started_serve: bool  # Serve was not running: this app started it (and stops it)
    cfg: dict  # its application entry


def deploy_side(
    name: str, args: dict, deployments: dict | None = None, tracking_uri: str | None = None
) -> SideApp:
    """The packaged app deployed once more as application `name` at route /NAME, NEXT TO what
    Serve runs (there is one Serve, one HTTP port per cluster, and a declarative deploy replaces
    the set of applications: the running ones are handed back unchanged, so they keep their
    replicas). Starts Serve on a free port when none runs. `tracking_uri`: the MLflow store,
    given the way `vljepa serve` gives it (app args + every replica's runtime env)."""
    from ray.serve._private import api as _private_api
    from ray.serve.config import gRPCOptions
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client(raise_if_no_controller_running=False)
    apps: list[dict] = []
    if client is None:
        started = True
        base = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1"}}
        base["http_options"]["port"] = free_port()
    else:
        started = False
        details = client.get_serve_details()
        base = {
            "proxy_location": details.get("proxy_location") or "EveryNode",
            "http_options": details["http_options"],
            "grpc_options": details.get("grpc_options") or {},
        }
        apps = [
            a["deployed_app_config"]
            for n, a in details.get("applications", {}).items()
            if n != name and a.get("deployed_app_config")
        ]
    packaged = sc.apply_overrides(
        sc.load_config(), args=args, deployments=deployments or SIDE_DEPLOYMENTS
    )
    if tracking_uri:
        packaged = sc.with_tracking_store(packaged, tracking_uri)
    entry = {**sc.app_entry(packaged), "name": name, "route_prefix": f"/{name}"}
    sc.AppArgs.model_validate(entry.get("args") or {})
    schema = ServeDeploySchema.model_validate({**base, "applications": [*apps, entry]})
    client = _private_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    replaced = sc.deployed_at(name)
    client.deploy_apps(schema, _blocking=False)
    sc.wait_running(name, timeout_s=300, replaced=replaced)
    port = schema.http_options.port
    return SideApp(name, f"http://127.0.0.1:{port}/{name}", started, entry)


def remove_side(side: SideApp) -> None:
    """Delete the side application and its stream store (and Serve, if it started it)."""
    from ray import serve

    from serve.streams import drop_store, store_name

    try:
        serve.delete(side.name)
        if side.started_serve:
            serve.shutdown()
    finally:
        drop_store(store_name(side.name, (side.cfg.get("args") or {}).get("stream_store", "")))


def replicas(deployment: str, states: tuple[str, ...] = ("RUNNING",), app_name: str = APP) -> int:
    """Replicas of a deployment in the given states, from Serve's status."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return 0
    counts = app.deployments[deployment].replica_states
    return int(sum(n for s, n in counts.items() if str(getattr(s, "value", s)) in states))


def targets(dashboard_url: str, headers: dict) -> dict[str, int]:
    """The autoscaler's target replica count per deployment, from Serve's REST API (the
    dashboard's /api/serve/applications/, what `serve status` reads)."""
    import httpx

    r = httpx.get(f"{dashboard_url}/api/serve/applications/", headers=headers, timeout=30)
    r.raise_for_status()
    deps = r.json()["applications"][APP]["deployments"]
    return {name: int(d["target_num_replicas"]) for name, d in deps.items()}


def decoder_calls(app_name: str = APP) -> int:
    """The Decoder's own count of generated captions, summed over its running replicas (each
    replica answers for itself; ask through the handle until every replica was heard)."""
    from ray import serve

    handle = serve.get_deployment_handle("Decoder", app_name)
    seen: dict[str, int] = {}
    want = replicas("Decoder", app_name=app_name)
    deadline = time.monotonic() + 15
    while len(seen) < want and time.monotonic() < deadline:
        out = handle.calls.remote().result(timeout_s=15)
        seen[out["replica"]] = out["calls"]
    return sum(seen.values())


def stream_clips(corpus: Path, clip_frames: int = 16) -> list[dict]:
    """The corpus's long streams cut into consecutive 2 s mp4 clips (re-encoded from decoded
    frames, as a camera would send them), with each clip's ground-truth event index (-1 when its
    midpoint falls in a pause)."""
    import decord

    from pipelines.synth.writer import encode_mp4

    out = []
    for line in (corpus / "streams.jsonl").read_text().splitlines():
        rec = json.loads(line)
        vr = decord.VideoReader(str(corpus / rec["video"]), num_threads=1)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        fps = rec["fps"]
        clips, events = [], []
        for i in range(len(frames) // clip_frames):
            mid = (i + 0.5) * clip_frames / fps
            # -1: a pause (no event); streams.jsonl lists pauses apart from events
            ev = next((j for j, e in enumerate(rec["events"]) if e["start"] <= mid < e["end"]), -1)
            clips.append(encode_mp4(frames[i * clip_frames : (i + 1) * clip_frames], fps))
            events.append(ev)
        out.append(
            {
                "id": rec["id"],
                "clips": clips,
                "clip_event": np.array(events),
                "events": rec["events"],
            }
        )
    return out
