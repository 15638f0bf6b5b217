"""POST /v1/vqa (discriminative visual question answering) over real HTTP, on the package's app
(tests/serve/conftest.py: a saved tiny-text model that declares `trained_with_queries`, with
untrained weights: the tests check the plumbing, not the answers; the answers of a trained
stage-2 model are tests/serve/test_vqa_stage2.py's).

- with candidates: the answer is one of them, scores come best first, and each score is the
  cosine of /v1/embed's prediction for (clip, query=question) with the candidate's embedding by
  the served TextEncoder; JSON and multipart (repeated `candidates` fields) agree;
- without candidates: the Decoder writes the answer (`decoded`, no scores, one Decoder call);
- every bad input (blank or missing question, question too long, empty / too many / blank /
  duplicate candidates, wrong types) is a 4xx JSON error, never a 500.

A stage-1 model's 422 for questions is tested beside its 422 for `query`, on the stage-1 app of
tests/serve/test_query_honesty.py.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.serve import _app

QUESTION = "what colour is the shape?"
CANDIDATES = ["red", "green", "blue", "yellow", "a square", "nothing happens"]
MAX_CANDIDATES = 256  # AppArgs.max_candidates default
MAX_QUERY_CHARS = 2000  # AppArgs.max_query_chars default


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def vqa(app) -> httpx.Client:
    """The package app's client (its bearer token included)."""
    return app["client"]


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def _multipart(clip: bytes, **fields) -> dict:
    return {"files": {"clip": ("c.mp4", clip, "video/mp4")}, "data": fields}


# ------------------------------------------------------------------------------- answers


def test_openapi_documents_vqa(vqa):
    spec = vqa.get("/openapi.json").json()
    post = spec["paths"]["/v1/vqa"]["post"]
    content = post["requestBody"]["content"]
    assert {"question", "candidates"} <= set(content["application/json"]["schema"]["properties"])
    form = content["multipart/form-data"]["schema"]["properties"]
    assert form["candidates"]["type"] == "array" and form["question"]["type"] == "string"
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/VQAResponse")
    assert {"422", "503"} <= set(post["responses"])


def test_candidates_ranked_by_cosine_with_the_query_prediction(vqa, clips):
    from ray import serve

    body = _ok(
        vqa.post(
            "/v1/vqa",
            json={"clip_b64": _b64(clips["a"]), "question": QUESTION, "candidates": CANDIDATES},
        )
    )
    assert body["decoded"] is False and body["question"] == QUESTION
    assert body["duration_s"] > 0
    ranked = [s["candidate"] for s in body["scores"]]
    scores = [s["score"] for s in body["scores"]]
    assert sorted(ranked) == sorted(CANDIDATES)
    assert body["answer"] == ranked[0] and body["answer"] in CANDIDATES
    assert scores == sorted(scores, reverse=True)

    # the same numbers from the parts: /v1/embed with the question as query, and the served
    # TextEncoder's embeddings of the candidates
    pred = np.asarray(
        _ok(vqa.post("/v1/embed", json={"clip_b64": _b64(clips["a"]), "query": QUESTION}))[
            "embedding"
        ],
        np.float32,
    )
    text = serve.get_deployment_handle("TextEncoder", _app.APP).encode.remote(ranked).result()
    np.testing.assert_allclose(np.asarray(text, np.float32) @ pred, scores, atol=1e-4)
    # the question matters: without it the prediction (so the scores) differ
    plain = np.asarray(
        _ok(vqa.post("/v1/embed", json={"clip_b64": _b64(clips["a"])}))["embedding"], np.float32
    )
    assert float(plain @ pred) < 1 - 1e-4

    # multipart, candidates as repeated fields: the same answer and scores
    mp = _ok(
        vqa.post("/v1/vqa", **_multipart(clips["a"], question=QUESTION, candidates=CANDIDATES))
    )
    assert mp["answer"] == body["answer"] and mp["decoded"] is False
    assert [s["candidate"] for s in mp["scores"]] == ranked
    np.testing.assert_allclose([s["score"] for s in mp["scores"]], scores, atol=1e-4)

    # candidates are stripped; one candidate is the answer
    one = _ok(
        vqa.post(
            "/v1/vqa",
            json={"clip_b64": _b64(clips["b"]), "question": QUESTION, "candidates": ["  red "]},
        )
    )
    assert one["answer"] == "red" and [s["candidate"] for s in one["scores"]] == ["red"]


def test_without_candidates_the_decoder_answers(vqa, clips):
    before = _app.decoder_calls(_app.APP)
    body = _ok(vqa.post("/v1/vqa", json={"clip_b64": _b64(clips["a"]), "question": QUESTION}))
    assert body["decoded"] is True and body["scores"] == [] and body["question"] == QUESTION
    assert isinstance(body["answer"], str) and body["duration_s"] > 0
    mp = _ok(vqa.post("/v1/vqa", **_multipart(clips["b"], question=QUESTION)))
    assert mp["decoded"] is True and mp["scores"] == [] and isinstance(mp["answer"], str)
    assert _app.decoder_calls(_app.APP) == before + 2
    # with candidates the Decoder is not called
    body = {"clip_b64": _b64(clips["a"]), "question": QUESTION, "candidates": ["red", "blue"]}
    _ok(vqa.post("/v1/vqa", json=body))
    assert _app.decoder_calls(_app.APP) == before + 2


# ------------------------------------------------------------------------------- bad inputs


def _json(k: dict, **fields) -> dict:
    return {"json": {"clip_b64": _b64(k["a"]), **fields}}


MANY = [f"answer {i}" for i in range(10_000)]

BAD = [
    # (name, request kwargs builder, status, error, text in detail)
    ("no question", lambda k: _json(k), 422, "invalid request", "question"),
    ("empty question", lambda k: _json(k, question=""), 422, "invalid request", "question"),
    ("blank question", lambda k: _json(k, question=" \t\n"), 422, "invalid request", "question"),
    ("question not a string", lambda k: _json(k, question=7), 422, "invalid request", "question"),
    (
        "question too long",
        lambda k: _json(k, question="x" * (MAX_QUERY_CHARS + 1)),
        422,
        "question too long",
        str(MAX_QUERY_CHARS),
    ),
    (
        "candidates empty",
        lambda k: _json(k, question=QUESTION, candidates=[]),
        422,
        "invalid request",
        "candidates",
    ),
    (
        "candidates a string",
        lambda k: _json(k, question=QUESTION, candidates="red"),
        422,
        "invalid request",
        "candidates",
    ),
    (
        "candidates not strings",
        lambda k: _json(k, question=QUESTION, candidates=[1, 2]),
        422,
        "invalid request",
        "candidates",
    ),
    (
        "10000 candidates",
        lambda k: _json(k, question=QUESTION, candidates=MANY),
        422,
        "too many candidates",
        f"max_candidates is {MAX_CANDIDATES}",
    ),
    (
        "one over max_candidates",
        lambda k: _json(k, question=QUESTION, candidates=MANY[: MAX_CANDIDATES + 1]),
        422,
        "too many candidates",
        f"max_candidates is {MAX_CANDIDATES}",
    ),
    (
        "empty candidate",
        lambda k: _json(k, question=QUESTION, candidates=["red", ""]),
        422,
        "invalid candidate",
        "empty",
    ),
    (
        "blank candidate",
        lambda k: _json(k, question=QUESTION, candidates=["red", "  "]),
        422,
        "invalid candidate",
        "empty",
    ),
    (
        "candidate too long",
        lambda k: _json(k, question=QUESTION, candidates=["y" * (MAX_QUERY_CHARS + 1)]),
        422,
        "invalid candidate",
        str(MAX_QUERY_CHARS),
    ),
    (
        "duplicate candidates",
        lambda k: _json(k, question=QUESTION, candidates=["red", "blue", "red"]),
        422,
        "duplicate candidates",
        "red",
    ),
    (
        "duplicates after stripping",
        lambda k: _json(k, question=QUESTION, candidates=["red", " red "]),
        422,
        "duplicate candidates",
        "red",
    ),
    (
        "unknown field",
        lambda k: _json(k, question=QUESTION, query=QUESTION),
        422,
        "invalid request",
        "query",
    ),
    (
        "no clip source",
        lambda k: {"json": {"question": QUESTION}},
        422,
        "invalid request",
        "clip_b64",
    ),
    (
        "not a video",
        lambda k: {"json": {"clip_b64": _b64(b"GIF89a" * 50), "question": QUESTION}},
        415,
        "not a video",
        "",
    ),
    (
        "multipart no question",
        lambda k: _multipart(k["a"], candidates=["red", "blue"]),
        422,
        "invalid request",
        "question",
    ),
    (
        "multipart blank question",
        lambda k: _multipart(k["a"], question="  "),
        422,
        "invalid request",
        "question",
    ),
    (
        "multipart empty candidate",
        lambda k: _multipart(k["a"], question=QUESTION, candidates=["red", ""]),
        422,
        "invalid candidate",
        "empty",
    ),
    (
        "multipart duplicate candidates",
        lambda k: _multipart(k["a"], question=QUESTION, candidates=["red", "red"]),
        422,
        "duplicate candidates",
        "red",
    ),
    (
        "multipart one over max_candidates",
        lambda k: _multipart(k["a"], question=QUESTION, candidates=MANY[: MAX_CANDIDATES + 1]),
        422,
        "too many candidates",
        f"max_candidates is {MAX_CANDIDATES}",
    ),
    (
        "multipart 10000 candidates",
        lambda k: _multipart(k["a"], question=QUESTION, candidates=MANY),
        422,
        "too many fields",
        f"candidates at most {MAX_CANDIDATES}",
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "status", "error", "detail"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_input_is_a_4xx_json_error(vqa, clips, name, make, status, error, detail):
    r = vqa.post("/v1/vqa", **make(clips))
    assert r.status_code == status, (name, r.status_code, r.text[:500])
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    assert detail in str(body["detail"]), body
