"""The frozen query encoder reads each distinct query once (jepa/query_encoder.py): training asks
the same few hundred questions over and over, so the cache is most of the query path's cost."""

from __future__ import annotations

import torch

from jepa import query_encoder as qe
from jepa.config import VLJEPAConfig
from jepa.predictor import pad_queries

QUESTIONS = ["what colour is the ball?", "is the ball red?", "which way does the orb go?"]


def _encoder(**kwargs) -> qe.QueryEncoder:
    return qe.QueryEncoder(VLJEPAConfig.preset("tiny").predictor.query_encoder, **kwargs)


def _rows_seen(enc: qe.QueryEncoder) -> list[int]:
    """Batch sizes that went through the backbone (a forward hook on the real model)."""
    seen: list[int] = []
    enc.backbone.register_forward_hook(
        lambda _m, _a, kw, _out: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    return seen


def test_each_distinct_query_is_read_once_and_matches_the_backbone():
    enc = _encoder()
    ids = [enc.tokenizer(q)["input_ids"] for q in QUESTIONS]
    batch = pad_queries([ids[0], [], ids[1], ids[0]])  # an empty row is a caption row: no query
    with torch.no_grad():
        ref = enc.backbone(**batch).last_hidden_state * batch["attention_mask"].unsqueeze(-1)
    seen = _rows_seen(enc)

    first = enc.states(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=0)
    assert seen == [2]  # two distinct queries, one forward; the empty row is not read
    assert not first[1].any()

    # The same queries in another batch (other order, other padding width) are not read again,
    # and a query's states do not depend on what it was batched with.
    again = pad_queries([ids[1], ids[0]])
    second = enc.states(again["input_ids"], again["attention_mask"])
    assert seen == [2]
    torch.testing.assert_close(second[0], first[2, : second.shape[1]], atol=1e-5, rtol=0)

    # Only the new query of a mixed batch goes through the backbone.
    mixed = pad_queries([ids[2], ids[0]])
    enc.states(mixed["input_ids"], mixed["attention_mask"])
    assert seen == [2, 1]


def test_the_cache_is_bounded_least_recently_used_first():
    enc = _encoder(cache_size=2)
    ids = [enc.tokenizer(q)["input_ids"] for q in QUESTIONS]
    seen = _rows_seen(enc)
    for i in (0, 1, 0, 2):  # 1 is the least recently used when 2 arrives
        b = pad_queries([ids[i]])
        enc.states(b["input_ids"], b["attention_mask"])
    assert seen == [1, 1, 1]
    for i in (0, 2):  # still held
        b = pad_queries([ids[i]])
        enc.states(b["input_ids"], b["attention_mask"])
    assert seen == [1, 1, 1]
    b = pad_queries([ids[1]])  # dropped: read again
    enc.states(b["input_ids"], b["attention_mask"])
    assert seen == [1, 1, 1, 1]
