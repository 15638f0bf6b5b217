"""Shared by the serve tests: deploy the real config to the session's Ray cluster, build the
synthetic live streams, tear everything down so the rest of the suite gets its CPUs back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from serve import config as sc

APP = sc.APP_NAME
TOKEN = "serve-test-token-1234"
MAX_BYTES = 1_000_000
# Tuned for the untrained tiny model (see serve/serve_config.yaml): its predicted embeddings
# move ~0.0005 cosine within an event and ~0.02 across event changes.
DETECTOR = {"threshold": 0.0025, "min_gap": 2.0, "smoothing": 0.0}
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
    sc.deploy(cfg)
    time.sleep(1)
    sc.wait_running(APP, timeout_s=300)
    return cfg


def teardown(cfg: dict) -> None:
    from ray import serve

    from serve.streams import drop_store, store_name

    try:
        serve.delete(APP)
    finally:
        serve.shutdown()
        drop_store(store_name(APP, sc.app_entry(cfg).get("args", {}).get("stream_store", "")))


def replicas(deployment: str, states: tuple[str, ...] = ("RUNNING",)) -> int:
    """Replicas of a deployment in the given states, from Serve's status."""
    from ray import serve

    app = serve.status().applications.get(APP)
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


def decoder_calls() -> int:
    """The Decoder's own count of generated captions, summed over its running replicas (each
    replica answers for itself; ask through the handle until every replica was heard)."""
    from ray import serve

    handle = serve.get_deployment_handle("Decoder", APP)
    seen: dict[str, int] = {}
    want = replicas("Decoder")
    deadline = time.monotonic() + 15
    while len(seen) < want and time.monotonic() < deadline:
        out = handle.calls.remote().result(timeout_s=15)
        seen[out["replica"]] = out["calls"]
    return sum(seen.values())


def stream_clips(corpus: Path, clip_frames: int = 16) -> list[dict]:
    """The corpus's long streams cut into consecutive 2 s mp4 clips (re-encoded from decoded
    frames, as a camera would send them), with each clip's ground-truth event index."""
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
            ev = next(j for j, e in enumerate(rec["events"]) if e["start"] <= mid < e["end"])
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
