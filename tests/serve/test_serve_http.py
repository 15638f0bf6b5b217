"""Real HTTP against the real Serve app (serve/serve_config.yaml deployed to the session's Ray
cluster, two ingress replicas, a saved tiny model loaded with from_pretrained, real mp4 clips).

Covers every endpoint, a table of bad inputs (each a 4xx JSON error, no replica crash),
selective decoding counted by the Decoder itself, stream state across two ingress replicas and
the Prometheus metrics. (Killing the Decoder is in test_serve_scaling.py; the no-crash check
compares replicas with its own snapshot, so it does not need to run before that.)
"""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import pytest

from tests.serve import _app
from tests.serve._app import DETECTOR, MAX_BYTES, TOKEN


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _embed(c: httpx.Client, data: bytes, **kw) -> np.ndarray:
    r = c.post("/v1/embed", json={"clip_b64": _b64(data), **kw})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embedding"], np.float32)


# ------------------------------------------------------------------------------- endpoints


def test_docs_health_ready(app):
    c = app["client"]
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"]["num_frames"] == 16
    spec = c.get("/openapi.json").json()
    for path in ("/v1/embed", "/v1/caption", "/v1/classify", "/v1/streams/{stream_id}/clips"):
        assert path in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
    docs = c.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_embed_upload_base64_and_uri_agree(app, clips):
    c = app["client"]
    e_b64 = _embed(c, clips["a"])
    r = c.post("/v1/embed", files={"clip": ("a.mp4", clips["a"], "video/mp4")})
    assert r.status_code == 200, r.text
    body = r.json()
    e_up = np.asarray(body["embedding"], np.float32)
    r = c.post("/v1/embed", json={"uri": str(clips["allowed_dir"] / "a.mp4")})
    assert r.status_code == 200, r.text
    e_uri = np.asarray(r.json()["embedding"], np.float32)
    r = c.post("/v1/embed", json={"uri": app["s3"].uri("serve-clips", "a.mp4")})
    assert r.status_code == 200, r.text
    e_s3 = np.asarray(r.json()["embedding"], np.float32)
    assert body["dim"] == e_up.shape[0] == 256 and body["frames"] == 16
    assert abs(float(np.linalg.norm(e_up)) - 1) < 1e-4
    for e in (e_up, e_uri, e_s3):
        np.testing.assert_allclose(e, e_b64, atol=1e-4)
    # another clip, and a query, each change the prediction
    assert float(e_b64 @ _embed(c, clips["b"])) < 1 - 1e-4
    assert float(e_b64 @ _embed(c, clips["a"], query="what colour is the shape?")) < 1 - 1e-4


def test_caption_calls_decoder_and_classify_does_not(app, clips):
    c = app["client"]
    before = _app.decoder_calls()
    r = c.post("/v1/caption", json={"clip_b64": _b64(clips["a"])})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["caption"], str)
    assert _app.decoder_calls() == before + 1
    labels = sorted({m["label"] for m in clips["manifest"]})[:6]
    r = c.post("/v1/classify", json={"clip_b64": _b64(clips["a"]), "labels": labels})
    assert r.status_code == 200, r.text
    ranked = r.json()["labels"]
    assert sorted(x["label"] for x in ranked) == labels
    scores = [x["score"] for x in ranked]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    # multipart with repeated label fields and top_k
    r = c.post(
        "/v1/classify",
        files={"clip": ("a.mp4", clips["a"], "video/mp4")},
        data={"labels": labels, "top_k": "2"},
    )
    assert r.status_code == 200, r.text
    assert [x["label"] for x in r.json()["labels"]] == [x["label"] for x in ranked[:2]]
    assert _app.decoder_calls() == before + 1  # classification never decodes


def test_stream_state_across_two_ingress_replicas(app, synth_corpus):
    """Clips of one stream land on both ingress replicas (no sticky sessions); the events the
    server emits are exactly what one detector fed the same embeddings in order emits."""
    from jepa.selective import OnlineDetector, OnlineDetectorConfig

    assert _app.replicas("Ingress") == 2
    stream = _app.stream_clips(synth_corpus)[0]["clips"][:14]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    seen_replicas: set[str] = set()
    emitted: list[int] = []
    for i, clip in enumerate(stream):
        # a fresh connection per clip, as independent camera uploads would come
        with httpx.Client(base_url=app["base"], headers=headers, timeout=60) as c:
            r = c.post(
                "/v1/streams/cam-1/clips",
                files={"clip": ("c.mp4", clip, "video/mp4")},
                data={"seq": str(i)},
            )
            assert r.status_code == 200, r.text
            seen_replicas.add(r.headers["x-vljepa-replica"])
            body = r.json()
            assert body["clip_index"] == i and body["time_s"] == pytest.approx(2 * i + 1)
            emitted += [e["clip_index"] for e in body["events"]]
            # an interleaved second stream must not disturb the first
            r = c.post("/v1/streams/cam-2/clips", json={"clip_b64": _b64(stream[-1 - i])})
            assert r.status_code == 200, r.text
    assert len(seen_replicas) == 2, seen_replicas
    c = app["client"]
    det = OnlineDetector(OnlineDetectorConfig(**DETECTOR))
    expected = [i for i, clip in enumerate(stream) if det.update(_embed(c, clip), 2 * i + 1)]
    assert emitted == expected and emitted[0] == 0
    ev = c.get("/v1/streams/cam-1/events").json()
    assert ev["clips"] == len(stream) and [e["clip_index"] for e in ev["events"]] == expected
    assert all(e["status"] == "decoded" for e in ev["events"])
    # a retried clip (same seq) is replayed, not applied twice
    r = c.post("/v1/streams/cam-1/clips", json={"clip_b64": _b64(stream[0]), "seq": 0})
    assert r.status_code == 200 and r.json()["replayed"] is True
    assert c.get("/v1/streams/cam-1/events").json()["clips"] == len(stream)
    for sid in ("cam-1", "cam-2"):
        assert c.delete(f"/v1/streams/{sid}").json() == {"stream_id": sid, "deleted": True}
        assert c.get(f"/v1/streams/{sid}/events").status_code == 404


def test_selective_decoding_over_http(app, synth_corpus):
    """Acceptance 2: a synthetic live stream sent clip by clip; the Decoder's own counter shows
    >= 2.85x fewer calls than decoding every clip while >= 90% of events get a caption."""
    c = app["client"]
    streams = _app.stream_clips(synth_corpus)
    before = _app.decoder_calls()
    n_clips = covered = n_events = 0
    for s in streams:
        sid = f"selective-{s['id']}"
        for i, clip in enumerate(s["clips"]):
            r = c.post(f"/v1/streams/{sid}/clips", json={"clip_b64": _b64(clip), "seq": i})
            assert r.status_code == 200, r.text
        n_clips += len(s["clips"])
        events = c.get(f"/v1/streams/{sid}/events").json()["events"]
        assert all(e["status"] == "decoded" and isinstance(e["caption"], str) for e in events)
        times = [e["time_s"] for e in events]
        span = len(s["clips"]) * 2.0
        for gt in s["events"]:
            if gt["start"] >= span:
                continue
            n_events += 1
            covered += any(gt["start"] <= t < gt["end"] for t in times)
    decodes = _app.decoder_calls() - before
    ratio = n_clips / max(decodes, 1)
    print(
        f"selective decoding: {n_clips} clips, {decodes} decoder calls ({ratio:.2f}x fewer), "
        f"{covered}/{n_events} events captioned"
    )
    assert ratio >= 2.85, (n_clips, decodes)
    assert covered / n_events >= 0.9, (covered, n_events)


def test_prometheus_metrics_exported(app):
    """Decoder calls, stream clips/decodes (the decode rate) and latencies reach Ray's
    Prometheus endpoint on the node."""
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    want = (
        "ray_vljepa_decoder_calls_total",
        "ray_vljepa_stream_clips_total",
        "ray_vljepa_stream_decodes_total",
        "ray_vljepa_request_latency_ms_bucket",
        "ray_vljepa_encoder_batch_size_bucket",
    )
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in want):
            break
        time.sleep(2)
    missing = [w for w in want if w not in text]
    assert not missing, missing
    calls = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_vljepa_decoder_calls_total{")
    )
    assert calls >= 1


# ------------------------------------------------------------------------------- bad inputs


def _mp(data: bytes, **fields):
    return {"files": {"clip": ("c.mp4", data, "video/mp4")}, "data": fields}


BAD = [
    # (name, method, path, kwargs builder, expected status)
    (
        "bad json",
        "post",
        "/v1/embed",
        lambda k: {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
    ),
    ("json not an object", "post", "/v1/embed", lambda k: {"json": [1, 2]}, 422),
    ("wrong field type", "post", "/v1/embed", lambda k: {"json": {"clip_b64": 123}}, 422),
    (
        "unknown field",
        "post",
        "/v1/embed",
        lambda k: {"json": {"clip_b64": _b64(k["a"]), "qeury": "x"}},
        422,
    ),
    ("no clip source", "post", "/v1/embed", lambda k: {"json": {"query": "x"}}, 422),
    ("bad base64", "post", "/v1/embed", lambda k: {"json": {"clip_b64": "!!!notbase64"}}, 400),
    (
        "not a video",
        "post",
        "/v1/embed",
        lambda k: _mp(b"this is not an mp4 file at all" * 20),
        415,
    ),
    ("empty file", "post", "/v1/embed", lambda k: _mp(b""), 400),
    ("too large", "post", "/v1/embed", lambda k: _mp(b"\0" * (MAX_BYTES + 1)), 413),
    ("too short", "post", "/v1/embed", lambda k: {"json": {"clip_b64": _b64(k["one_frame"])}}, 422),
    (
        "unsupported content type",
        "post",
        "/v1/embed",
        lambda k: {"content": b"x", "headers": {"content-type": "text/plain"}},
        415,
    ),
    (
        "uri outside prefixes",
        "post",
        "/v1/embed",
        lambda k: {"json": {"uri": str(k["secret_file"])}},
        403,
    ),
    ("uri system file", "post", "/v1/embed", lambda k: {"json": {"uri": "/etc/passwd"}}, 403),
    (
        "uri ../ escape",
        "post",
        "/v1/embed",
        lambda k: {"json": {"uri": f"{k['allowed_dir']}/../{k['secret_file'].parent.name}/s.mp4"}},
        400,
    ),
    (
        "uri %2e%2e escape",
        "post",
        "/v1/embed",
        lambda k: {"json": {"uri": f"{k['allowed_dir']}/%2e%2e/x.mp4"}},
        400,
    ),
    (
        "s3 uri other prefix",
        "post",
        "/v1/embed",
        lambda k: {"json": {"uri": "s3://vljepa-test/serve-clips-private/a.mp4"}},
        403,
    ),
    (
        "uri missing file",
        "post",
        "/v1/embed",
        lambda k: {"json": {"uri": f"{k['allowed_dir']}/nope.mp4"}},
        404,
    ),
    (
        "labels wrong type",
        "post",
        "/v1/classify",
        lambda k: {"json": {"clip_b64": _b64(k["a"]), "labels": "cat"}},
        422,
    ),
    (
        "labels empty",
        "post",
        "/v1/classify",
        lambda k: {"json": {"clip_b64": _b64(k["a"]), "labels": []}},
        422,
    ),
    (
        "caption not a video",
        "post",
        "/v1/caption",
        lambda k: {"json": {"clip_b64": _b64(b"GIF89a" * 50)}},
        415,
    ),
    (
        "stream seq negative",
        "post",
        "/v1/streams/s1/clips",
        lambda k: {"json": {"clip_b64": _b64(k["a"]), "seq": -1}},
        422,
    ),
    (
        "stream seq gap",
        "post",
        "/v1/streams/gap-1/clips",
        lambda k: {"json": {"clip_b64": _b64(k["a"]), "seq": 5}},
        409,
    ),
    (
        "bad stream id",
        "post",
        "/v1/streams/bad$id/clips",
        lambda k: {"json": {"clip_b64": _b64(k["a"])}},
        400,
    ),
    ("unknown stream events", "get", "/v1/streams/nobody/events", lambda k: {}, 404),
    ("unknown stream delete", "delete", "/v1/streams/nobody", lambda k: {}, 404),
    (
        "wrong token",
        "post",
        "/v1/embed",
        lambda k: {
            "json": {"clip_b64": _b64(k["a"])},
            "headers": {"Authorization": "Bearer wrong"},
        },
        401,
    ),
    (
        "missing token",
        "get",
        "/v1/streams/nobody/events",
        lambda k: {"headers": {"Authorization": ""}},
        401,
    ),
    ("unknown route", "get", "/v1/nothing", lambda k: {}, 404),
]


@pytest.mark.parametrize(("name", "method", "path", "make", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_json_error(app, clips, name, method, path, make, status):
    r = app["client"].request(method, path, **make(clips))
    assert r.status_code == status, (name, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"], body


def _replicas_reached_by_bad_inputs() -> dict[str, tuple[str, int]]:
    """Alive replica actors of the deployments a bad request can reach: actor id -> (class, pid).
    (The Decoder is not among them: every bad caption request is refused before it.)"""
    from ray.util.state import list_actors

    prefixes = tuple(f"ServeReplica:{_app.APP}:{d}" for d in ("Ingress", "Encoder", "TextEncoder"))
    return {
        a.actor_id: (a.class_name, a.pid)
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        if a.class_name.startswith(prefixes)
    }


def test_bad_inputs_crashed_nothing(app, clips):
    """The whole bad-input table, sent here: afterwards the same ingress and model replica
    processes (actor ids and pids from before) are alive and a good request succeeds. It
    compares with its own snapshot, so replicas that other tests killed or replaced (or a
    demo's, on the shared cluster) do not matter."""
    c = app["client"]
    before = _replicas_reached_by_bad_inputs()
    kinds = sorted({cls.rsplit(":", 1)[1] for cls, _ in before.values()})
    assert kinds == ["Encoder", "Ingress", "TextEncoder"], before
    for name, method, path, make, status in BAD:
        r = c.request(method, path, **make(clips))
        assert r.status_code == status, (name, r.status_code, r.text)
    assert (
        c.post("/v1/embed", files={"clip": ("a.mp4", clips["a"], "video/mp4")}).status_code == 200
    )
    after = _replicas_reached_by_bad_inputs()
    gone = {k: v for k, v in before.items() if after.get(k) != v}
    assert not gone, f"replicas died or were replaced: {sorted(gone.values())}"
