"""The model's contract: frozen X-encoder, bidirectional predictor, padding-blind pooling,
Y-encoder learning-rate group, exact save/load, MiniLM semantics, model-info against the paper."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from jepa.config import VLJEPAConfig
from jepa.model import VLJEPA


@pytest.fixture(scope="module")
def tiny_text() -> VLJEPA:
    return VLJEPA.from_preset("tiny-text").eval()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    # Non-square, longer clips than the encoder samples: preprocessing must resample and crop.
    return np.random.default_rng(0).integers(0, 256, (2, 20, 72, 96, 3), dtype=np.uint8)


def test_x_encoder_is_frozen_and_gets_no_gradients(tiny_text, frames):
    x = tiny_text.x_encoder
    assert all(not p.requires_grad for p in x.parameters())
    tiny_text.train()
    try:
        assert not x.training and not x.vjepa.training  # train() cannot unfreeze it
        tokens = x(frames)
        assert tokens.shape == (2, x.num_tokens, x.hidden_size) == (2, 128, 192)
        assert not tokens.requires_grad
        pred, target = tiny_text(tokens, **_targets(tiny_text, ["a", "b c"]))
        loss, _ = tiny_text.loss(pred, target)
        loss.backward()
        assert all(p.grad is None for p in x.parameters())
        assert tiny_text.predictor.in_proj.weight.grad is not None
        assert tiny_text.y_encoder.head.weight.grad is not None
    finally:
        tiny_text.zero_grad(set_to_none=True)
        tiny_text.eval()
    for group in tiny_text.param_groups(1e-3, 0.1):
        assert not any(p is q for p in group["params"] for q in x.parameters())


def test_x_encoder_preprocess_and_encode_numpy(tiny_text, frames):
    x = tiny_text.x_encoder
    pixels = x.preprocess(frames[0])
    assert pixels.shape == (1, x.num_frames, 3, x.image_size, x.image_size)
    assert pixels.dtype == torch.float32
    # ImageNet normalisation: a frame of the ImageNet mean colour maps to ~0, white to ~2.
    mean_rgb = np.broadcast_to(np.array([124, 116, 104], np.uint8), (16, 64, 64, 3))
    assert x.preprocess(mean_rgb).abs().max() < 0.02
    white = x.preprocess(np.full((16, 64, 64, 3), 255, np.uint8))
    assert torch.allclose(white[0, 0, :, 0, 0], torch.tensor([2.2489, 2.4286, 2.64]), atol=1e-3)
    out = x.encode_numpy(frames)
    assert out.dtype == np.float16 and out.shape == (2, 128, 192)
    assert np.allclose(out.astype(np.float32), x(frames).numpy(), atol=1e-2)


def test_x_encoder_is_identical_in_every_build():
    """Pre-embed workers and the server build the random tiny encoder separately."""
    from jepa.x_encoder import XEncoder

    cfg = VLJEPAConfig.preset("tiny").x_encoder
    torch.manual_seed(123)  # the caller's RNG state must not matter...
    a = XEncoder.from_config(cfg)
    state = torch.random.get_rng_state()
    b = XEncoder.from_config(cfg)
    assert torch.equal(state, torch.random.get_rng_state())  # ...nor be consumed
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_token_pooling_shrinks_the_grid(frames):
    from jepa.config import XEncoderConfig
    from jepa.x_encoder import XEncoder

    full = XEncoder.from_config(XEncoderConfig())
    pooled = XEncoder.from_config(XEncoderConfig(pool_temporal=2, pool_spatial=2))
    a, b = full(frames), pooled(frames)
    assert b.shape == (2, 16, 192) and pooled.num_tokens == 16
    # First pooled token = mean of the (2 x 2 x 2) block at the grid origin (order t, h, w).
    grid = a.reshape(2, 8, 4, 4, 192)
    assert torch.allclose(b[:, 0], grid[:, :2, :2, :2].mean((1, 2, 3)), atol=1e-5)
    # The stored form keeps its shape through Arrow's tensor column (a transposed, non-C-ordered
    # array came back from FixedShapeTensorArray as 192 x 16).
    import pyarrow as pa

    stored = pooled.encode_numpy(frames)
    assert stored.flags.c_contiguous
    col = pa.FixedShapeTensorArray.from_numpy_ndarray(stored)
    assert col.to_numpy_ndarray().shape == (2, 16, 192)
    np.testing.assert_array_equal(col.to_numpy_ndarray(), stored)


def _targets(model: VLJEPA, texts: list[str]) -> dict[str, torch.Tensor]:
    t = model.y_encoder.tokenize(texts)
    return {"target_ids": t["input_ids"], "target_mask": t["attention_mask"]}


def test_predictor_attention_is_bidirectional(tiny_text):
    """Changing the LAST query token changes the pooled output; with a causal mask the visual
    tokens (first) could not see it, so we also check the visual positions' states change."""
    p = tiny_text.predictor
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 192, generator=g)
    q = p.tokenize(["what colour is the ball"], 1)
    ids2 = q["input_ids"].clone()
    ids2[0, -1] = (ids2[0, -1] + 7) % p.llama.config.vocab_size
    captured: list[torch.Tensor] = []
    hook = p.llama.norm.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            a = p(x, q["input_ids"], q["attention_mask"])
            b = p(x, ids2, q["attention_mask"])
    finally:
        hook.remove()
    assert not torch.allclose(a, b)
    visual_a, visual_b = captured[0][:, :128], captured[1][:, :128]
    assert (visual_a - visual_b).abs().max() > 1e-4  # a later token reached earlier positions


def test_pooling_ignores_padding(tiny_text):
    p = tiny_text.predictor
    x = torch.randn(2, 128, 192, generator=torch.Generator().manual_seed(1))
    short, long = "red", "what happens to the big ball in this clip"
    batch = p.tokenize([short, long], 2)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # row 0 is padded
    alone = p.tokenize([short], 1)
    with torch.no_grad():
        together = p(x, batch["input_ids"], batch["attention_mask"])
        solo = p(x[:1], alone["input_ids"], alone["attention_mask"])
        # Garbage in the padded slots must not matter either.
        ids = batch["input_ids"].clone()
        ids[0, batch["attention_mask"][0] == 0] = 1234
        garbage = p(x, ids, batch["attention_mask"])
    assert torch.allclose(together[0], solo[0], atol=1e-5)
    assert torch.allclose(together[0], garbage[0], atol=1e-6)
    # No query at all (stage-1 captioning) and an empty query are both accepted.
    with torch.no_grad():
        q_none, q_empty = p.tokenize(None, 2), p.tokenize(["", ""], 2)
        none = p(x, q_none["input_ids"], q_none["attention_mask"])
        empty = p(x, q_empty["input_ids"], q_empty["attention_mask"])
    assert torch.allclose(none, empty) and none.shape == (2, tiny_text.config.shared_dim)


def test_y_encoder_group_has_0_05x_learning_rate(tiny_text):
    groups = tiny_text.param_groups(lr=2e-4, weight_decay=0.05)
    y_params = {id(p) for p in tiny_text.y_encoder.parameters()}
    pred_params = {id(p) for p in tiny_text.predictor.parameters()}
    seen = set()
    for g in groups:
        ids = {id(p) for p in g["params"]}
        seen |= ids
        if ids <= y_params:
            assert g["lr"] == pytest.approx(2e-4 * 0.05)
        else:
            assert ids <= pred_params | {id(tiny_text.logit_scale)}
            assert g["lr"] == pytest.approx(2e-4)
    assert seen == y_params | pred_params  # everything trainable, exactly once
    assert tiny_text.config.y_lr_mult == 0.05
    torch.optim.AdamW(groups)  # the groups are valid optimizer input


def _outputs(model: VLJEPA, frames: np.ndarray) -> dict:
    x = model.x_encoder(frames)
    out = {
        "x": x,
        "pred": model.predict_queries(x, ["what happens", "colour?"]),
        "text": model.embed_text(["the lamp turns off", "a dog runs"]),
        "scale": model.scale().detach(),
    }
    if model.y_decoder is not None:
        out["caption"] = model.y_decoder.generate(out["text"], max_new_tokens=6)
    return out


@pytest.mark.parametrize("preset", ["tiny-text", "tiny"])
def test_save_load_reproduces_outputs_exactly(preset, frames, tmp_path):
    cfg = VLJEPAConfig.preset(preset)
    cfg.learnable_temperature = True
    model = VLJEPA.from_config(cfg, with_decoder=True).eval()
    with torch.no_grad():  # moved away from init: the loaded weights, not a re-init, must match
        model.logit_scale.add_(0.3)
        model.predictor.head.bias.add_(0.1)
        model.y_encoder.head.bias.sub_(0.1)
    before = _outputs(model, frames)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["format_version"] >= 1 and saved["preset_name"] == preset
    loaded = VLJEPA.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.config.hash() == cfg.hash()
    after = _outputs(loaded, frames)
    for k, v in before.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, after[k]), k
        else:
            assert v == after[k], k


def test_save_load_without_decoder(tiny_text, tmp_path):
    assert tiny_text.y_decoder is None
    tiny_text.save_pretrained(tmp_path)
    loaded = VLJEPA.from_pretrained(tmp_path)
    assert loaded.y_decoder is None
    x = torch.randn(1, 128, 192)
    assert torch.equal(tiny_text.predict(x), loaded.predict(x))


def test_config_roundtrip_and_hash():
    for name in ("tiny", "tiny-text", "paper", "bench"):
        cfg = VLJEPAConfig.preset(name)
        assert VLJEPAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    tiny, text = VLJEPAConfig.preset("tiny"), VLJEPAConfig.preset("tiny-text")
    assert tiny.hash() != text.hash()  # different Y-encoder
    changed = VLJEPAConfig.preset("tiny")
    changed.predictor.arch["num_hidden_layers"] = 3
    assert changed.hash() == tiny.hash()  # the predictor does not affect pre-embedded data
    with pytest.raises(ValueError):
        VLJEPAConfig.preset("huge")


def test_minilm_y_encoder_puts_paraphrases_together():
    model = VLJEPA.from_preset("tiny")
    e = model.y_encoder.backbone_embed(["the lamp turns off", "the room goes dark", "a dog runs"])
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2] and cos[0, 1] > cos[1, 2]
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    shared = model.embed_text(["the lamp turns off"])
    assert shared.shape == (1, 256) and torch.allclose(shared.norm(), torch.tensor(1.0))


def test_model_info_paper_lists_modules_against_paper_sizes():
    from jepa.model_info import model_info

    info = model_info("paper")
    rows = {r["module"]: r for r in info["rows"]}
    x = rows["X-encoder"]
    assert x["trainable"] == 0 and abs(x["frozen"] - 304e6) / 304e6 < 0.02
    layers = rows["predictor: 8 Llama layers"]
    assert layers["frozen"] == 0 and abs(layers["trainable"] - 490e6) / 490e6 < 0.02
    assert rows["predictor: token table"]["trainable"] == 128256 * 2048
    assert abs(rows["Y-encoder backbone"]["trainable"] - 300e6) / 300e6 < 0.03
    assert rows["Y-encoder head"]["trainable"] == 768 * 1536 + 1536
    total = info["total"]
    assert total["total"] == sum(r["total"] for r in info["rows"])  # nothing padded
    assert total["paper"] == 1.6e9 and "1.6B" in info["account"]


def test_model_info_cli_prints_table():
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "model-info", "--preset", "paper"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    for needle in ("X-encoder", "8 Llama layers", "Y-encoder backbone", "1.60B", "not padded"):
        assert needle in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "model-info", "--preset", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown preset" in bad.stderr


def test_query_encoder_reads_queries_and_is_never_saved(tmp_path):
    """The tiny preset reads a query through frozen MiniLM + a trained adapter: the query
    reaches the visual positions (bidirectional), an empty query is no query whatever else is
    in the batch, the frozen encoder gets no gradient and is not in the saved weights (it is
    loaded by name), and the loaded model predicts the same."""
    from safetensors.torch import load_file

    model = VLJEPA.from_preset("tiny").eval()
    assert model.query_encoder is not None and model.predictor.query_adapter is not None
    x = torch.randn(3, 128, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model.predict_queries(x[:1])
        mixed = model.predict_queries(x, ["", "what colour is the ball?", "is it red?"])
        alone = model.predict_queries(x[1:2], ["what colour is the ball?"])
    torch.testing.assert_close(mixed[:1], plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1:2], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(mixed[1], mixed[2], atol=1e-3)
    assert not any(p.requires_grad for p in model.query_encoder.parameters())
    model.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert not any(k.startswith("query_encoder.") for k in keys)
    assert any(k.startswith("predictor.query_adapter.") for k in keys)
    loaded = VLJEPA.from_pretrained(tmp_path)
    with torch.no_grad():
        again = loaded.predict_queries(x, ["", "what colour is the ball?", "is it red?"])
    torch.testing.assert_close(again, mixed, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="query_states"):
        model.predictor(x, torch.ones(3, 2, dtype=torch.long))
