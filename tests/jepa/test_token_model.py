"""The token-prediction baseline's contract: the prefix-LM mask (visual tokens see each other
only, caption tokens see the prefix and earlier caption tokens), teacher-forced loss on caption
tokens only, greedy captions that are the LM head's argmax (cache or not), label likelihood
packed = one by one, exact save/load, and a VLJEPA loader that refuses it."""

from __future__ import annotations

import json

import pytest
import torch

from jepa.config import VLJEPAConfig
from jepa.token_model import TokenVLM, class_text, prefix_lm_mask, saved_objective
from pipelines.train.data import pad_ids

N_VISUAL = 128


@pytest.fixture(scope="module")
def model() -> TokenVLM:
    torch.manual_seed(0)
    m = TokenVLM.from_config(VLJEPAConfig.preset("tiny")).eval()
    with torch.no_grad():  # a sharper head than the init, so argmax ties cannot hide anything
        m.lm_head.weight.mul_(8.0)
    return m


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, N_VISUAL, 192, generator=torch.Generator().manual_seed(1))


def _captured_hidden(model, *args):
    out: list[torch.Tensor] = []
    hook = model.llama.norm.register_forward_hook(lambda m, i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            model.hidden_states(*args)
    finally:
        hook.remove()
    return out[0]


def test_mask_pattern():
    text = torch.tensor([[1, 1, 1, 0]])
    allowed = prefix_lm_mask(2, text, torch.float32)[0, 0] == 0
    # rows = queries, cols = keys; positions: v0 v1 | c0 c1 c2 pad
    expect = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expect)


def test_caption_token_output_ignores_later_caption_tokens(model, x):
    """Changing caption token 4 leaves the hidden states of positions < 4 (visual and caption)
    bit-for-bit alone and changes those from 4 on."""
    ids, mask = pad_ids(model.tokenize(["the red ball moves left"] * 3), 32)
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 11) % model.llama.config.vocab_size
    a = _captured_hidden(model, x, ids, mask)
    b = _captured_hidden(model, x, changed, mask)
    assert torch.equal(a[:, : N_VISUAL + 4], b[:, : N_VISUAL + 4])
    assert (a[:, N_VISUAL + 4 :] - b[:, N_VISUAL + 4 :]).abs().amax() > 1e-3
    # and so the logits predicting tokens 1..4 (positions 0..3) do not move either
    with torch.no_grad():
        la, lb = model.caption_logits(x, ids, mask), model.caption_logits(x, changed, mask)
    assert torch.equal(la[:, :4], lb[:, :4]) and not torch.allclose(la[:, 4:], lb[:, 4:])


def test_visual_tokens_see_all_visual_tokens_and_no_caption(model, x):
    ids, mask = pad_ids(model.tokenize(["the lamp turns off"] * 3), 32)
    other, omask = pad_ids(model.tokenize(["one golden disc swells and becomes larger"] * 3), 32)
    a = _captured_hidden(model, x, ids, mask)
    b = _captured_hidden(model, x, other, omask)
    assert torch.equal(a[:, :N_VISUAL], b[:, :N_VISUAL])  # captions are invisible to the prefix
    # the LAST visual token reaches the FIRST one: bidirectional within the prefix
    x2 = x.clone()
    x2[:, -1] += 1.0
    c = _captured_hidden(model, x2, ids, mask)
    assert (a[:, 0] - c[:, 0]).abs().amax() > 1e-4
    # and a caption token sees the visual tokens
    assert (a[:, N_VISUAL] - c[:, N_VISUAL]).abs().amax() > 1e-4


def test_loss_is_teacher_forced_cross_entropy_on_caption_tokens(model, x):
    caps = ["the red ball moves left", "the lamp turns off", "a b"]
    ids, mask = pad_ids(model.tokenize(caps), 32)
    assert ids[0, 0] == model.bos_id and model.eos_id in ids[0].tolist()
    with torch.no_grad():
        loss = model(x, ids, mask)
        logits = model.caption_logits(x, ids, mask)
        # reference: every non-pad token after BOS, EOS included; padding ignored
        tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100)
        garbage = ids.masked_fill(mask == 0, 999)
        assert torch.allclose(model(x, garbage, mask), loss, atol=1e-5)
    assert torch.allclose(loss, ref, atol=1e-5)
    # it trains: a few steps on these three captions bring the loss down a lot
    m = TokenVLM.from_config(VLJEPAConfig.preset("tiny"))
    opt = torch.optim.AdamW(m.param_groups(3e-3, 0.0))
    first = None
    for _ in range(15):
        step_loss = m(x, ids, mask)
        opt.zero_grad()
        step_loss.backward()
        opt.step()
        first = first if first is not None else float(step_loss)
    assert float(step_loss) < 0.5 * first


def test_greedy_captions_are_the_lm_heads_argmax(model, x):
    ids = model.generate_ids(x, max_new_tokens=6, early_stop=False)
    # without the cache: feed [BOS, generated...] and take the argmax at every position
    seq = torch.cat([torch.full((3, 1), model.bos_id), ids], dim=1)
    with torch.no_grad():
        logits = model.caption_logits(x, seq, torch.ones_like(seq))
    assert torch.equal(logits.argmax(-1), ids)
    texts = model.generate(x, max_new_tokens=6)
    assert texts == [model.decode(row) for row in ids.tolist()]
    # another head gives other captions: rolling the head's rows by one moves every first token
    # to the next id, whatever the layers computed
    saved = model.lm_head.weight.detach().clone()
    try:
        with torch.no_grad():
            model.lm_head.weight.copy_(torch.roll(saved, 1, dims=0))
        rolled = model.generate_ids(x, max_new_tokens=1)
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)
    assert torch.equal(rolled[:, 0], (ids[:, 0] + 1) % saved.shape[0])


def test_label_likelihood_packed_equals_one_by_one(model, x):
    labels = [class_text(c) for c in ("red_moves_left", "lamp_off", "blue_to_red", "green_grows")]
    assert labels[0] == "red moves left"
    packed = model.label_log_likelihood(x, labels)
    summed = model.label_log_likelihood(x, labels, reduce="sum")
    assert packed.shape == (3, 4)
    for j, text in enumerate(labels):
        ids, mask = pad_ids(model.tokenize([text] * 3), 32)
        with torch.no_grad():
            logp = torch.log_softmax(model.caption_logits(x, ids, mask), -1)
        tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        assert torch.allclose(packed[:, j], tok.mean(1), atol=1e-4)
        assert torch.allclose(summed[:, j], tok.sum(1), atol=1e-3)


def test_save_load_roundtrip_and_objective_recorded(model, x, tmp_path):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["objective"] == "tokens" and saved_objective(tmp_path) == "tokens"
    loaded = TokenVLM.from_pretrained(tmp_path)
    assert loaded.config == model.config
    ids, mask = pad_ids(model.tokenize(["the lamp turns on"] * 3), 32)
    with torch.no_grad():
        assert torch.equal(model.caption_logits(x, ids, mask), loaded.caption_logits(x, ids, mask))
    assert loaded.generate(x, 5) == model.generate(x, 5)

    from jepa.model import VLJEPA

    with pytest.raises(ValueError, match="TokenVLM"):
        VLJEPA.from_pretrained(tmp_path)


def test_tied_head_follows_the_llama_config():
    cfg = VLJEPAConfig.preset("tiny")
    cfg.predictor.arch = {**cfg.predictor.arch, "tie_word_embeddings": True}
    m = TokenVLM.from_config(cfg)
    assert m.lm_head.weight is m.llama.embed_tokens.weight
    counts = m.param_counts()
    assert counts["lm_head"]["trainable"] == 0  # counted once, with the token table
    untied = TokenVLM.from_config(VLJEPAConfig.preset("tiny")).param_counts()
    assert untied["lm_head"]["trainable"] == 30522 * 256
