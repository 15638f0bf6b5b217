"""Scale to zero, for real (issue 14, acceptance 6).

A side app runs the packaged Decoder autoscaling config (min_replicas 0) with short delays. Once
Serve reports the Decoder idle at zero replicas, a caption request and a stream clip arrive
together: the caption answers 200 within the retry budget (the ingress waits for the cold start),
the stream clip answers at once with its caption `pending`, and that caption is filled in as
soon as the Decoder is up (GET /v1/streams/{id}/events shows it).
"""

from __future__ import annotations

import base64
import threading
import time

import httpx

from serve import config as sc
from tests.serve import _app

NAME = "zero"
BUDGET_S = 120.0
WAIT_S = 0.5  # a stream request's wait for its caption: far below any cold start


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _decoder_replicas() -> int:
    """Decoder replicas of the side app in any state (starting and stopping ones count)."""
    from ray import serve

    app = serve.status().applications.get(NAME)
    if app is None or "Decoder" not in app.deployments:
        return -1
    return int(sum(app.deployments["Decoder"].replica_states.values()))


def _wait(cond, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_decoder_at_zero_answers_captions_and_fills_pending_ones(
    ray_session, clips, model_dir, synth_corpus
):
    (packaged,) = [
        d for d in sc.app_entry(sc.load_config())["deployments"] if d["name"] == "Decoder"
    ]
    scaling = packaged["autoscaling_config"]
    assert scaling["min_replicas"] == 0  # the shipped config lets the Decoder sit at zero
    fast = {
        **scaling,
        "max_replicas": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 1,
        "downscale_to_zero_delay_s": 1,
    }
    zero = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}
    side = _app.deploy_side(
        NAME,
        {
            "model_uri": model_dir,
            "detector": _app.DETECTOR,
            "decode_retry_budget_s": BUDGET_S,
            "stream_decode_wait_s": WAIT_S,
        },
        {
            "Ingress": {"num_replicas": 1, "ray_actor_options": _app.SMALL},
            "Encoder": {"autoscaling_config": _app.ONE, "ray_actor_options": _app.SMALL},
            "TextEncoder": {"autoscaling_config": zero, "ray_actor_options": _app.SMALL},
            "Decoder": {"autoscaling_config": fast, "ray_actor_options": _app.SMALL},
        },
    )
    try:
        with httpx.Client(base_url=side.base, timeout=BUDGET_S + 30) as c:
            # warm the Encoder path (and the stream store) while the Decoder idles down
            assert c.post("/v1/embed", json={"clip_b64": _b64(clips["a"])}).status_code == 200
            _wait(lambda: _decoder_replicas() == 0, "the idle Decoder to reach zero replicas")

            caption: dict = {}

            def ask_caption():
                t0 = time.monotonic()
                with httpx.Client(base_url=side.base, timeout=BUDGET_S + 30) as c2:
                    r = c2.post("/v1/caption", json={"clip_b64": _b64(clips["b"])})
                caption.update(status=r.status_code, body=r.json(), s=time.monotonic() - t0)

            t = threading.Thread(target=ask_caption)
            t.start()
            stream = _app.stream_clips(synth_corpus)[0]["clips"]
            r = c.post("/v1/streams/cold-1/clips", json={"clip_b64": _b64(stream[0]), "seq": 0})
            assert r.status_code == 200, r.text
            (ev,) = r.json()["events"]  # a stream's first clip always decodes
            assert ev["status"] == "pending" and ev["caption"] is None, ev
            t.join(timeout=BUDGET_S + 60)
            assert caption["status"] == 200, caption
            assert isinstance(caption["body"]["caption"], str)
            assert caption["s"] < BUDGET_S, caption
            print(f"caption from zero Decoder replicas in {caption['s']:.1f}s")
            assert _decoder_replicas() >= 1

            def filled() -> bool:
                events = c.get("/v1/streams/cold-1/events").json()["events"]
                return all(e["status"] == "decoded" and e["caption"] for e in events)

            _wait(filled, "the pending caption to be filled", timeout_s=BUDGET_S)
    finally:
        _app.remove_side(side)
