"""How `vljepa eval` reads the selective-decoding curves: the uniform calls needed to reach an
adaptive (or the online) point's CIDEr by linear interpolation, the call ratio at equal CIDEr, its
bounds, and its bootstrap interval over streams. Fixed inputs, hand-computed expectations: no
model and no ratio a model would have to reach."""

from __future__ import annotations

import numpy as np
import pytest

from jepa.metrics import cider
from pipelines.selective_eval import (
    bootstrap_call_ratios,
    call_ratios,
    summarize_curve,
    uniform_calls_to_match,
)

# ------------------------------------------------------------------ interpolation


def test_interpolates_linearly_between_the_two_uniform_points_around_the_target():
    uniform = [(10, 1.0), (20, 1.5), (30, 1.7), (40, 2.1)]
    # 1.9 lies halfway between 1.7 (30 calls) and 2.1 (40 calls)
    assert uniform_calls_to_match(uniform, 1.9) == (pytest.approx(35.0), "")
    # 1.2 is 2/5 of the way from 1.0 (10 calls) to 1.5 (20 calls)
    assert uniform_calls_to_match(uniform, 1.2) == (pytest.approx(14.0), "")
    assert uniform_calls_to_match(uniform, 1.7) == (pytest.approx(30.0), "")  # on a point
    # the input order does not matter (points are sorted by calls)
    assert uniform_calls_to_match(uniform[::-1], 1.9) == (pytest.approx(35.0), "")


def test_a_non_monotonic_uniform_curve_is_read_at_its_first_crossing():
    """The fewest uniform calls that reach the target: 10 -> 20 crosses 1.8 first."""
    uniform = [(10, 1.0), (20, 2.0), (30, 1.5), (40, 2.5)]
    assert uniform_calls_to_match(uniform, 1.8) == (pytest.approx(18.0), "")
    assert uniform_calls_to_match(uniform, 2.2) == (pytest.approx(37.0), "")  # 30 -> 40


def test_targets_off_the_uniform_curve_are_flagged_bounds():
    uniform = [(10, 1.0), (30, 1.2), (60, 1.3)]
    # never reached: the densest uniform point's calls, a lower bound on what is needed
    assert uniform_calls_to_match(uniform, 2.0) == (60.0, "lower")
    # below the sparsest uniform point: its calls, an upper bound
    assert uniform_calls_to_match(uniform, 0.5) == (10.0, "upper")
    assert uniform_calls_to_match(uniform, 1.0) == (10.0, "")  # exactly on it: a reading


# ------------------------------------------------------------------ summary (no streams)


def _rows(uniform, adaptive, online=None):
    """Rows as selective_curve makes them, without per-stream data: (rate, calls, cider)."""
    rows = [
        {"method": m, "target_rate_hz": rate, "rate_hz": rate, "calls": n, "cider": c}
        for m, pts in (("uniform", uniform), ("adaptive", adaptive))
        for rate, n, c in pts
    ]
    if online:
        n, c = online
        rows.append(
            {"method": "online", "target_rate_hz": None, "rate_hz": n / 100, "calls": n, "cider": c}
        )
    return {"rows": rows}


UNIFORM = [(1.0, 100, 2.1), (0.5, 50, 1.7), (0.35, 35, 1.5), (0.2, 20, 1.0)]


def test_summary_reads_every_adaptive_point_and_the_online_one():
    curve = _rows(
        UNIFORM,
        adaptive=[(1.0, 100, 2.3), (0.5, 50, 2.0), (0.35, 35, 1.9), (0.2, 20, 1.6)],
        online=(25, 1.8),
    )
    s = summarize_curve(curve, resamples=0)
    # adaptive at 0.35 Hz: 1.9 is 1/2 of the way from 1.7 (50 calls) to 2.1 (100): 75 calls
    assert s["adaptive_calls"] == 35 and s["adaptive_cider"] == 1.9
    assert s["adaptive_uniform_calls_to_match"] == pytest.approx(75.0)
    assert s["adaptive_call_ratio"] == pytest.approx(75 / 35)
    assert s["adaptive_call_ratio_is_lower_bound"] == 0.0
    assert s["adaptive_call_ratio_is_upper_bound"] == 0.0
    assert s["uniform_cider_at_headline_rate"] == 1.5 and s["uniform_calls_at_headline_rate"] == 35
    # online: 1.8 is 1/4 of the way from 1.7 (50) to 2.1 (100): 62.5 calls for its 25
    assert s["online_call_ratio"] == pytest.approx(62.5 / 25)
    assert s["adaptive_wins_fraction"] == 1.0
    assert "adaptive_call_ratio_ci_low" not in s and s["bootstrap_resamples"] == 0.0
    points = call_ratios(curve, resamples=0)
    assert [p["method"] for p in points] == ["adaptive"] * 4 + ["online"]
    # adaptive at 1 Hz (2.3) is above every uniform point: a lower bound, 100 / 100
    assert points[0]["bound"] == "lower" and points[0]["call_ratio"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in s.values())  # flat, for MLflow


def test_adaptive_never_reached_is_flagged_as_a_lower_bound():
    curve = _rows(UNIFORM, adaptive=[(0.35, 35, 3.0)])
    s = summarize_curve(curve, resamples=0)
    assert s["adaptive_call_ratio_is_lower_bound"] == 1.0
    assert s["adaptive_uniform_calls_to_match"] == 100.0  # the densest uniform point
    assert s["adaptive_call_ratio"] == pytest.approx(100 / 35)


def test_uniform_beating_adaptive_reads_a_ratio_below_one():
    curve = _rows(UNIFORM, adaptive=[(0.35, 35, 1.2)])
    s = summarize_curve(curve, resamples=0)
    # 1.2 is 2/5 of the way from 1.0 (20 calls) to 1.5 (35): 26 calls
    assert s["adaptive_call_ratio"] == pytest.approx(26 / 35)
    assert s["adaptive_wins_fraction"] == 0.0


# ------------------------------------------------------------------ bootstrap over streams

CAPTIONS = [
    "the lamp turns off",
    "the red ball moves left",
    "the blue ball grows",
    "the green ball vanishes",
    "the yellow ball appears",
]


def _stream_curve(n_streams: int = 8, seed: int = 0, identical: bool = False) -> dict:
    """Rows with per-stream decodes: each stream has 3-5 events; a row's caption for an event is
    right with a probability that grows with its rate (adaptive a bit more often)."""
    rng = np.random.default_rng(seed)
    refs, truth = [], []
    for s in range(n_streams):
        r = np.random.default_rng(0 if identical else 100 + s)
        labels = r.integers(0, len(CAPTIONS), int(r.integers(3, 6)))
        truth.append([CAPTIONS[i] for i in labels])
        refs.append([[CAPTIONS[i], CAPTIONS[i] + " slowly"] for i in labels])
    rows = []
    for method, bonus in (("uniform", 0.0), ("adaptive", 0.15), ("online", 0.1)):
        rates = [1.0, 0.5, 0.35, 0.2] if method != "online" else [None]
        for rate in rates:
            p_right = min(1.0, 0.2 + 0.6 * (rate or 0.4) + bonus)
            per_stream = []
            for s in range(n_streams):
                r = np.random.default_rng(0) if identical else rng
                caps = [
                    t if r.random() < p_right else CAPTIONS[(CAPTIONS.index(t) + 1) % 5]
                    for t in truth[s]
                ]
                per_stream.append({"calls": int(round(20 * (rate or 0.3))), "captions": caps})
            calls = sum(p["calls"] for p in per_stream)
            c = cider([x for p in per_stream for x in p["captions"]], [e for s in refs for e in s])
            rows.append(
                {
                    "method": method,
                    "target_rate_hz": rate,
                    "rate_hz": calls / (20 * n_streams),
                    "calls": calls,
                    "cider": c,
                    "per_stream": per_stream,
                }
            )
    return {"rows": rows, "references": refs}


def test_bootstrap_recomputes_corpus_cider_of_resampled_streams():
    """One resample by hand: the same stream draw, every row's corpus CIDEr-D of the drawn
    streams (duplicates are documents of their own) and their calls, then the reading."""
    curve = _stream_curve()
    ratios, bounded = bootstrap_call_ratios(curve, resamples=1, seed=7)
    idx = np.random.default_rng(7).integers(0, 8, 8)
    refs = [e for i in idx for e in curve["references"][i]]

    def resampled(row):
        caps = [c for i in idx for c in row["per_stream"][i]["captions"]]
        return sum(row["per_stream"][i]["calls"] for i in idx), cider(caps, refs)

    uniform = [resampled(r) for r in curve["rows"] if r["method"] == "uniform"]
    targets = [r for r in curve["rows"] if r["method"] == "adaptive"]
    targets += [r for r in curve["rows"] if r["method"] == "online"]
    assert ratios.shape == bounded.shape == (1, len(targets))
    for t, row in enumerate(targets):
        calls, c = resampled(row)
        needed, bound = uniform_calls_to_match(uniform, c)
        assert ratios[0, t] == pytest.approx(needed / calls, abs=1e-9), row["method"]
        assert bounded[0, t] == bool(bound)


def test_bootstrap_interval_contains_the_point_and_is_deterministic_for_a_seed():
    curve = _stream_curve()
    points = call_ratios(curve, resamples=200, seed=3)
    again = call_ratios(curve, resamples=200, seed=3)
    other = call_ratios(curve, resamples=200, seed=4)
    assert points == again
    assert [p["ci_low"] for p in points] != [p["ci_low"] for p in other]
    for p in points:
        if p["bound"]:
            continue
        assert p["ci_low"] <= p["call_ratio"] <= p["ci_high"], p
        assert p["ci_low"] < p["ci_high"], p  # streams differ: the interval has width
        assert 0.0 <= p["bound_fraction"] <= 1.0
    s = summarize_curve(curve, resamples=200, seed=3, points=points)
    head = next(p for p in points if p["method"] == "adaptive" and p["target_rate_hz"] == 0.35)
    assert s["adaptive_call_ratio"] == head["call_ratio"]
    assert (s["adaptive_call_ratio_ci_low"], s["adaptive_call_ratio_ci_high"]) == (
        head["ci_low"],
        head["ci_high"],
    )
    assert s["bootstrap_resamples"] == 200.0 and s["ci_level"] == 0.95


def test_identical_streams_give_an_interval_of_zero_width():
    """Every resample of identical streams is the same corpus: the interval is the point."""
    curve = _stream_curve(n_streams=5, identical=True)
    for p in call_ratios(curve, resamples=50, seed=0):
        assert p["ci_low"] == pytest.approx(p["call_ratio"])
        assert p["ci_high"] == pytest.approx(p["call_ratio"])


def test_never_reached_in_resamples_counts_as_bounded():
    """An adaptive point far above every uniform point stays a lower bound in every resample."""
    curve = _stream_curve()
    rows = curve["rows"]
    for r in rows:
        if r["method"] == "uniform":  # uniform decodes are always wrong
            for p in r["per_stream"]:
                p["captions"] = ["the orange cube spins"] * len(p["captions"])
            r["cider"] = 0.0
    points = call_ratios(curve, resamples=100, seed=0)
    head = next(p for p in points if p["target_rate_hz"] == 0.35)
    assert head["bound"] == "lower" and head["bound_fraction"] == 1.0
    densest = max(r["calls"] for r in rows if r["method"] == "uniform")
    assert head["call_ratio"] == pytest.approx(densest / head["calls"])
