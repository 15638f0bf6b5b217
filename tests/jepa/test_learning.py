"""Learning works: the tiny model (real MiniLM Y-encoder) trained on pre-extracted X-encoder
features of 64 real synthetic mp4 clips retrieves the right clips from their captions.

Real parts: the synthetic corpus writer, mp4 decoding with decord, the frozen tiny V-JEPA 2, the
real MiniLM. Hits count by event label (several clips share one caption), as the metrics do.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from jepa.config import VLJEPAConfig
from jepa.model import VLJEPA

CLIPS = 64
# 200 steps ended at R@1 0.96 alone and 0.92 inside the full suite, where in-process code had
# left torch on 1 thread (another reduction order). The test now pins its thread count, and 300
# steps leave a margin above the 0.95 it asks for.
STEPS = 300
THREADS = 2
LR = 2e-3


def _decode(path: str, n: int) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, num_threads=1)
    idx = np.linspace(0, len(vr) - 1, n).round().astype(int)
    return vr.get_batch(list(idx)).asnumpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pipelines.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth64")
    generate(SynthConfig(out=str(out), clips=CLIPS, streams=0, seed=0, workers=1))
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return out, rows


def _text_to_video_r1(model: VLJEPA, feats: torch.Tensor, labels: list[str], queries, q_labels):
    with torch.no_grad():
        video = model.predict(feats)
        text = model.embed_text(queries)
    top = (text @ video.T).argmax(1).tolist()
    return float(np.mean([labels[i] == lab for i, lab in zip(top, q_labels, strict=True)]))


@pytest.fixture
def pinned_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(prev)


def test_tiny_model_learns_text_to_video_retrieval(corpus, pinned_threads):  # noqa: ARG001
    """The predictor (and Y head) learn; the MiniLM backbone is held at its pretrained weights
    here so each step costs one small predictor pass (its 0.05x-lr training is covered by the
    gradient test in test_model.py). Tokens are spatially pooled 4x4 -> 2x2 (a config option)."""
    out, rows = corpus
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = VLJEPAConfig.preset("tiny")
    cfg.x_encoder.pool_spatial = 2  # 8 x 2 x 2 = 32 tokens per clip
    model = VLJEPA.from_config(cfg)
    x = model.x_encoder
    frames = np.stack([_decode(os.path.join(out, r["video"]), x.num_frames) for r in rows])
    feats = torch.from_numpy(x.encode_numpy(frames)).float()  # "pre-extracted", as stored
    labels = [r["label"] for r in rows]
    caption_of = {r["label"]: r["caption"] for r in rows}
    events = list(caption_of)
    captions = [caption_of[e] for e in events]
    clips_of = {e: [i for i, r in enumerate(rows) if r["label"] == e] for e in events}
    before = _text_to_video_r1(model, feats, labels, captions, events)

    # One clip per event per step: every caption in the batch is distinct, so InfoNCE has no
    # false negatives (several clips share one caption). The caption set is fixed.
    tok = model.y_encoder.tokenize(captions)
    with torch.no_grad():
        pooled = model.y_encoder.pooled(tok["input_ids"], tok["attention_mask"])
    opt = torch.optim.AdamW(model.param_groups(lr=LR, weight_decay=0.0))
    gen = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(STEPS):
        idx = [
            clips_of[e][int(torch.randint(len(clips_of[e]), (1,), generator=gen))] for e in events
        ]
        loss, _ = model.loss(model.predictor(feats[idx]), model.y_encoder.head(pooled))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()

    r1 = _text_to_video_r1(model, feats, labels, captions, events)
    paraphrases = [(p, r["label"]) for r in rows for p in r["paraphrases"]]
    para_r1 = _text_to_video_r1(
        model, feats, labels, [p for p, _ in paraphrases], [e for _, e in paraphrases]
    )
    print(
        f"\ntext->video R@1 {before:.2f} -> {r1:.2f} over {len(captions)} captions, {CLIPS} clips "
        f"(paraphrase queries, never trained on: {para_r1:.2f}); loss {losses[0]:.2f} -> "
        f"{np.mean(losses[-10:]):.2f}; {time.perf_counter() - t0:.1f} s"
    )
    assert np.mean(losses[-10:]) < 0.5 * losses[0]
    assert r1 >= 0.95
    assert before < 0.5  # the gain is learnt, not given by the encoders
