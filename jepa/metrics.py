"""Embedding-space metrics (retrieval, zero-shot classification) and caption metrics (CIDEr-D,
the selective-decoding protocol of the paper's §4.5).

Hits are event-based: several synthetic clips share one caption/event, so retrieving *any* clip
of the query's event is correct (counting only the query's own clip would punish the model for
ties it is right to make).

CIDEr-D is implemented here rather than taken from `pycocoevalcap`: that package installs (1.2,
a 104 MB wheel with the Stanford CoreNLP jars for SPICE and a Java tokenizer), but CIDEr itself
is ~60 lines of pure Python, so a tested reimplementation is lighter than the dependency. It
follows the coco-caption scorer exactly (n = 1..4, TF-IDF with document frequencies from the
reference corpus, clipped cosine per n, Gaussian length penalty sigma = 6, mean over n and over
references, x10), including its quirk of measuring length in bigrams (which cancels in the
length difference). tests/jepa/test_cider_reference.py pins it against
`pycocoevalcap`'s CiderScorer (a dev dependency) to 1e-6 on a few hundred generated corpora.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- embeddings


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def similarity(a: Any, b: Any) -> Any:
    """Cosine similarity matrix (A, B). Returns a torch tensor for torch inputs (so callers can
    stay on device), numpy otherwise."""
    if hasattr(a, "detach") and hasattr(b, "detach"):
        import torch.nn.functional as F

        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    return _normalise(_np(a)) @ _normalise(_np(b)).T


def recall_at_k(
    sim: Any, query_events: Sequence[Any], item_events: Sequence[Any], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Fraction of queries with at least one item of the query's event among the top k.

    `sim` is (Q, I), higher = closer. Returns {"R@1": ..., "R@5": ...}. Ties are broken by item
    order (stable sort), so a constant similarity does not look perfect by accident unless the
    correct item comes first.
    """
    s = _np(sim)
    q_ev = np.asarray(list(query_events), dtype=object)
    i_ev = np.asarray(list(item_events), dtype=object)
    if s.shape != (len(q_ev), len(i_ev)):
        raise ValueError(f"sim is {s.shape} but there are {len(q_ev)} queries, {len(i_ev)} items")
    order = np.argsort(-s, axis=1, kind="stable")
    hits = i_ev[order] == q_ev[:, None]  # (Q, I): retrieved item at rank r carries the event
    out = {}
    for k in ks:
        out[f"R@{k}"] = float(hits[:, : min(k, hits.shape[1])].any(axis=1).mean())
    return out


def retrieval_metrics(
    video_emb: Any,
    text_emb: Any,
    video_events: Sequence[Any],
    text_events: Sequence[Any],
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Both directions: text->video ("t2v_R@k", rank videos per text query) and video->text
    ("v2t_R@k", rank texts per video)."""
    sim = _np(similarity(_np(text_emb), _np(video_emb)))  # (texts, videos)
    t2v = recall_at_k(sim, text_events, video_events, ks)
    v2t = recall_at_k(sim.T, video_events, text_events, ks)
    return {**{f"t2v_{k}": v for k, v in t2v.items()}, **{f"v2t_{k}": v for k, v in v2t.items()}}


def zero_shot_accuracy(
    pred_emb: Any, label_emb: Any, true_label_idx: Sequence[int], k: int = 1
) -> float:
    """Open-vocabulary classification: the label whose embedding is nearest (cosine) to the
    predicted embedding; top-k accuracy against the true label index."""
    sim = _np(similarity(_np(pred_emb), _np(label_emb)))
    truth = np.asarray(list(true_label_idx))
    if sim.shape[0] != truth.shape[0]:
        raise ValueError(f"{sim.shape[0]} predictions but {truth.shape[0]} labels")
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean())


def top_k_accuracy(scores: Any, true_idx: Sequence[int], k: int = 1) -> float:
    """Fraction of rows (items) whose true column (class) is among their k highest scores; ties
    go to the earlier column. For classifiers that score classes directly (e.g. by likelihood)."""
    s = _np(scores)
    truth = np.asarray(list(true_idx))
    if s.shape[0] != truth.shape[0]:
        raise ValueError(f"{s.shape[0]} score rows but {truth.shape[0]} labels")
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean())


# ----------------------------------------------------------------------------- captions

_PUNCT = re.compile(r"[^\w\s']")


def normalize_caption(text: str) -> str:
    """Lower-case, punctuation removed, whitespace collapsed: the usual caption tokenisation
    (what coco-caption's PTB tokenizer does for plain English), and the form exact-match uses so
    a decoder's "the lamp turns off ." equals "The lamp turns off."."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after `normalize_caption`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    same = [
        normalize_caption(p) == normalize_caption(r)
        for p, r in zip(predictions, references, strict=True)
    ]
    return float(np.mean(same))


def _ngrams(text: str, n: int = 4) -> Counter:
    words = normalize_caption(text).split()
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i : i + k])] += 1
    return c


def cook(text: str, n: int = 4) -> Counter:
    """A caption's n-gram counts (n = 1..4) after `normalize_caption`: what CIDEr scores."""
    return _ngrams(text, n)


class CiderD:
    """CIDEr-D against one reference corpus: its document frequencies and reference vectors are
    computed once, then any number of candidate lists (one candidate per reference set) are
    scored against it. `crefs`: per document, the `cook`ed references (at least one)."""

    def __init__(self, crefs: Sequence[Sequence[Counter]], n: int = 4, sigma: float = 6.0):
        if any(len(r) == 0 for r in crefs):
            raise ValueError("every candidate needs at least one reference")
        self.n, self.sigma = n, sigma
        self.crefs = crefs
        df: dict[tuple, float] = defaultdict(float)
        for refs in crefs:
            for g in {g for r in refs for g in r}:
                df[g] += 1
        self.df = df
        self._memo: dict[int, tuple] = {}
        self._pairs: dict[tuple[int, int], float] = {}
        self.log_n = math.log(float(len(crefs))) if crefs else 0.0
        self.ref_vecs = [[self._vec_once(r) for r in refs] for refs in crefs]

    def _vec_once(self, cnts: Counter) -> tuple[list[dict], list[float], int]:
        """`_vec`, once per object: a resampled corpus repeats the same cooked captions."""
        key = id(cnts)
        if key not in self._memo:
            self._memo[key] = (cnts, self._vec(cnts))  # holding cnts keeps its id unique
        return self._memo[key][1]

    def _vec(self, cnts: Counter) -> tuple[list[dict], list[float], int]:
        n, df, log_n = self.n, self.df, self.log_n
        v: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in cnts.items():
            k = len(g) - 1
            w = float(tf) * (log_n - math.log(max(1.0, df.get(g, 0.0))))
            v[k][g] = w
            norm[k] += w * w
            if k == 1:  # coco-caption counts bigrams as the "length"; kept for parity
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    def scores(self, ctest: Sequence[Counter]) -> np.ndarray:
        """Per-candidate CIDEr-D, candidate i against reference set i."""
        if len(ctest) != len(self.crefs):
            raise ValueError(f"{len(ctest)} candidates but {len(self.crefs)} reference sets")
        n, sigma = self.n, self.sigma
        out = np.zeros(len(ctest))
        for i, (test, refs) in enumerate(zip(ctest, self.ref_vecs, strict=True)):
            pair = (id(test), id(self.crefs[i]))  # the same caption against the same references
            if pair in self._pairs:
                out[i] = self._pairs[pair]
                continue
            vh, nh, lh = self._vec_once(test)
            total = np.zeros(n)
            for vr, nr, lr in refs:
                delta = float(lh - lr)
                val = np.zeros(n)
                for k in range(n):
                    for g, w in vh[k].items():
                        wr = vr[k].get(g, 0.0)
                        val[k] += min(w, wr) * wr  # clipping: CIDEr-D's guard against repetition
                    if nh[k] != 0 and nr[k] != 0:
                        val[k] /= nh[k] * nr[k]
                    val[k] *= math.exp(-(delta**2) / (2 * sigma**2))
                total += val
            out[i] = self._pairs[pair] = float(np.mean(total)) / len(refs) * 10.0
        return out


class ReweightedCiderD:
    """Corpus CIDEr-D of fixed candidate lists against fixed references, under many integer
    reweightings of the documents at once (a bootstrap over documents: weight w_d = how often
    document d is drawn). Equal to building `CiderD` on the resampled corpus for each weighting.

    Why it can be vectorised: idf >= 0, so with q = idf**2 every quantity CIDEr-D needs is
    linear in q: the clipped dot product is sum_g q_g min(tf_c, tf_r) tf_r, the squared norms
    are sum_g q_g tf**2. One sparse matrix per quantity (row = pair x n-gram order) times the
    (grams x resamples) matrix of q gives every resample's scores; only q depends on the
    weights (df_g = sum_d w_d [g in d's references], N = sum_d w_d). A Python loop over 1,000
    resamples of a 10-stream eval took minutes; this takes about a second."""

    def __init__(
        self,
        crefs: Sequence[Sequence[Counter]],
        ctests: Sequence[Sequence[Counter]],
        n: int = 4,
        sigma: float = 6.0,
    ):
        from scipy import sparse

        if any(len(r) == 0 for r in crefs):
            raise ValueError("every candidate needs at least one reference")
        for rows in ctests:
            if len(rows) != len(crefs):
                raise ValueError(f"{len(rows)} candidates but {len(crefs)} reference sets")
        self.n, self.docs, self.rows = n, len(crefs), len(ctests)
        vocab: dict[tuple, int] = {}

        def col(g: tuple) -> int:
            return vocab.setdefault(g, len(vocab))

        # document x gram presence: each document counts a gram once (its df contribution)
        d_i, d_j = [], []
        for d, refs in enumerate(crefs):
            for g in {g for r in refs for g in r}:
                d_i.append(d)
                d_j.append(col(g))
        # one row per (row, document, reference, order): dot, candidate and reference norms
        dot, cand, ref = ([], [], []), ([], [], []), ([], [], [])
        penalty, owner = [], []  # per (row, document, reference)
        for r, cands in enumerate(ctests):
            for d, (c, refs) in enumerate(zip(cands, crefs, strict=True)):
                lc = sum(tf for g, tf in c.items() if len(g) == 2)
                for rc in refs:
                    p = len(penalty)
                    lr = sum(tf for g, tf in rc.items() if len(g) == 2)
                    penalty.append(math.exp(-((lc - lr) ** 2) / (2 * sigma**2)) / len(refs))
                    owner.append(r * self.docs + d)
                    for g, tf in c.items():
                        cand[0].append(p * n + len(g) - 1)
                        cand[1].append(col(g))
                        cand[2].append(float(tf * tf))
                        if g in rc:
                            dot[0].append(p * n + len(g) - 1)
                            dot[1].append(col(g))
                            dot[2].append(float(min(tf, rc[g]) * rc[g]))
                    for g, tf in rc.items():
                        ref[0].append(p * n + len(g) - 1)
                        ref[1].append(col(g))
                        ref[2].append(float(tf * tf))
        shape = (len(penalty) * n, len(vocab))
        self._dot, self._cand, self._ref = (
            sparse.csr_matrix((v, (i, j)), shape=shape) for i, j, v in (dot, cand, ref)
        )
        self._presence = sparse.csr_matrix(
            (np.ones(len(d_i)), (d_i, d_j)), shape=(self.docs, len(vocab))
        )
        self._penalty = np.asarray(penalty)
        self._owner = np.asarray(owner, dtype=np.int64)

    def corpus_scores(self, weights: Any, chunk: int = 256) -> np.ndarray:
        """(resamples, rows): each row's corpus CIDEr-D under each weighting (resamples, docs);
        0 where a weighting draws no document."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[1] != self.docs:
            raise ValueError(f"weights over {w.shape[1]} documents, corpus has {self.docs}")
        out = np.zeros((w.shape[0], self.rows))
        for s in range(0, w.shape[0], chunk):
            wb = w[s : s + chunk]
            total = wb.sum(axis=1)  # documents drawn, N
            df = np.asarray(self._presence.T @ wb.T)  # (grams, B)
            with np.errstate(divide="ignore"):
                idf = np.log(total)[None, :] - np.log(np.maximum(df, 1.0))
            q = np.where(total[None, :] > 0, idf, 0.0) ** 2
            num = self._dot @ q
            norm = np.sqrt((self._cand @ q) * (self._ref @ q))
            val = np.divide(num, norm, out=np.zeros_like(num), where=norm > 0)
            per_ref = val.reshape(-1, self.n, val.shape[1]).mean(axis=1)  # (pairs, B)
            per_ref *= self._penalty[:, None] * 10.0
            per_doc = np.zeros((self.rows * self.docs, val.shape[1]))
            np.add.at(per_doc, self._owner, per_ref)
            per_doc = per_doc.reshape(self.rows, self.docs, -1)  # (rows, docs, B)
            summed = np.einsum("rdb,bd->br", per_doc, wb)
            out[s : s + chunk] = np.divide(
                summed, total[:, None], out=np.zeros_like(summed), where=total[:, None] > 0
            )
        return out


def cider_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
) -> np.ndarray:
    """Per-candidate CIDEr-D. Document frequencies come from the reference sets of this corpus
    (one document per candidate's reference set), as in coco-caption."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if not candidates:
        return np.zeros(0)
    scorer = CiderD([[cook(r, n) for r in refs] for refs in references], n, sigma)
    return scorer.scores([cook(c, n) for c in candidates])


def cider(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D: the mean of the per-candidate scores."""
    s = cider_scores(candidates, references)
    return float(s.mean()) if s.size else 0.0


# ----------------------------------------------------------------------------- §4.5 protocol


def match_events_to_decodes(
    event_times: Sequence[float], decode_times: Sequence[float]
) -> np.ndarray:
    """For each ground-truth annotation, the index of the decode nearest in time (ties go to the
    earlier decode). One decode may serve many events; an event always gets a decode, which is
    why fewer decodes cost quality rather than coverage."""
    ev = np.asarray(list(event_times), dtype=np.float64)
    dec = np.asarray(list(decode_times), dtype=np.float64)
    if dec.size == 0:
        raise ValueError("no decodes to match events to")
    if ev.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmin(np.abs(ev[:, None] - dec[None, :]), axis=1).astype(np.int64)


def decode_plan_cider(
    event_times: Sequence[float],
    event_captions: Sequence[str | Sequence[str]],
    decode_times: Sequence[float],
    decode_captions: Sequence[str],
) -> dict[str, Any]:
    """Average CIDEr of a decode plan against the ground-truth events (the paper's selective
    decoding metric): each event's caption (or list of reference captions) is the reference for
    the caption decoded nearest to it in time. Returns the score, the per-event scores and the
    number of decodes (the cost side of the trade)."""
    if len(decode_times) != len(decode_captions):
        raise ValueError(f"{len(decode_times)} decode times but {len(decode_captions)} captions")
    if len(event_times) != len(event_captions):
        raise ValueError(f"{len(event_times)} event times but {len(event_captions)} captions")
    match = match_events_to_decodes(event_times, decode_times)
    refs = [[c] if isinstance(c, str) else list(c) for c in event_captions]
    cands = [decode_captions[j] for j in match]
    per_event = cider_scores(cands, refs)
    return {
        "cider": float(per_event.mean()) if per_event.size else 0.0,
        "per_event": per_event.tolist(),
        "matches": match.tolist(),
        "n_decodes": len(decode_times),
    }


def vqa_hits(
    pred: Any, cand: Any, names: list[str], questions: list[dict]
) -> dict[str, list[bool]]:
    """Discriminative VQA (METHOD.md): each question's answer is its candidate whose embedding
    (a row of `cand`, named by `names`) is nearest (cosine; rows normalised) to the question's
    predicted embedding (a row of `pred`). {type: [right?, ...]} over `questions` (dicts with
    `candidates`, `answer`, `type`)."""
    pred, cand = _np(pred), _np(cand)
    index = {c: i for i, c in enumerate(names)}
    hits: dict[str, list[bool]] = {}
    for k, q in enumerate(questions):
        scores = cand[[index[c] for c in q["candidates"]]] @ pred[k]
        hits.setdefault(q["type"], []).append(q["candidates"][int(scores.argmax())] == q["answer"])
    return hits
