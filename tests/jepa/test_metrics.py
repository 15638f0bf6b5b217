"""Retrieval / zero-shot metrics with event-based hits, CIDEr-D, and the §4.5 matching protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jepa.metrics import (
    cider,
    cider_scores,
    decode_plan_cider,
    exact_match,
    match_events_to_decodes,
    normalize_caption,
    recall_at_k,
    retrieval_metrics,
    similarity,
    zero_shot_accuracy,
)


def test_similarity_is_cosine_for_numpy_and_torch():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)) * 7.0
    s = similarity(a, b)
    ref = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a])
    np.testing.assert_allclose(s, ref, atol=1e-12)
    st = similarity(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(st, torch.Tensor)
    np.testing.assert_allclose(st.numpy(), ref, atol=1e-5)


def test_recall_counts_any_clip_of_the_query_event():
    # 2 queries, 4 items; items 0 and 1 share event "e0".
    item_events = ["e0", "e0", "e1", "e2"]
    sim = np.array(
        [
            [0.1, 0.9, 0.2, 0.3],  # q0 (event e0): top-1 is item 1, a *different clip* of e0
            [0.9, 0.1, 0.3, 0.2],  # q1 (event e1): item 2 ranks 2nd
        ]
    )
    r = recall_at_k(sim, ["e0", "e1"], item_events, ks=(1, 2, 10))
    assert r == {"R@1": 0.5, "R@2": 1.0, "R@10": 1.0}
    # a query whose event nobody carries never hits
    assert recall_at_k(sim[:1], ["zz"], item_events, ks=(4,))["R@4"] == 0.0
    with pytest.raises(ValueError):
        recall_at_k(sim, ["e0"], item_events)


def test_retrieval_both_directions():
    # 3 videos (events a, a, b), 2 texts (a, b). Text b is closest to video 0 (wrong).
    video = np.eye(3)
    text = np.array([[1.0, 0.2, 0.0], [0.9, 0.0, 0.5]])
    m = retrieval_metrics(video, text, ["a", "a", "b"], ["a", "b"], ks=(1,))
    assert m["t2v_R@1"] == 0.5  # text a -> video 0 (hit); text b -> video 0 (miss)
    # videos: v0 -> text a (hit), v1 -> text a (hit), v2 -> text b (hit)
    assert m["v2t_R@1"] == 1.0


def test_zero_shot_accuracy_top1_and_topk():
    labels = np.eye(3)
    pred = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 1.0], [0.5, 0.6, 0.0]])
    assert zero_shot_accuracy(pred, labels, [0, 2, 0]) == pytest.approx(2 / 3)
    assert zero_shot_accuracy(pred, labels, [0, 2, 0], k=2) == 1.0


def test_normalize_and_exact_match():
    assert normalize_caption("The Lamp  turns off .") == "the lamp turns off"
    assert exact_match(["the lamp turns off ."], ["The lamp turns off"]) == 1.0
    assert exact_match(["the lamp turns on", "a b"], ["the lamp turns off", "a b"]) == 0.5


def test_cider_hand_computed_value():
    # Two images with disjoint references, so every reference n-gram has idf log(2) and unseen
    # n-grams idf log(2) - log(1). Candidate 0 "a b x y" vs ref "a b c d":
    # unigram cos = 2/4 = 0.5, bigram cos = 1/3 ({ab} of 3 each), tri/4-grams 0, same length
    # -> mean over n = (0.5 + 1/3) / 4, x10.
    scores = cider_scores(["a b x y", "e f g h"], [["a b c d"], ["e f g h"]])
    assert scores[0] == pytest.approx((0.5 + 1 / 3) / 4 * 10)
    # identical to its only reference, >= 4 words, no shared n-grams with the other image: 10
    assert scores[1] == pytest.approx(10.0)


def test_cider_orders_candidates_and_ignores_unrelated():
    refs = [
        ["the red ball moves left", "a crimson sphere heads west"],
        ["the lamp turns off", "the room goes dark"],
        ["the blue ball grows", "a cobalt sphere gets bigger"],
    ]
    exact = cider_scores(
        ["the red ball moves left", "the lamp turns off", "the blue ball grows"], refs
    )
    close = cider_scores(
        ["the red ball moves right", "the lamp turns on", "the blue ball vanishes"], refs
    )
    far = cider_scores(["green disc appears suddenly", "yellow orb", "jade emerald lime"], refs)
    assert np.all(exact > close)
    assert np.all(close > far)
    assert np.all(far < 1e-9)
    assert cider(["the red ball moves left"] * 3, refs) < cider(
        ["the red ball moves left", "the lamp turns off", "the blue ball grows"], refs
    )


def test_cider_d_clipping_and_length_penalty():
    refs = [["the lamp turns off"], ["a dog runs in the park"], ["the sky is blue today"]]
    base = cider_scores(["the lamp turns off", "a", "b"], refs)[0]
    repeated = cider_scores(["the lamp turns off the lamp turns off", "a", "b"], refs)[0]
    # repeating the caption cannot game CIDEr-D: clipping + length penalty make it strictly worse
    assert repeated < base
    # the length penalty is the Gaussian exp(-delta^2 / 72) on the length difference
    short = cider_scores(["lamp", "a", "b"], refs)[0]
    assert 0 < short < base
    with pytest.raises(ValueError):
        cider_scores(["x"], [[]])


def test_match_events_to_nearest_decode():
    m = match_events_to_decodes([0.0, 4.9, 5.0, 5.1, 20.0], [1.0, 9.0])
    assert m.tolist() == [0, 0, 0, 1, 1]  # 5.0 is equidistant: the earlier decode wins
    with pytest.raises(ValueError):
        match_events_to_decodes([1.0], [])


def test_decode_plan_cider_prefers_decoding_every_event():
    times = [1.0, 5.0, 9.0]
    caps = ["the lamp turns off", "the red ball moves left", "the blue ball grows bigger"]
    full = decode_plan_cider(times, caps, times, caps)
    one = decode_plan_cider(times, caps, [5.0], [caps[1]])
    assert full["n_decodes"] == 3 and one["n_decodes"] == 1
    assert one["matches"] == [0, 0, 0]
    assert full["cider"] > one["cider"] > 0
    # the one decode is exactly right for the middle event and shares nothing with the lamp
    assert one["per_event"][1] == pytest.approx(full["per_event"][1])
    assert one["per_event"][0] == pytest.approx(0.0)
    assert math.isfinite(full["cider"])
