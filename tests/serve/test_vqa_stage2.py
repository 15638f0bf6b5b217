"""`/v1/vqa` on a served stage-2 model (issue 13, acceptance 4): the session's SFT model, served
from the Model Registry, answers held-out paraphrases about val clips over real HTTP (the clip
uploaded as mp4, the question and its candidates in the body), and `query` works on the other
endpoints of a model trained with queries."""

from __future__ import annotations

import base64
import json

import pytest

from tests.serve.conftest import serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

APP = "vljepa-sft"
PER_TYPE = 6  # val questions asked per type over HTTP


@pytest.fixture(scope="module")
def served(ray_session, stage2_model):  # noqa: ARG001
    args = {"model_uri": stage2_model.uri}
    with serving(APP, args, stage2_model.cfg.tracking_uri, ready_timeout_s=180) as c:
        yield c


def test_vqa_answers_held_out_paraphrases_over_http(served, stage2_model, embedded_corpus):
    """Every type asked over HTTP; the served model answers as the exported model does in
    process on the same clip (same sampler, same question, same candidates), and above chance."""
    import numpy as np
    import torch

    from jepa.model import VLJEPA
    from pipelines.clips import Sampling, decode_clip

    model = VLJEPA.from_pretrained(stage2_model.result.export_dir)
    sampling = Sampling.of(model.config.x_encoder)
    corpus = embedded_corpus.corpus
    videos = {
        r["id"]: r["video"]
        for r in map(json.loads, (corpus / "manifest.jsonl").read_text().splitlines())
    }
    asked: dict[str, list] = {}
    for q in map(json.loads, (corpus / "questions.jsonl").read_text().splitlines()):
        if q["split"] == "val" and len(asked.setdefault(q["type"], [])) < PER_TYPE:
            asked[q["type"]].append(q)
    right = same = total = 0
    chance = 0.0
    for qs in asked.values():
        for q in qs:
            data = (corpus / videos[q["clip_id"]]).read_bytes()
            r = served.post(
                "/v1/vqa",
                json={
                    "clip_b64": base64.b64encode(data).decode(),
                    "question": q["question"],
                    "candidates": q["candidates"],
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["answer"] in q["candidates"] and not body["decoded"]
            assert [s["score"] for s in body["scores"]] == sorted(
                (s["score"] for s in body["scores"]), reverse=True
            )
            with torch.no_grad():
                frames = torch.from_numpy(decode_clip(data, sampling)[None])
                pred = model.embed_video(frames, [q["question"]])[0]
                scores = model.embed_text(q["candidates"]) @ pred
            same += body["answer"] == q["candidates"][int(np.argmax(scores.numpy()))]
            right += body["answer"] == q["answer"]
            chance += 1 / len(q["candidates"])
            total += 1
    print(f"/v1/vqa: {right}/{total} right (chance {chance:.1f}), {same} as in process")
    assert len(asked) == 7 and total == 7 * PER_TYPE
    assert same >= total - 2, (same, total)  # near-ties may flip between processes
    assert right > 1.5 * chance, (right, chance, total)


def test_query_works_on_a_model_trained_with_queries(served, embedded_corpus):
    clip = next((embedded_corpus.corpus / "videos").glob("*.mp4")).read_bytes()
    b64 = base64.b64encode(clip).decode()
    plain = served.post("/v1/embed", json={"clip_b64": b64})
    asked = served.post("/v1/embed", json={"clip_b64": b64, "query": "what colour is the ball?"})
    assert plain.status_code == 200 and asked.status_code == 200, asked.text
    a, b = plain.json()["embedding"], asked.json()["embedding"]
    assert sum(x * y for x, y in zip(a, b, strict=True)) < 0.999  # the question changes it
    info = served.get("/readyz").json()["model"]
    assert info["trained_with_queries"] is True
