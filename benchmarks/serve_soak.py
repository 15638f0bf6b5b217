"""Serving soak: live streams, caption and embed clients against a local Serve app for a bounded
time, checking that no stream event is lost or duplicated and that nothing leaks.

Starts the packaged app (tiny preset, untrained, one replica per deployment; the setup of
benchmarks/serve.py) on a private local Ray and runs, on loopback, for `--duration` seconds:

- `--streams` live streams (default 16), each a client posting clips to
  POST /v1/streams/{id}/clips with `seq` and `time_s`, one clip every `--pace` seconds (2 s:
  real time, a clip is 2 s of video). A stream is `--stream-clips` clips long, a sequence of
  segments, each one synthetic clip repeated 1-4 times; when it ends the client checks it and
  deletes it, then starts the next. Now and then (`--replay`) a clip is posted twice (a client
  retry): the second answer must be the replay of the first. A failed post is retried with
  the same seq, as a real client would.
- `--embed-clients` clients posting /v1/embed (every answer is checked against the clip's
  reference embedding: a batch must never hand a request another request's result) and
  `--caption-clients` posting /v1/caption, back to back.

Checks. The served detector is set for the soak (no smoothing, no minimum gap, threshold half
the smallest distance between two different clips' embeddings), so the expected events are
unambiguous: one at each stream's first clip and one at every change of clip, and float noise
from batching (reported) is orders of magnitude below the margin. A local
`jepa.selective.OnlineDetector` is fed the app's own embeddings of the same clips (from
/v1/embed at the start) at the same times; every stream's events (GET .../events, and the
events its clip answers carried) must be exactly the detector's: lost = expected but missing,
duplicated = listed twice or not expected.

Reports p50/p99 latency and requests/s per endpoint (and the p50 of the last fifth of the soak
against the first: drift within the run), errors by status, and the RSS of every Serve replica
and the stream store (psutil, local Ray) at the start, mid-way and at the end. Writes
benchmarks/results/serve_soak.json and serve_soak.md; exits 1 if an event was lost or
duplicated, a replay differed or an embedding went to the wrong request.

    python benchmarks/serve_soak.py [--duration 300] [--streams 16] [--pace 2.0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

# This file's folder would shadow the `serve` package (benchmarks/serve.py): the repository
# root goes first, and benchmarks/serve.py is loaded by path for its setup helpers.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))
_spec = importlib.util.spec_from_file_location("bench_serve", os.path.join(_HERE, "serve.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CLIP_S = 2.0  # length of a synthetic clip (pipelines.synth defaults): a stream's time step


# ------------------------------------------------------------------------------ measurements


@dataclass
class Stats:
    """Latencies (ms, with the time they ended) and status codes per endpoint."""

    t0: float = field(default_factory=time.perf_counter)
    lat: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    async def call(self, name: str, make):
        t = time.perf_counter()
        try:
            r = await make()
        except httpx.HTTPError as e:
            self.codes[name][type(e).__name__] += 1
            return None
        now = time.perf_counter()
        self.codes[name][str(r.status_code)] += 1
        if r.status_code == 200:
            self.lat[name].append((now - self.t0, (now - t) * 1000))
        return r

    def summary(self, seconds: float) -> dict[str, Any]:
        out = {}
        for name in sorted(set(self.lat) | set(self.codes)):
            xs = [ms for _, ms in self.lat[name]]
            fifth = seconds / 5
            first = [ms for t, ms in self.lat[name] if t <= fifth]
            last = [ms for t, ms in self.lat[name] if t >= seconds - fifth]
            out[name] = {
                "ok": len(xs),
                "codes": dict(self.codes[name]),
                "req_per_s": round(len(xs) / seconds, 2),
                "p50_ms": round(statistics.median(xs), 1) if xs else None,
                "p99_ms": round(bench.pct(xs, 0.99), 1) if xs else None,
                "p50_first_fifth_ms": round(statistics.median(first), 1) if first else None,
                "p50_last_fifth_ms": round(statistics.median(last), 1) if last else None,
            }
            if first and last:
                out[name]["drift_last_over_first"] = round(
                    statistics.median(last) / statistics.median(first), 2
                )
        return out


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def replica_rss() -> dict[str, dict[str, Any]]:
    """RSS (MB) of the app's Serve replicas, its stream store, the HTTP proxy and the
    controller (local Ray; see `benchmarks/serve.py: serve_processes`)."""
    import psutil

    out = {}
    for label, pid in bench.serve_processes().items():
        try:
            out[label] = {"pid": pid, "rss_mb": psutil.Process(pid).memory_info().rss / 2**20}
        except psutil.Error:
            continue
    return out


# ------------------------------------------------------------------------------ clients


@dataclass
class Checks:
    streams: int = 0
    clips: int = 0
    expected_events: int = 0
    lost_events: int = 0
    duplicated_events: int = 0
    replays: int = 0
    replay_mismatches: int = 0
    embed_mismatches: int = 0
    embed_max_distance: float = 0.0  # 1 - cos to the clip's reference embedding
    caption_variants: dict[int, set] = field(default_factory=lambda: defaultdict(set))
    pending_at_check: int = 0
    failures: list[str] = field(default_factory=list)


def stream_plan(rng: random.Random, n_clips: int, pool: int) -> list[int]:
    """Clip ids of one stream: segments of one clip repeated 1-4 times, each a different clip
    from the one before."""
    plan: list[int] = []
    prev = -1
    while len(plan) < n_clips:
        c = rng.choice([i for i in range(pool) if i != prev])
        plan += [c] * rng.randint(1, 4)
        prev = c
    return plan[:n_clips]


def expected_events(plan: list[int], refs: list[np.ndarray], detector: dict) -> list[int]:
    """Clip indices at which the local OnlineDetector fires on this stream's embeddings."""
    from jepa.selective import OnlineDetector, OnlineDetectorConfig

    det = OnlineDetector(OnlineDetectorConfig(**detector))
    return [
        k for k, c in enumerate(plan) if det.update(refs[c], k * CLIP_S + CLIP_S / 2) is not None
    ]


def _emitted(answer: dict) -> list[int]:
    return [e["event_id"] for e in answer["events"] if e["clip_index"] == answer["clip_index"]]


async def stream_client(
    w: int,
    c: httpx.AsyncClient,
    bodies: list[str],
    refs: list[np.ndarray],
    detector: dict,
    args,
    deadline: float,
    stats: Stats,
    checks: Checks,
) -> None:
    rng = random.Random(1000 + w)
    gen = 0
    while time.perf_counter() < deadline:
        sid = f"soak-{w}-{gen}"
        gen += 1
        plan = stream_plan(rng, args.stream_clips, len(refs))
        want = expected_events(plan, refs, detector)
        seen: Counter = Counter()  # event_id -> answers that said their clip emitted it
        start = time.perf_counter()
        done = 0
        for k, clip in enumerate(plan):
            if time.perf_counter() >= deadline:
                break
            # real-time pacing of a live stream (load shaping, not synchronisation)
            wait = start + k * args.pace - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            body = {"clip_b64": bodies[clip], "seq": k, "time_s": k * CLIP_S + CLIP_S / 2}
            path = f"/v1/streams/{sid}/clips"
            r = None
            for _attempt in range(20):  # a failed post is retried with the same seq
                r = await stats.call("stream clip", lambda p=path, b=body: c.post(p, json=b))
                if r is not None and r.status_code == 200:
                    break
            if r is None or r.status_code != 200:
                checks.failures.append(f"{sid} seq {k}: no 200 after 20 tries")
                break
            out = r.json()
            if out["clip_index"] != k:
                checks.failures.append(f"{sid} seq {k}: answered clip_index {out['clip_index']}")
            # The events this clip emitted (an answer also carries older ones whose caption it
            # retried); a replayed answer (our earlier try went through) carries them as well.
            new = _emitted(out)
            seen.update(new)
            checks.replays += bool(out["replayed"])
            done = k + 1
            if rng.random() < args.replay:
                again = await stats.call("stream clip", lambda p=path, b=body: c.post(p, json=b))
                if again is not None and again.status_code == 200:
                    checks.replays += 1
                    a = again.json()
                    if not a["replayed"] or _emitted(a) != new:
                        checks.replay_mismatches += 1
                        checks.failures.append(f"{sid} seq {k}: replay {a} != first {new}")
        if done == 0:
            continue
        want = [k for k in want if k < done]
        r = await stats.call("stream events", lambda s=sid: c.get(f"/v1/streams/{s}/events"))
        if r is None or r.status_code != 200:
            checks.failures.append(f"{sid}: events answered {getattr(r, 'status_code', r)}")
            continue
        ev = r.json()
        got = [e["clip_index"] for e in ev["events"]]
        ids = [e["event_id"] for e in ev["events"]]
        checks.streams += 1
        checks.clips += ev["clips"]
        checks.expected_events += len(want)
        lost = len(set(want) - set(got))
        dup = (len(got) - len(set(got))) + len(set(got) - set(want))
        dup += len(ids) - len(set(ids)) + sum(n - 1 for n in seen.values() if n > 1)
        # every event listed was emitted in exactly one clip's answer
        lost += len(set(ids) - set(seen))
        checks.lost_events += lost
        checks.duplicated_events += dup
        checks.pending_at_check += sum(e["status"] == "pending" for e in ev["events"])
        if ev["clips"] != done:
            checks.failures.append(f"{sid}: {ev['clips']} clips listed, {done} posted")
        if lost or dup:
            checks.failures.append(f"{sid}: events at {got}, expected {want}")
        await stats.call("stream delete", lambda s=sid: c.delete(f"/v1/streams/{s}"))


@functools.lru_cache(maxsize=64)
def _body(clip_b64: str) -> dict[str, Any]:
    """A clip's JSON request, serialised once (the load generator shares the cores)."""
    body = json.dumps({"clip_b64": clip_b64}).encode()
    return {"content": body, "headers": {"content-type": "application/json"}}


async def embed_client(
    w: int, c, bodies, refs, tol: float, deadline: float, stats: Stats, checks: Checks
) -> None:
    rng = random.Random(2000 + w)
    while time.perf_counter() < deadline:
        i = rng.randrange(len(bodies))
        r = await stats.call("embed", lambda b=_body(bodies[i]): c.post("/v1/embed", **b))
        if r is None or r.status_code != 200:
            continue
        d = 1.0 - float(_unit(r.json()["embedding"]) @ refs[i])
        checks.embed_max_distance = max(checks.embed_max_distance, d)
        if d > tol:
            checks.embed_mismatches += 1
            checks.failures.append(f"embed of clip {i}: distance {d:.2e} to its reference")


async def caption_client(w: int, c, bodies, deadline: float, stats: Stats, checks: Checks) -> None:
    rng = random.Random(3000 + w)
    while time.perf_counter() < deadline:
        i = rng.randrange(len(bodies))
        r = await stats.call("caption", lambda b=_body(bodies[i]): c.post("/v1/caption", **b))
        if r is not None and r.status_code == 200:
            checks.caption_variants[i].add(r.json()["caption"])


async def soak(base: str, bodies, refs, detector, tol, args, rss_samples) -> tuple[Stats, Checks]:
    stats, checks = Stats(), Checks()
    deadline = time.perf_counter() + args.duration
    n = args.streams + args.embed_clients + args.caption_clients
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)

    async def sample_rss():
        # mid-way sample; start and end are taken around the run
        await asyncio.sleep(args.duration / 2)
        rss_samples["middle"] = await asyncio.to_thread(replica_rss)

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:
        tasks = [
            stream_client(w, c, bodies, refs, detector, args, deadline, stats, checks)
            for w in range(args.streams)
        ]
        tasks += [
            embed_client(w, c, bodies, refs, tol, deadline, stats, checks)
            for w in range(args.embed_clients)
        ]
        tasks += [
            caption_client(w, c, bodies, deadline, stats, checks)
            for w in range(args.caption_clients)
        ]
        await asyncio.gather(sample_rss(), *tasks)
    return stats, checks


# ------------------------------------------------------------------------------ setup


def soak_detector(refs: list[np.ndarray]) -> tuple[dict[str, float], float]:
    """No smoothing, no minimum gap, threshold half the smallest distance between two clips:
    a decode exactly where the clip changes. Returns it and that smallest distance."""
    m = np.stack(refs)
    d = 1.0 - m @ m.T
    off = d[~np.eye(len(refs), dtype=bool)]
    dmin = float(off.min())
    if dmin <= 1e-4:
        raise SystemExit(f"serve_soak: two pool clips embed alike (distance {dmin:.1e})")
    return {"threshold": dmin / 2, "min_gap": 0.0, "smoothing": 0.0}, dmin


def reference_embeddings(preset: str, clips: list[bytes]) -> list[np.ndarray]:
    """The clips' embeddings in this process (the Encoder's code: decode_clip + predict), only
    to choose the soak's detector before the app starts."""
    from pipelines.clips import Sampling
    from serve.clips import decode_clip, predict
    from serve.model_loading import load_model

    model = load_model("", preset, "", keep=("x_encoder", "predictor"))
    sampling = Sampling.of(model.config.x_encoder)
    out = predict(model, [(decode_clip(c, sampling).frames, "") for c in clips])
    return [_unit(e) for e in out]


def served_embeddings(base: str, bodies: list[str], detector: dict) -> list[np.ndarray]:
    """The app's embeddings of the pool clips, once it is ready (its stream store up, so the
    memory baseline includes it) and serving the soak's detector."""
    with httpx.Client(base_url=base, timeout=300) as c:
        ready = c.get("/readyz")
        ready.raise_for_status()
        served = ready.json()["detector"]
        if any(abs(served[k] - v) > 1e-12 for k, v in detector.items()):
            raise RuntimeError(f"the app serves detector {served}, not the soak's {detector}")
        out = []
        for b in bodies:
            r = c.post("/v1/embed", json={"clip_b64": b})
            r.raise_for_status()
            out.append(_unit(r.json()["embedding"]))
        return out


def _md(res: dict) -> str:
    ch, m = res["checks"], res["memory"]
    lines = [
        "# Serve soak",
        "",
        f"{res['duration_s']:.0f} s on loopback, preset `{res['preset']}` (one replica per "
        f"deployment, Encoder batching {res['batching']}), {res['config']['streams']} live streams "
        f"(a clip every {res['config']['pace']} s, {res['config']['stream_clips']} clips each, then "
        f"checked and deleted), {res['config']['embed_clients']} embed and "
        f"{res['config']['caption_clients']} caption clients back to back. {res['machine']['cpus']} "
        f"cores, load average at the end {res['machine']['load_avg'][0]:.1f}.",
        *bench.busy_note(res["machine"]["load_avg_1m_at_start"], res["machine"]["load_avg"][0]),
        *(
            []
            if res["duration_s"] >= 300
            else ["", f"**A short run** ({res['duration_s']:.0f} s; the soak is 300 s by default)."]
        ),
        "",
        f"- streams checked: {ch['streams']}, clips {ch['clips']}, events expected "
        f"{ch['expected_events']}: **lost {ch['lost_events']}, duplicated "
        f"{ch['duplicated_events']}**; replays {ch['replays']} (mismatched "
        f"{ch['replay_mismatches']})",
        f"- embed answers for the wrong clip: {ch['embed_mismatches']} (largest distance to the "
        f"reference {ch['embed_max_distance']:.1e}, detector margin {res['detector_margin']:.1e})",
        f"- requests: {res['requests_total']} ({res['req_per_s']} req/s)",
        "",
        "| endpoint | ok | req/s | p50 ms | p99 ms | p50 first / last fifth | codes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in res["endpoints"].items():
        lines.append(
            f"| {name} | {s['ok']} | {s['req_per_s']} | {s['p50_ms']} | {s['p99_ms']} | "
            f"{s['p50_first_fifth_ms']} / {s['p50_last_fifth_ms']} "
            f"({s.get('drift_last_over_first', '-')}x) | "
            + ", ".join(f"{k}: {v}" for k, v in sorted(s["codes"].items()))
            + " |"
        )
    lines += [
        "",
        "RSS of the Serve processes (the first minutes include the allocators' warm-up: growth "
        "over the second half is the leak signal):",
        "",
        "| process | RSS start MB | middle | end | growth MB | growth 2nd half MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in m.items():
        lines.append(
            f"| {name} | {r['start']:.0f} | {r['middle']:.0f} | {r['end']:.0f} | "
            f"{r['growth_mb']:+.1f} | {r['growth_second_half_mb']:+.1f} |"
        )
    if res["failures"]:
        lines += ["", "First failures:", ""] + [f"- {f}" for f in res["failures"][:10]]
    return "\n".join(lines) + "\n"


def _memory(samples: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for key, s in samples["start"].items():
        mid, end = samples["middle"].get(key), samples["end"].get(key)
        if mid is None or end is None:
            continue  # a replica replaced during the soak: no like-for-like numbers
        out[key] = {
            "pid": s["pid"],
            "start": round(s["rss_mb"], 1),
            "middle": round(mid["rss_mb"], 1),
            "end": round(end["rss_mb"], 1),
            "growth_mb": round(end["rss_mb"] - s["rss_mb"], 1),
            "growth_second_half_mb": round(end["rss_mb"] - mid["rss_mb"], 1),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    ap.add_argument("--streams", type=int, default=16, help="concurrent live streams")
    ap.add_argument("--stream-clips", type=int, default=24, help="clips per stream")
    ap.add_argument("--pace", type=float, default=CLIP_S, help="seconds between a stream's clips")
    ap.add_argument("--replay", type=float, default=0.05, help="share of clips posted twice")
    ap.add_argument("--embed-clients", type=int, default=2)
    ap.add_argument("--caption-clients", type=int, default=1)
    ap.add_argument("--clips", type=int, default=8, help="distinct synthetic clips in the pool")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--address", default=None, help="Ray address (default: a private local Ray)")
    ap.add_argument("--no-write", action="store_true", help="print only; keep results/ as is")
    args = ap.parse_args()
    if (
        args.duration <= 0
        or args.streams < 0
        or args.stream_clips < 1
        or args.pace < 0
        or not 0 <= args.replay <= 1
        or args.embed_clients < 0
        or args.caption_clients < 0
        or args.clips < 2
    ):
        print("serve_soak.py: bad arguments (see --help)", file=sys.stderr)
        return 2

    t_start = time.time()
    load_start = os.getloadavg()[0]
    clips = bench.make_clips(args.clips)
    bodies = [base64.b64encode(c).decode() for c in clips]
    detector, dmin = soak_detector(reference_embeddings(args.preset, clips))
    print(f"soak detector {detector}", flush=True)
    bench.start_ray(args.address)
    port = bench.free_port()
    base = f"http://127.0.0.1:{port}"
    rss_samples: dict[str, dict] = {}
    try:
        bench.deploy(port, args.preset, bench.BATCH_ON, args={"detector": detector})
        refs = served_embeddings(base, bodies, detector)
        # the app's own embeddings decide what the local detector expects; the served
        # detector was chosen from in-process ones: it must still split these clips
        _, dmin_served = soak_detector(refs)
        margin = min(dmin_served - detector["threshold"], detector["threshold"])
        if margin <= 1e-4:
            raise RuntimeError(
                f"served embeddings leave the soak detector no margin ({margin:.1e})"
            )
        tol = dmin_served / 4  # an embed answer further than this is another clip's
        rss_samples["start"] = replica_rss()
        print(f"soaking {args.duration:.0f} s on {base} ...", flush=True)
        t0 = time.perf_counter()
        stats, checks = asyncio.run(soak(base, bodies, refs, detector, tol, args, rss_samples))
        seconds = time.perf_counter() - t0
        rss_samples["end"] = replica_rss()
        encoder_timings = bench.replica_timings("Encoder")
    finally:
        bench.stop_ray()

    endpoints = stats.summary(seconds)
    total = sum(s["ok"] for s in endpoints.values())
    memory = _memory(rss_samples)
    res = {
        "benchmark": "serve soak on loopback",
        "preset": args.preset,
        "batching": f"max_batch_size {bench.BATCH_ON}",
        "config": {
            k: getattr(args, k)
            for k in (
                "streams",
                "stream_clips",
                "pace",
                "replay",
                "embed_clients",
                "caption_clients",
            )
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
            "load_avg_1m_at_start": load_start,
        },
        "duration_s": round(seconds, 1),
        "wall_s": round(time.time() - t_start, 1),
        "detector": detector,
        "detector_margin": margin,
        "requests_total": total,
        "req_per_s": round(total / seconds, 2),
        "endpoints": endpoints,
        "checks": {
            k: v for k, v in vars(checks).items() if k not in ("failures", "caption_variants")
        },
        "captions_per_clip_max": max((len(v) for v in checks.caption_variants.values()), default=0),
        "memory": memory,
        "encoder_timings": encoder_timings,
        "failures": checks.failures[:50],
    }
    md = _md(res)
    print(md)
    if not args.no_write:
        bench.write_results("serve_soak", res, md)
    bad = checks.lost_events or checks.duplicated_events or checks.replay_mismatches
    return 1 if bad or checks.embed_mismatches or checks.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
