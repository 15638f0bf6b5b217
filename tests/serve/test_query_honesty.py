"""Query honesty and a model that knows how to serve itself, over real HTTP.

Two models, one Serve app each, side by side on the session's Serve: the package's app (its
model declares `trained_with_queries` and stores a detector that the app's explicit `detector`
overrides) and a second app whose model was NOT trained with queries and stores the detector the
app must serve (no `detector` in the app's args).

- every endpoint that takes a clip (/v1/embed, /v1/caption, /v1/classify,
  /v1/streams/{id}/clips), as JSON and as multipart, answers a non-empty `query` with 422
  {"error": "query not supported", ...} unless the model was trained with queries; the same
  request without the query (or with an empty one) is a 200; a rejected stream clip does not
  advance the stream;
- POST /v1/vqa on that stage-1 model is a 422 too (it never saw a question), with candidates
  or without, as JSON and multipart: nothing is decoded or ranked;
- the detector served (GET /readyz, the stream store's settings, and the events a stream emits)
  is the model's stored one, or the app's explicit one when it gives one.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.serve import _app
from tests.serve.conftest import _wait_ready

NOQ = "vljepa-noquery"
# Stored in the second model's config.json; it decodes several times on the untrained tiny
# model's stream (the defaults, threshold 0.15, only once).
NOQ_DETECTOR = {"threshold": 0.003, "min_gap": 2.0, "smoothing": 0.0}
QUERY = "what colour is the shape?"
ENDPOINTS = ("embed", "caption", "classify", "stream")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def noquery_model(tmp_path_factory) -> str:
    from jepa.config import DetectorConfig
    from jepa.model import VLJEPA

    d = tmp_path_factory.mktemp("noquery-model")
    model = VLJEPA.from_preset("tiny-text")
    model.attach_decoder()
    assert model.config.trained_with_queries is False  # the default until stage 2
    model.config.detector = DetectorConfig(**NOQ_DETECTOR)
    model.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def noquery(app, noquery_model):
    """The second app (next to the package's `app`, which must be up first: deploying it
    restarts Serve)."""
    side = _app.deploy_side(NOQ, {"model_uri": noquery_model})
    try:
        with httpx.Client(base_url=side.base, timeout=60) as c:
            _wait_ready(c)
            yield {"client": c, "side": side}
    finally:
        _app.remove_side(side)


def _request(
    c: httpx.Client, endpoint: str, clip: bytes, form: str, labels: list[str], **fields
) -> httpx.Response:
    """POST one clip to `endpoint` as JSON (base64) or multipart, with extra fields."""
    path = {
        "embed": "/v1/embed",
        "caption": "/v1/caption",
        "classify": "/v1/classify",
        "stream": f"/v1/streams/honesty-{form}/clips",
    }[endpoint]
    if endpoint == "classify":
        fields["labels"] = labels
    if endpoint == "stream":
        fields["seq"] = 0
    if form == "json":
        return c.post(path, json={"clip_b64": _b64(clip), **fields})
    data = {k: (v if isinstance(v, list) else str(v)) for k, v in fields.items()}
    return c.post(path, files={"clip": ("c.mp4", clip, "video/mp4")}, data=data)


@pytest.mark.parametrize("form", ["json", "multipart"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_query_refused_unless_trained_with_queries(noquery, clips, endpoint, form):
    c = noquery["client"]
    labels = sorted({m["label"] for m in clips["manifest"]})[:4]
    r = _request(c, endpoint, clips["a"], form, labels, query=QUERY)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "query not supported", body
    assert "not trained with queries" in body["detail"], body
    # the same request without the query is served (the refused stream clip applied nothing:
    # seq 0 is still the next one)
    r = _request(c, endpoint, clips["a"], form, labels)
    assert r.status_code == 200, r.text
    if endpoint == "stream":
        assert r.json()["clip_index"] == 0 and r.json()["replayed"] is False
        assert c.delete(f"/v1/streams/honesty-{form}").status_code == 200
    else:  # an empty query is no query
        r = _request(c, endpoint, clips["a"], form, labels, query="")
        assert r.status_code == 200, r.text


def test_stage1_model_refuses_questions(noquery, clips):
    """/v1/vqa on a model not trained with queries: 422 with the reason, as JSON and multipart,
    with candidates or without; the same app embeds the clip when no question is asked."""
    c = noquery["client"]
    assert c.get("/readyz").json()["model"]["trained_with_queries"] is False
    clip = {"clip": ("c.mp4", clips["a"], "video/mp4")}
    requests = [
        {"json": {"clip_b64": _b64(clips["a"]), "question": QUERY}},
        {"json": {"clip_b64": _b64(clips["a"]), "question": QUERY, "candidates": ["a", "b"]}},
        {"files": clip, "data": {"question": QUERY}},
        {"files": clip, "data": {"question": QUERY, "candidates": ["a", "b"]}},
    ]
    for kw in requests:
        r = c.post("/v1/vqa", **kw)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "query not supported", body
        assert "not trained with queries" in body["detail"], body
        assert "never saw a question" in body["detail"], body
    r = c.post("/v1/embed", json={"clip_b64": _b64(clips["a"])})
    assert r.status_code == 200, r.text


def test_query_served_by_a_model_trained_with_queries(app, clips):
    c = app["client"]
    labels = sorted({m["label"] for m in clips["manifest"]})[:4]
    for endpoint in ENDPOINTS:
        for form in ("json", "multipart"):
            r = _request(c, endpoint, clips["a"], form, labels, query=QUERY)
            assert r.status_code == 200, (endpoint, form, r.text)
        if endpoint == "stream":
            for form in ("json", "multipart"):
                c.delete(f"/v1/streams/honesty-{form}")
    # the query reaches the predictor
    plain = c.post("/v1/embed", json={"clip_b64": _b64(clips["a"])}).json()["embedding"]
    asked = c.post("/v1/embed", json={"clip_b64": _b64(clips["a"]), "query": QUERY}).json()
    assert asked["query"] == QUERY
    assert float(np.dot(plain, asked["embedding"])) < 1 - 1e-4


def test_served_detector_is_the_models_stored_one(noquery, synth_corpus):
    """No `detector` in the app's args: /readyz, the stream store and the events of a stream all
    follow the detector stored in the model's config.json (not the defaults)."""
    import ray

    from jepa.config import DetectorConfig
    from jepa.selective import OnlineDetector, OnlineDetectorConfig
    from serve.streams import NAMESPACE, store_name

    c = noquery["client"]
    ready = c.get("/readyz").json()
    assert ready["detector"] == NOQ_DETECTOR and ready["detector_source"] == "model", ready
    assert ready["model"]["detector"] == NOQ_DETECTOR
    assert ready["model"]["trained_with_queries"] is False
    assert ready["model"]["sampling"]["frames"] == ready["model"]["num_frames"] == 16

    stream = _app.stream_clips(synth_corpus)[0]["clips"][:14]
    emitted: list[int] = []
    embeddings = []
    for i, clip in enumerate(stream):
        r = c.post("/v1/streams/detector-cam/clips", json={"clip_b64": _b64(clip), "seq": i})
        assert r.status_code == 200, r.text
        emitted += [e["clip_index"] for e in r.json()["events"]]
        r = c.post("/v1/embed", json={"clip_b64": _b64(clip)})
        embeddings.append(np.asarray(r.json()["embedding"], np.float32))
    store = ray.get_actor(store_name(NOQ), namespace=NAMESPACE)
    assert ray.get(store.settings.remote()) == NOQ_DETECTOR

    def replay(settings: dict) -> list[int]:
        det = OnlineDetector(OnlineDetectorConfig(**settings))
        return [i for i, e in enumerate(embeddings) if det.update(e, 2 * i + 1)]

    assert emitted == replay(NOQ_DETECTOR), emitted
    assert emitted != replay(DetectorConfig().model_dump()), "the test cannot tell them apart"
    assert c.delete("/v1/streams/detector-cam").status_code == 200


def test_explicit_detector_overrides_the_models(app):
    """The package's app gives `detector` in its args: that one is served, not the model's."""
    ready = app["client"].get("/readyz").json()
    assert ready["model"]["detector"] == _app.STORED_DETECTOR
    assert ready["detector"] == _app.DETECTOR and ready["detector_source"] == "config", ready
    assert ready["model"]["trained_with_queries"] is True
