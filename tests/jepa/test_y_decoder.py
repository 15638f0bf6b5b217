"""Y-decoder: prefix-conditioned tiny GPT-2 with MiniLM's tokenizer.

The acceptance test trains the tiny decoder on the synthetic corpus's caption vocabulary (every
class caption and paraphrase), embedded by the REAL MiniLM Y-encoder, and decodes them back.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from jepa.config import VLJEPAConfig, YDecoderConfig
from jepa.metrics import exact_match, normalize_caption
from jepa.text import load_tokenizer
from jepa.y_decoder import YDecoder, train_decoder
from jepa.y_encoder import YEncoder
from pipelines.synth.events import CLASSES

TINY = dict(n_layer=2, n_embd=128, n_head=4, n_prefix=4, max_len=24, prefix_hidden=256)


def _corpus_captions() -> list[str]:
    caps: list[str] = []
    for c in CLASSES:
        caps += [c.caption, *c.paraphrases]
    return caps


@pytest.fixture(scope="module")
def trained():
    """(decoder, unit embeddings, captions, train report); trained once for the module."""
    torch.manual_seed(0)
    captions = _corpus_captions()
    cfg = VLJEPAConfig.preset("tiny")
    yenc = YEncoder.from_config(cfg.y_encoder, cfg.shared_dim).eval()
    emb = F.normalize(yenc.encode(captions), dim=-1)
    dec = YDecoder.from_config(YDecoderConfig(**TINY, noise_std=0.02), cfg.shared_dim)
    report = train_decoder(dec, emb, captions, steps=220, lr=3e-3, batch_size=32, progress=False)
    return dec, emb, captions, report


def test_tokenize_wraps_caption_in_cls_sep_and_pads():
    dec = YDecoder.from_config(YDecoderConfig(**TINY), 16)
    tok = load_tokenizer("minilm")
    ids, mask = dec.tokenize(["the lamp turns off", "a dog"])
    assert len(tok) == 30522
    assert ids[0, 0] == tok.cls_token_id and ids[1, 0] == tok.cls_token_id
    n0, n1 = int(mask[0].sum()), int(mask[1].sum())
    assert ids[0, n0 - 1] == tok.sep_token_id and ids[1, n1 - 1] == tok.sep_token_id
    assert n1 < n0 and (ids[1, n1:] == tok.pad_token_id).all() and (mask[1, n1:] == 0).all()
    long_ids, _ = dec.tokenize(["word " * 100])
    assert long_ids.shape[1] == TINY["max_len"] and long_ids[0, -1] == tok.sep_token_id
    assert dec.detokenize(ids[0].tolist()) == "the lamp turns off"


def test_loss_is_on_caption_tokens_only_and_reaches_the_prefix():
    torch.manual_seed(0)
    dec = YDecoder.from_config(YDecoderConfig(**TINY), 16)
    emb = torch.randn(2, 16)
    ids, mask = dec.tokenize(["the lamp turns off", "a dog"])
    base = dec.loss_from_ids(emb, ids, mask)
    # whatever sits in the padding is ignored...
    garbage = ids.clone()
    garbage[mask == 0] = 1234
    assert torch.allclose(dec.loss_from_ids(emb, garbage, mask), base)
    # ...but a caption token is not
    changed = ids.clone()
    changed[0, 2] = 1234
    assert not torch.allclose(dec.loss_from_ids(emb, changed, mask), base)
    # reference: mean next-token cross-entropy over caption tokens + EOS, computed by hand
    with torch.no_grad():
        prefix = dec._prefix(emb)
        inputs = torch.cat([prefix, dec.lm.get_input_embeddings()(ids)], 1)
        full_mask = torch.cat([torch.ones(2, dec.n_prefix, dtype=mask.dtype), mask], 1)
        logits = dec.lm(inputs_embeds=inputs, attention_mask=full_mask).logits
        terms = []
        for b in range(2):
            for j in range(1, int(mask[b].sum())):
                lp = logits[b, dec.n_prefix + j - 1].log_softmax(-1)
                terms.append(-lp[ids[b, j]])
        assert torch.allclose(torch.stack(terms).mean(), base, atol=1e-5)
    base.backward()
    assert dec.prefix[0].weight.grad is not None and dec.prefix[0].weight.grad.abs().sum() > 0


def test_restricted_vocab_is_a_masked_softmax():
    torch.manual_seed(1)
    dec = YDecoder.from_config(YDecoderConfig(**TINY), 16)
    caps = ["the lamp turns off", "a dog runs"]
    emb = torch.randn(2, 16)
    ids, mask = dec.tokenize(caps)
    n = dec.restrict_vocab(caps)
    assert n == len(set(ids[mask.bool()].tolist()) - {dec.bos_id}) and not dec.allowed[dec.bos_id]
    restricted = dec.loss_from_ids(emb, ids, mask)
    # reference: the full logits with every disallowed token masked out
    with torch.no_grad():
        inputs = torch.cat([dec._prefix(emb), dec.lm.get_input_embeddings()(ids)], 1)
        full_mask = torch.cat([torch.ones(2, dec.n_prefix, dtype=mask.dtype), mask], 1)
        logits = dec.lm(inputs_embeds=inputs, attention_mask=full_mask).logits
        logits = logits.masked_fill(~dec.allowed, float("-inf"))
        terms = [
            -logits[b, dec.n_prefix + j - 1].log_softmax(-1)[ids[b, j]]
            for b in range(2)
            for j in range(1, int(mask[b].sum()))
        ]
    assert torch.allclose(torch.stack(terms).mean(), restricted, atol=1e-5)
    # generation can only emit allowed tokens (an untrained model babbles, but within them)
    allowed_words = set(load_tokenizer("minilm").decode(ids[mask.bool()].tolist()).split())
    for text in dec.generate(torch.randn(4, 16), max_new_tokens=6):
        assert set(text.replace("##", "").split()) <= allowed_words | {""}, text
    with pytest.raises(ValueError):
        dec.loss(emb, ["an unseen caption", "zebra"])


def test_noise_has_the_configured_size():
    dec = YDecoder.from_config(YDecoderConfig(**TINY, noise_std=0.3), 256)
    z = F.normalize(torch.randn(512, 256), dim=-1)
    cos = (dec.noisy(z) * z).sum(-1)
    assert cos.mean().item() == pytest.approx(1 / (1 + 0.3**2) ** 0.5, abs=0.01)
    assert torch.allclose(dec.noisy(z, noise_std=0.0), z, atol=1e-6)


def test_local_pretrained_lm_preset(tmp_path):
    """The named/local pretrained preset loads an LM and its tokenizer from one folder (a
    stand-in for e.g. distilgpt2, which is never downloaded in tests)."""
    tok = load_tokenizer("minilm")
    lm = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_layer=1,
            n_embd=32,
            n_head=2,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        )
    )
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    dec = YDecoder.from_config(YDecoderConfig(preset=str(tmp_path), n_prefix=2), 8)
    assert dec.lm.config.n_embd == 32 and dec.n_prefix == 2
    for a, b in zip(dec.lm.parameters(), lm.parameters(), strict=True):
        assert torch.equal(a, b)
    out = dec.generate(torch.randn(3, 8), max_new_tokens=3)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)


def test_tiny_decoder_reproduces_training_captions(trained):
    dec, emb, captions, report = trained
    assert report["final_loss"] < report["losses"][0] / 10
    out = dec.generate(emb)
    acc = exact_match(out, captions)
    print(f"y-decoder: exact {acc:.3f} of {len(captions)}, {report['seconds']:.1f} s training")
    assert acc >= 0.9, [(o, c) for o, c in zip(out, captions, strict=False) if o != c][:10]


def test_beam_search_and_batched_generation_agree_with_single_rows(trained):
    dec, emb, captions, _ = trained
    # rows of different lengths in one batch: each must stop at its own EOS
    by_len = sorted(range(len(captions)), key=lambda i: len(captions[i].split()))
    rows = [by_len[0], by_len[-1]]
    rows += list(range(0, len(captions), 9))
    batched = dec.generate(emb[rows], batch_size=64)
    single = [dec.generate(emb[i : i + 1])[0] for i in rows]
    assert batched == single
    assert len({len(s.split()) for s in batched}) > 1
    beam = dec.generate(emb[rows], num_beams=3)
    assert exact_match(beam, [captions[i] for i in rows]) >= 0.9
    assert all(normalize_caption(s) == s for s in beam)  # no [SEP]/[PAD] leaks into text
