"""`jepa.metrics.cider` / `cider_scores` pinned against the reference scorer (coco-caption's
CIDEr-D as packaged in `pycocoevalcap`, pure Python): the same corpus and per-candidate scores to
1e-6 on a few hundred generated caption sets.

Captions are pre-tokenised lowercase words from a small vocabulary, so no PTB (Java) tokenizer is
involved and both scorers see the same tokens. The small vocabulary makes shared n-grams, repeats
(the clipping), document frequencies above one and length differences (the Gaussian penalty)
common, and the corpora include the edge cases: one-word candidates (no bigrams), candidates
sharing nothing with their references, exact copies of a reference, one-document corpora."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.cider import cider_scorer  # the dev extra

from jepa.metrics import cider, cider_scores

VOCAB = ["the", "a", "red", "blue", "ball", "lamp", "moves", "left", "right", "turns", "off"]


def _sentence(rng: np.random.Generator, lo: int = 1, hi: int = 12) -> str:
    return " ".join(rng.choice(VOCAB, size=int(rng.integers(lo, hi + 1))).tolist())


def _corpus(seed: int) -> tuple[list[str], list[list[str]]]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    refs = [[_sentence(rng) for _ in range(int(rng.integers(1, 6)))] for _ in range(n)]
    cands = []
    for r in refs:
        u = rng.random()
        if u < 0.15:  # an exact copy of one reference
            cands.append(r[int(rng.integers(len(r)))])
        elif u < 0.25:  # one word: no bigram, so length 0 in coco-caption's count
            cands.append(str(rng.choice(VOCAB)))
        elif u < 0.3:  # nothing in common with the references
            cands.append("zebra quokka zebra")
        else:
            cands.append(_sentence(rng))
    return cands, refs


def _reference(cands: list[str], refs: list[list[str]]) -> tuple[float, np.ndarray]:
    scorer = cider_scorer.CiderScorer(n=4, sigma=6.0)
    for c, r in zip(cands, refs, strict=True):
        scorer += (c, r)
    score, scores = scorer.compute_score()
    return float(score), np.asarray(scores, dtype=np.float64)


@pytest.mark.parametrize("block", range(4))
def test_cider_matches_pycocoevalcap(block: int) -> None:
    """300 corpora (75 per block): corpus score and every per-candidate score within 1e-6."""
    for seed in range(block * 75, (block + 1) * 75):
        cands, refs = _corpus(seed)
        want, want_each = _reference(cands, refs)
        got_each = cider_scores(cands, refs)
        assert got_each.shape == want_each.shape, seed
        np.testing.assert_allclose(got_each, want_each, rtol=0, atol=1e-6, err_msg=f"seed {seed}")
        assert cider(cands, refs) == pytest.approx(want, abs=1e-6), seed


def test_cider_class_interface_agrees() -> None:
    """The `Cider().compute_score(gts, res)` entry point (dicts keyed by image id) too."""
    from pycocoevalcap.cider.cider import Cider

    cands, refs = _corpus(12345)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    want, want_each = Cider().compute_score(gts, res)
    np.testing.assert_allclose(cider_scores(cands, refs), want_each, rtol=0, atol=1e-6)
    assert cider(cands, refs) == pytest.approx(float(want), abs=1e-6)


def test_cider_d_scorer_on_a_resampled_corpus_equals_scoring_the_strings() -> None:
    """`CiderD` (what the selective-decoding bootstrap uses) reuses one cooked caption object
    wherever a resample repeats it; the scores are those of the plain strings."""
    from jepa.metrics import CiderD, cook

    cands, refs = _corpus(777)
    cooked_c = [cook(c) for c in cands]
    cooked_r = [[cook(x) for x in r] for r in refs]
    idx = np.random.default_rng(0).integers(0, len(cands), 3 * len(cands))
    got = CiderD([cooked_r[i] for i in idx]).scores([cooked_c[i] for i in idx])
    want = _reference([cands[i] for i in idx], [refs[i] for i in idx])[1]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [777, 4242])
def test_reweighted_cider_equals_the_reference_on_each_resampled_corpus(seed: int) -> None:
    """`ReweightedCiderD` (the vectorised bootstrap) against pycocoevalcap on each resampled
    corpus written out in full: two candidate lists, weightings that repeat documents, drop
    most of them, and draw a single one."""
    from jepa.metrics import ReweightedCiderD, cook

    cands, refs = _corpus(seed)
    other = [_sentence(np.random.default_rng(seed + i)) for i in range(len(cands))]
    scorer = ReweightedCiderD(
        [[cook(x) for x in r] for r in refs], [[cook(c) for c in cands], [cook(c) for c in other]]
    )
    rng = np.random.default_rng(seed)
    weights = [np.bincount(rng.integers(0, len(cands), len(cands)), minlength=len(cands))]
    weights.append(np.eye(len(cands), dtype=int)[0] * 3)
    weights.append((rng.random(len(cands)) < 0.2).astype(int))
    weights[-1][-1] = 2  # never empty
    got = scorer.corpus_scores(np.stack(weights), chunk=2)
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(len(cands)), w)
        for r, row in enumerate((cands, other)):
            want = _reference([row[i] for i in idx], [refs[i] for i in idx])[0]
            assert got[b, r] == pytest.approx(want, abs=1e-6), (seed, b, r)
