"""How `vljepa eval` reads the selective-decoding curve into its summary numbers."""

from __future__ import annotations

import pytest

from pipelines.evaluate import summarize_curve


def _curve(uniform: list[tuple[float, int, float]], adaptive: list[tuple[float, int, float]]):
    rows = [
        {"method": m, "factor": f, "calls": n, "cider": c}
        for m, pts in (("uniform", uniform), ("adaptive", adaptive))
        for f, n, c in pts
    ]
    return {"rows": rows}


def test_call_ratio_is_interpolated_on_the_uniform_curve():
    s = summarize_curve(
        _curve(
            uniform=[(1.0, 10, 1.0), (2.0, 20, 1.5), (2.85, 30, 1.7), (4.0, 40, 2.1)],
            adaptive=[(1.0, 10, 1.9)],
        )
    )
    assert s["uniform_cider_at_event_rate"] == 1.0 and s["uniform_calls_at_event_rate"] == 10
    assert s["adaptive_matches_uniform_at_ratio"] == 1.0
    # 1.9 lies halfway between 1.7 (30 calls) and 2.1 (40 calls)
    assert s["uniform_calls_to_match"] == pytest.approx(35.0)
    assert s["call_ratio_at_equal_cider"] == pytest.approx(3.5)
    assert s["call_ratio_is_lower_bound"] == 0.0


def test_no_uniform_rate_reaching_adaptive_gives_a_lower_bound_not_inf():
    s = summarize_curve(
        _curve(uniform=[(1.0, 10, 1.0), (2.85, 30, 1.2), (6.0, 60, 1.3)], adaptive=[(1.0, 10, 2.0)])
    )
    assert s["call_ratio_at_equal_cider"] == 6.0 and s["call_ratio_is_lower_bound"] == 1.0


def test_uniform_beating_adaptive_at_the_ratio_is_reported():
    s = summarize_curve(
        _curve(uniform=[(1.0, 10, 1.5), (2.85, 30, 2.0)], adaptive=[(1.0, 10, 1.8)])
    )
    assert s["adaptive_matches_uniform_at_ratio"] == 0.0
    assert s["call_ratio_at_equal_cider"] == pytest.approx((10 + 0.6 * 20) / 10)
