"""Selective decoding measured by the paper's protocol (§4.5), for `vljepa eval`.

Each stream's embedding stream (one predicted embedding per 2 s window, every 1 s) is decoded
three ways, each decode from the plain mean of its segment's windows (the paper's pooling;
`--segment-pool trimmed` is an option) and placed at the segment's midpoint:

- uniform: segments of a fixed stride, at absolute rates (decodes per second of video);
- adaptive: Ward segments (temporally adjacent merges), N = rate x duration, at the same rates;
- online: the causal detector (`jepa.selective.OnlineDetector`) at the model's calibrated
  threshold (`config.detector`, set at registration; DetectorConfig() defaults with a warning
  when the model carries none). A decode is where it fires; each covers the windows from its
  fire to the next one, i.e. the segment mean since the previous decode, issued when the next
  decode fires (or the stream ends). One point, at whatever rate the detector chooses.

Every ground-truth event is matched to the decode nearest its midpoint (pauses have no caption
and are not scored) and the corpus CIDEr-D is read against decodes per second. The call ratio
at equal CIDEr of an adaptive (or the online) point is the number of uniform calls that reach
its CIDEr, read off the uniform curve by linear interpolation, over its own calls; its interval
is a percentile bootstrap over streams (resample streams with replacement, recompute every
curve's corpus CIDEr and the ratio).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PAPER_RATIO = 2.85  # adaptive at 0.35 Hz matched uniform at 1 Hz on EgoExo4D
HEADLINE_RATE_HZ = 0.35
DEFAULT_RATES_HZ = (2.0, 1.0, 0.5, 0.35, 0.2, 0.1)
METHODS = ("uniform", "adaptive")


# ----------------------------------------------------------------------------- decode plans


def model_detector(model) -> tuple[dict[str, float], str]:
    """The online detector a model carries (calibrated at registration) and where it came from:
    ("model") or, for a model without one, the DetectorConfig() defaults ("default")."""
    from jepa.config import DetectorConfig

    det = getattr(model.config, "detector", None)
    if det is None:
        log.warning(
            "the model carries no calibrated online detector (config.detector is None): the "
            "online point uses DetectorConfig() defaults, which may not fit its embedding space"
        )
        return DetectorConfig().model_dump(), "default"
    return DetectorConfig.model_validate(det.model_dump()).model_dump(), "model"


def online_segments(emb: Any, times: Any, detector: dict[str, float]) -> list[tuple[int, int]]:
    """The detector run causally over the window embeddings: one segment per decode, from the
    window where it fires up to the next fire (the last one to the end of the stream)."""
    from jepa.selective import OnlineDetectorConfig, online_decode_points

    cfg = OnlineDetectorConfig(**detector)
    starts = [p.start for p in online_decode_points(emb, times, cfg)]
    if not starts:  # (the detector always fires on its first sample)
        return [(0, len(emb))] if len(emb) else []
    return list(zip(starts, [*starts[1:], len(emb)], strict=True))


def plan_segments(
    method: str, emb: Any, times: Any, rate_hz: float | None, detector: dict | None = None
) -> list[tuple[int, int]]:
    from jepa import selective

    if method == "adaptive":
        return selective.segments_for_rate(emb, times, float(rate_hz))
    if method == "uniform":
        return selective.uniform_segments(len(emb), selective.stride_for_rate(times, rate_hz))
    if method == "online":
        return online_segments(emb, times, detector or {})
    raise ValueError(f"unknown method {method!r}")


def event_midpoints(stream: dict) -> list[float]:
    return [(e["start"] + e["end"]) / 2 for e in stream["events"]]


def stream_references(stream: dict) -> list[list[str]]:
    """Per ground-truth event (pauses are not events), its caption and paraphrases."""
    return [[e["caption"], *e.get("paraphrases", [])] for e in stream["events"]]


def selective_curve(model, streams: list[dict], stream_embs: list, cfg) -> dict:
    """CIDEr against decodes/s, uniform and adaptive at `cfg.rates_hz` plus the online point.

    Each row keeps, per stream, its decode count and the caption matched to each event, so
    `call_ratios` can resample streams; `references` holds each stream's event references."""
    from jepa.metrics import cider, match_events_to_decodes
    from jepa.selective import decode_plan

    detector, source = model_detector(model)
    total_events = sum(len(s["events"]) for s in streams)
    total_dur = sum(float(s["duration"]) for s in streams)
    references = [stream_references(s) for s in streams]
    jobs = [(m, float(r)) for r in cfg.rates_hz for m in METHODS] + [("online", None)]
    rows = []
    for method, rate in jobs:
        per_stream = []
        for s, (emb, times) in zip(streams, stream_embs, strict=True):
            segs = plan_segments(method, emb, times, rate, detector)
            plan = decode_plan(emb, segs, times, pool=cfg.segment_pool, keep=cfg.trim_keep)
            texts = model.y_decoder.generate(
                np.stack([p.embedding for p in plan]), num_beams=cfg.num_beams
            )
            match = match_events_to_decodes(event_midpoints(s), [p.time_s for p in plan])
            per_stream.append({"calls": len(plan), "captions": [texts[j] for j in match]})
        calls = sum(p["calls"] for p in per_stream)
        cands = [c for p in per_stream for c in p["captions"]]
        rows.append(
            {
                "method": method,
                "target_rate_hz": rate,
                "rate_hz": calls / total_dur,
                "calls": calls,
                "cider": cider(cands, [r for refs in references for r in refs]),
                "per_stream": per_stream,
            }
        )
    return {
        "segment_pool": cfg.segment_pool,
        "window_s": cfg.window_s,
        "stride_s": cfg.stride_s,
        "streams": len(streams),
        "events": total_events,
        "pauses": sum(len(s.get("pauses", [])) for s in streams),
        "duration_s": total_dur,
        "event_rate_hz": total_events / total_dur if total_dur else 0.0,
        "detector": detector,
        "detector_source": source,
        "references": references,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- call ratio


def uniform_calls_to_match(uniform: Sequence[tuple[float, float]], cider: float):
    """Uniform calls needed to reach `cider`: (calls, bound), `uniform` = (calls, CIDEr) points.

    Walking the uniform curve from its fewest calls up, the first segment that rises from below
    `cider` to at or above it is interpolated linearly (the curve need not be monotonic: this
    is the fewest calls that reach it). bound is "" for a reading, "lower" when no uniform point
    reaches it (the densest uniform point's calls: more would be needed) and "upper" when even
    the sparsest uniform point is above it (its calls: fewer would do)."""
    pts = sorted((float(n), float(c)) for n, c in uniform)
    if not pts:
        raise ValueError("no uniform points")
    if pts[0][1] >= cider:
        return pts[0][0], ("" if pts[0][1] == cider else "upper")
    for (n0, c0), (n1, c1) in zip(pts, pts[1:], strict=False):
        if c0 < cider <= c1:
            return n0 + (cider - c0) / (c1 - c0) * (n1 - n0), ""
    return pts[-1][0], "lower"


def _ratio(uniform: Sequence[tuple[float, float]], calls: float, cider: float):
    needed, bound = uniform_calls_to_match(uniform, cider)
    return needed, needed / max(calls, 1), bound


def _targets(rows: list[dict]) -> list[dict]:
    """The rows a call ratio is read for: every adaptive point, then the online one."""
    return [r for r in rows if r["method"] == "adaptive"] + [
        r for r in rows if r["method"] == "online"
    ]


def bootstrap_call_ratios(
    curve: dict, resamples: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(ratios, is_bound), each (resamples, targets), on streams resampled with replacement:
    per resample, every row's corpus CIDEr-D (document frequencies from the resampled
    references) and calls are recomputed, then each target's ratio is read off the resampled
    uniform curve (a bound when it does not cross it). Deterministic for a seed."""
    from jepa.metrics import ReweightedCiderD, cook

    rows = curve["rows"]
    targets = _targets(rows)
    uniform = [r for r in rows if r["method"] == "uniform"]
    used = uniform + targets
    n_streams = len(curve["references"])
    if resamples <= 0 or n_streams == 0:
        return np.zeros((0, len(targets))), np.zeros((0, len(targets)), bool)
    cache: dict[str, Any] = {}

    def cooked(text: str):
        if text not in cache:
            cache[text] = cook(text)
        return cache[text]

    # every event of every stream is one document; a resample draws whole streams
    doc_stream = [i for i, s in enumerate(curve["references"]) for _ in s]
    refs = [[cooked(x) for x in ev] for s in curve["references"] for ev in s]
    caps = [[cooked(c) for p in r["per_stream"] for c in p["captions"]] for r in used]
    scorer = ReweightedCiderD(refs, caps)
    calls = np.array([[p["calls"] for p in r["per_stream"]] for r in used], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = np.stack(
        [
            np.bincount(rng.integers(0, n_streams, n_streams), minlength=n_streams)
            for _ in range(resamples)
        ]
    ).astype(np.float64)  # (resamples, streams): how often each stream is drawn
    cider = scorer.corpus_scores(draws[:, doc_stream])  # (resamples, rows)
    n = draws @ calls.T
    out = np.zeros((resamples, len(targets)))
    bounded = np.zeros((resamples, len(targets)), bool)
    for b in range(resamples):
        u = list(zip(n[b, : len(uniform)], cider[b, : len(uniform)], strict=True))
        for t in range(len(targets)):
            k = len(uniform) + t
            _, out[b, t], bound = _ratio(u, n[b, k], cider[b, k])
            bounded[b, t] = bool(bound)
    return out, bounded


def call_ratios(curve: dict, resamples: int = 1000, seed: int = 0, ci: float = 0.95) -> list:
    """For every adaptive point and the online point: the uniform calls that reach its CIDEr,
    the call ratio at equal CIDEr, whether it is a bound, and its bootstrap interval over
    streams (None without resamples)."""
    rows = curve["rows"]
    uniform = [(r["calls"], r["cider"]) for r in rows if r["method"] == "uniform"]
    targets = _targets(rows)
    has_streams = all("per_stream" in r for r in rows) and "references" in curve
    boot, bounded = (
        bootstrap_call_ratios(curve, resamples, seed)
        if has_streams
        else (np.zeros((0, 0)), np.zeros((0, 0), bool))
    )
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    out = []
    for t, r in enumerate(targets):
        needed, ratio, bound = _ratio(uniform, r["calls"], r["cider"])
        point = {
            "method": r["method"],
            "target_rate_hz": r.get("target_rate_hz"),
            "rate_hz": r.get("rate_hz"),
            "calls": r["calls"],
            "cider": r["cider"],
            "uniform_calls_to_match": needed,
            "call_ratio": ratio,
            "bound": bound,
            "ci_low": None,
            "ci_high": None,
            "bound_fraction": None,
        }
        if boot.shape[0]:
            lo, hi = np.percentile(boot[:, t], [lo_q, hi_q])
            point["ci_low"], point["ci_high"] = float(lo), float(hi)
            point["bound_fraction"] = float(bounded[:, t].mean())
        out.append(point)
    return out


def summarize_curve(
    curve: dict,
    headline_rate_hz: float = HEADLINE_RATE_HZ,
    resamples: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    points: list | None = None,
) -> dict[str, float]:
    """The headline numbers, flat floats (MLflow metrics): the adaptive point at
    `headline_rate_hz` (the paper's 0.35 Hz) and the online point against the uniform curve,
    with their bootstrap intervals, and how often adaptive beats uniform at the same rate."""
    rows = curve["rows"]
    if points is None:
        points = call_ratios(curve, resamples, seed, ci)
    out: dict[str, float] = {"headline_rate_hz": float(headline_rate_hz), "ci_level": float(ci)}
    with_ci = any(p["ci_low"] is not None for p in points)
    out["bootstrap_resamples"] = float(resamples) if with_ci else 0.0
    out["paper_call_ratio"] = PAPER_RATIO

    def put(prefix: str, p: dict) -> None:
        out[f"{prefix}_cider"] = float(p["cider"])
        out[f"{prefix}_calls"] = float(p["calls"])
        if p.get("rate_hz") is not None:
            out[f"{prefix}_rate_hz"] = float(p["rate_hz"])
        out[f"{prefix}_uniform_calls_to_match"] = float(p["uniform_calls_to_match"])
        out[f"{prefix}_call_ratio"] = float(p["call_ratio"])
        out[f"{prefix}_call_ratio_is_lower_bound"] = float(p["bound"] == "lower")
        out[f"{prefix}_call_ratio_is_upper_bound"] = float(p["bound"] == "upper")
        if p["ci_low"] is not None:
            out[f"{prefix}_call_ratio_ci_low"] = float(p["ci_low"])
            out[f"{prefix}_call_ratio_ci_high"] = float(p["ci_high"])
            out[f"{prefix}_call_ratio_bound_fraction"] = float(p["bound_fraction"])

    head = next(
        (
            p
            for p in points
            if p["method"] == "adaptive"
            and p["target_rate_hz"] is not None
            and math.isclose(p["target_rate_hz"], headline_rate_hz)
        ),
        None,
    )
    if head is not None:
        put("adaptive", head)
        same = next(
            (
                r
                for r in rows
                if r["method"] == "uniform"
                and r.get("target_rate_hz") is not None
                and math.isclose(r["target_rate_hz"], headline_rate_hz)
            ),
            None,
        )
        if same is not None:  # the same budget, spent evenly
            out["uniform_cider_at_headline_rate"] = float(same["cider"])
            out["uniform_calls_at_headline_rate"] = float(same["calls"])
    online = next((p for p in points if p["method"] == "online"), None)
    if online is not None:
        put("online", online)
    by_rate: dict[float, dict[str, float]] = {}
    for r in rows:
        if r["method"] in METHODS and r.get("target_rate_hz") is not None:
            by_rate.setdefault(float(r["target_rate_hz"]), {})[r["method"]] = r["cider"]
    pairs = [v for v in by_rate.values() if len(v) == 2]
    if pairs:
        wins = sum(v["adaptive"] >= v["uniform"] - 1e-12 for v in pairs)
        out["adaptive_wins_fraction"] = wins / len(pairs)
    return out


def curves(curve: dict) -> dict:
    """The three curves, compact: what `vljepa eval` prints."""
    pick = ("target_rate_hz", "rate_hz", "calls", "cider")
    out: dict[str, Any] = {
        m: [{k: r[k] for k in pick} for r in curve["rows"] if r["method"] == m] for m in METHODS
    }
    online = [{k: r[k] for k in pick[1:]} for r in curve["rows"] if r["method"] == "online"]
    out["online"] = online[0] if online else None
    return out


def format_report(sel: dict) -> str:
    """A plain-text table of the curves and the call ratios (the CLI prints it to stderr)."""
    lines = [
        f"selective decoding: {sel['streams']} streams, {sel['events']} events, "
        f"{sel.get('pauses', 0)} pauses, {sel['duration_s']:.0f} s; windows of "
        f"{sel['window_s']:g} s every {sel['stride_s']:g} s; segment pool {sel['segment_pool']}",
        f"{'rate Hz':>8} {'uniform calls':>14} {'CIDEr':>7} {'adaptive calls':>15} {'CIDEr':>7}",
    ]
    c = curves(sel)
    for u, a in zip(c["uniform"], c["adaptive"], strict=True):
        lines.append(
            f"{u['target_rate_hz']:>8g} {u['calls']:>14d} {u['cider']:>7.3f} "
            f"{a['calls']:>15d} {a['cider']:>7.3f}"
        )
    det = sel.get("detector") or {}
    if c["online"]:
        o = c["online"]
        lines.append(
            f"online detector (threshold {det.get('threshold', float('nan')):.4g}, "
            f"{sel.get('detector_source')}): {o['calls']} calls ({o['rate_hz']:.3f} Hz), "
            f"CIDEr {o['cider']:.3f}"
        )
    for p in sel.get("points", []):
        name = f"adaptive at {p['target_rate_hz']:g} Hz" if p["method"] == "adaptive" else "online"
        bound = {"lower": " (lower bound)", "upper": " (upper bound)"}.get(p["bound"], "")
        ci = (
            f", {100 * sel['summary'].get('ci_level', 0.95):.0f}% interval "
            f"{p['ci_low']:.2f}-{p['ci_high']:.2f}"
            if p["ci_low"] is not None
            else ""
        )
        lines.append(
            f"call ratio at equal CIDEr, {name}: {p['call_ratio']:.2f}x{bound}{ci} "
            f"({p['uniform_calls_to_match']:.1f} uniform calls for {p['calls']})"
        )
    return "\n".join(lines)


def curve_figure(curve: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("uniform", "o"), ("adaptive", "s")):
        pts = sorted((r["rate_hz"], r["cider"]) for r in curve["rows"] if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=method)
    for r in curve["rows"]:
        if r["method"] == "online":
            ax.plot(
                [r["rate_hz"]], [r["cider"]], marker="*", markersize=14, linestyle="none",
                color="tab:red", label=f"online detector ({curve.get('detector_source')})",
            )  # fmt: skip
    ax.axvline(curve["event_rate_hz"], color="grey", linestyle=":", label="event rate")
    ax.set_xscale("log")
    ax.set_xlabel("decodes per second")
    ax.set_ylabel("CIDEr-D (events matched to nearest decode)")
    title = f"selective decoding, segment {curve.get('segment_pool', 'mean')}"
    s = curve.get("summary") or {}
    if "adaptive_call_ratio" in s:
        title += f": {s['adaptive_call_ratio']:.2f}x at {s['headline_rate_hz']:g} Hz"
        if "adaptive_call_ratio_ci_low" in s:
            title += (
                f" [{s['adaptive_call_ratio_ci_low']:.2f}, {s['adaptive_call_ratio_ci_high']:.2f}]"
            )
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def selective_results(model, streams: list[dict], stream_embs: list, cfg) -> tuple[dict, Any]:
    """`results["selective"]` of `vljepa eval` and its figure."""
    curve = selective_curve(model, streams, stream_embs, cfg)
    points = call_ratios(curve, cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.ci_level)
    curve["points"] = points
    curve["summary"] = summarize_curve(
        curve, cfg.headline_rate_hz, cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.ci_level,
        points=points,
    )  # fmt: skip
    curve["curves"] = curves(curve)
    return curve, curve_figure(curve)
