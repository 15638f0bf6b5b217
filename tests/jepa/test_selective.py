"""Selective decoding: offline Ward segmentation, the uniform baseline, the online detector.

The acceptance streams: segments of random length (6-15 steps) whose means are unit vectors,
consecutive means at cosine ~0.5 (related but different events, the hard case) or independent,
plus per-step Gaussian noise giving a within-event step-to-step cosine of ~0.8.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jepa.selective import (
    OnlineDetector,
    OnlineDetectorConfig,
    decode_plan,
    online_decode_points,
    pool_segment,
    segments_for_rate,
    stride_for_rate,
    uniform_segments,
    ward_segments,
)

SEEDS = range(8)


def _stream(seed: int, d: int = 64, k: int = 12, noise: float = 0.5, mix: float = 0.5):
    """(T, d) unit embeddings, the true boundaries (index where a new segment starts)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(6, 16, size=k)
    means = []
    m = rng.standard_normal(d)
    m /= np.linalg.norm(m)
    for i in range(k):
        if i:
            r = rng.standard_normal(d)
            r /= np.linalg.norm(r)
            m = mix * m + np.sqrt(1 - mix**2) * r
            m /= np.linalg.norm(m)
        means.append(m)
    x = np.concatenate([np.repeat(mm[None], n, 0) for mm, n in zip(means, lens, strict=False)])
    x = x + rng.standard_normal(x.shape) * noise / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.cumsum(lens)[:-1]


def _naive_ward(x: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Reference: O(T^3) greedy adjacent Ward merging, written the obvious way."""
    segs = [[i, i + 1] for i in range(len(x))]
    while len(segs) > n:
        costs = []
        for a, b in zip(segs, segs[1:], strict=False):
            na, nb = a[1] - a[0], b[1] - b[0]
            d = x[a[0] : a[1]].mean(0) - x[b[0] : b[1]].mean(0)
            costs.append(na * nb / (na + nb) * float(d @ d))
        j = int(np.argmin(costs))
        segs[j] = [segs[j][0], segs[j + 1][1]]
        del segs[j + 1]
    return [tuple(s) for s in segs]


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_ward_finds_known_boundaries(mix):
    within, total = 0, 0
    for seed in SEEDS:
        x, bounds = _stream(seed, mix=mix)
        segs = ward_segments(x, len(bounds) + 1)
        found = np.array([s for s, _ in segs[1:]])
        assert len(found) == len(bounds)
        for b in bounds:
            within += int(np.min(np.abs(found - b)) <= 1)
            total += 1
    assert within / total >= 0.95


def test_ward_matches_naive_reference_and_covers_stream():
    rng = np.random.default_rng(3)
    for t, n in [(30, 5), (17, 1), (12, 12), (25, 9)]:
        x = rng.standard_normal((t, 8))
        segs = ward_segments(x, n)
        assert segs == _naive_ward(x, n)
        assert len(segs) == n
        assert segs[0][0] == 0 and segs[-1][1] == t
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:], strict=False))
    assert ward_segments(np.zeros((5, 3)), 99) == [(i, i + 1) for i in range(5)]
    assert ward_segments(np.zeros((0, 3)), 2) == []


def test_ward_accepts_torch():
    x, bounds = _stream(0)
    assert ward_segments(torch.from_numpy(x).float(), 4) == ward_segments(x.astype(np.float32), 4)


def test_rate_sets_segment_count_and_uniform_baseline():
    x, _ = _stream(1)
    t = len(x)
    times = np.arange(t) * 0.5  # 2 clips per second
    duration = t * 0.5
    for rate in (0.1, 0.35, 1.0):
        segs = segments_for_rate(x, times, rate)
        assert len(segs) == max(1, round(rate * duration))
    assert len(segments_for_rate(x, times, 100.0)) == t  # capped at one clip per segment
    u = uniform_segments(t, 4)
    assert u[0] == (0, 4) and u[-1][1] == t and all(e - s == 4 for s, e in u[:-1])
    assert stride_for_rate(times, 0.5) == 4  # 2 clips/s at 0.5 decodes/s -> every 4 clips
    with pytest.raises(ValueError):
        uniform_segments(10, 0)


def test_decode_plan_uses_midpoint_and_segment_mean():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 4))
    times = np.arange(10) * 2.0 + 1.0
    plan = decode_plan(x, [(0, 3), (3, 10)], times, pool="mean")
    assert [(p.start, p.end) for p in plan] == [(0, 3), (3, 10)]
    assert plan[0].time_s == pytest.approx((1.0 + 5.0) / 2)
    assert plan[1].time_s == pytest.approx((7.0 + 19.0) / 2)
    np.testing.assert_allclose(plan[1].embedding, x[3:10].mean(0))
    with pytest.raises(ValueError):
        decode_plan(x, [(3, 3)], times)
    with pytest.raises(ValueError):
        decode_plan(x, [(0, 3)], times, pool="median")


def test_trimmed_pool_ignores_windows_that_straddle_two_events():
    """Six windows of one event plus four that mix in something else (as windows over a
    boundary or a repeat of the action do): the trimmed pool keeps only the event's windows,
    the plain mean is pulled towards the outliers."""
    rng = np.random.default_rng(3)
    event, other = np.eye(16)[0], np.eye(16)[1]
    good = event + 0.05 * rng.standard_normal((6, 16))
    bad = 0.5 * event + 0.9 * other + 0.3 * rng.standard_normal((4, 16))
    x = np.concatenate([good[:3], bad[:2], good[3:], bad[2:]])
    trimmed = pool_segment(x, "trimmed", keep=0.5)
    np.testing.assert_allclose(trimmed, good.mean(0), atol=0.06)
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(trimmed, event) > 0.99 > cos(x.mean(0), event) + 0.05
    # short segments and keep=1 are plain means
    np.testing.assert_allclose(pool_segment(x[:2], "trimmed"), x[:2].mean(0))
    np.testing.assert_allclose(pool_segment(x, "trimmed", keep=1.0), x.mean(0))
    with pytest.raises(ValueError):
        pool_segment(x, "trimmed", keep=0.0)


def _precision_recall(fired: np.ndarray, bounds: np.ndarray, tol: int = 3):
    tp = sum(1 for f in fired if len(bounds) and np.min(np.abs(bounds - f)) <= tol)
    hit = sum(1 for b in bounds if len(fired) and np.min(np.abs(fired - b)) <= tol)
    return tp, len(fired), hit, len(bounds)


@pytest.mark.parametrize("mix", [0.0, 0.5, 0.7])
def test_online_detector_precision_recall_at_default(mix):
    tp = nf = hit = nb = 0
    for seed in SEEDS:
        x, bounds = _stream(seed, mix=mix)
        pts = online_decode_points(x, np.arange(len(x)) * 1.0)
        assert pts[0].start == 0  # the first clip always fires
        fired = np.array([p.start for p in pts[1:]])
        # a fired point matches a change if it is no later than 3 steps after it (the EMA lags)
        a, b, c, d = _precision_recall(fired, bounds)
        tp, nf, hit, nb = tp + a, nf + b, hit + c, nb + d
    assert tp / nf >= 0.9, f"precision {tp / nf:.3f}"
    assert hit / nb >= 0.9, f"recall {hit / nb:.3f}"


def test_online_detector_quiet_on_one_event_and_respects_min_gap():
    x, _ = _stream(2, k=1)
    pts = online_decode_points(x, np.arange(len(x)) * 1.0)
    assert len(pts) == 1  # noise alone never fires
    # alternating far-apart embeddings would fire every step without the gap
    a, b = np.eye(8)[0], np.eye(8)[1]
    alt = np.stack([a if (i // 1) % 2 else b for i in range(40)])
    cfg = OnlineDetectorConfig(min_gap=5.0, smoothing=0.0)
    times = [p.time_s for p in online_decode_points(alt, np.arange(40) * 1.0, cfg)]
    assert len(times) > 3
    assert min(np.diff(times)) >= 5.0


def test_online_state_is_json_and_resumes_identically():
    x, _ = _stream(4)
    times = np.arange(len(x)) * 1.0
    whole = [p.start for p in online_decode_points(x, times)]
    det = OnlineDetector()
    fired = []
    for i, (row, t) in enumerate(zip(x, times, strict=False)):
        if i % 7 == 0:  # hand the stream to a "new replica" via a JSON string
            det = OnlineDetector.from_state(
                OnlineDetectorConfig(), json.loads(json.dumps(det.state_dict()))
            )
        p = det.update(torch.from_numpy(row), t)
        if p is not None:
            fired.append(p.start)
    assert fired == whole
    assert len(whole) > 5


def test_online_config_validates():
    with pytest.raises(ValueError):
        OnlineDetectorConfig(threshold=0)
    with pytest.raises(ValueError):
        OnlineDetectorConfig(smoothing=1.0)
