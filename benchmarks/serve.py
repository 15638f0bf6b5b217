"""Serving benchmark: /v1/embed latency (p50/p99) and throughput on loopback at concurrency 1, 8
and 32, with the Encoder's dynamic batching on (max_batch_size 8) against off (1), in one run.

The app is the real config (serve/serve_config.yaml) with one fixed Encoder replica so the
comparison isolates batching; the batching switch is the Encoder's `user_config`, applied by a
redeploy that reconfigures the live replica (no restart, same process, same warm model).
Writes benchmarks/results/serve.json and serve.md.

    python benchmarks/serve.py [--requests 64] [--preset tiny] [--address ADDR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `serve` package: put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clip() -> bytes:
    """A real 2 s synthetic clip (128 px, 16 frames) from the corpus generator."""
    from pipelines.synth import SynthConfig, generate

    out = Path(tempfile.mkdtemp(prefix="vljepa-bench-serve-"))
    generate(SynthConfig(out=str(out / "c"), clips=1, streams=0, seed=0, workers=1))
    return next((out / "c" / "videos").glob("*.mp4")).read_bytes()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


async def _run_level(base: str, body: dict, concurrency: int, n: int) -> dict:
    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
        # warm-up: one request per connection
        await asyncio.gather(*(c.post("/v1/embed", json=body) for _ in range(min(concurrency, 8))))

        async def one():
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                r = await c.post("/v1/embed", json=body)
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code == 200:
                    lat.append(dt)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": n,
        "errors": errors,
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p99_ms": round(_pct(lat, 0.99), 1) if lat else None,
        "req_per_s": round(len(lat) / wall, 2),
    }


def _deploy(port: int, preset: str, batch: int) -> dict:
    from serve import config as sc

    cfg = sc.apply_overrides(
        sc.load_config(),
        args={"model_uri": "", "model_preset": preset},
        deployments={
            "Ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}},
            "Encoder": {
                "num_replicas": 1,
                "max_ongoing_requests": 64,
                "user_config": {
                    "max_batch_size": batch,
                    "batch_wait_timeout_s": 0.01 if batch > 1 else 0.0,
                },
                "ray_actor_options": {"num_cpus": 1},
            },
            "TextEncoder": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
            "Decoder": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        },
        host="127.0.0.1",
        port=port,
    )
    sc.deploy(cfg)
    sc.wait_running(sc.APP_NAME, timeout_s=600)
    return cfg


def _wait_batch_size(want: int, timeout_s: float = 120) -> None:
    """A redeploy with a new user_config reconfigures the live replica asynchronously: wait
    until the Encoder itself reports the wanted batch size."""
    from ray import serve

    from serve import config as sc

    handle = serve.get_deployment_handle("Encoder", sc.APP_NAME)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if handle.info.remote().result(timeout_s=30)["batching"]["max_batch_size"] == want:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Encoder never reported max_batch_size={want}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--address", default=None, help="Ray address (default: a local Ray)")
    ap.add_argument("--levels", default="1,8,32")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    import ray
    from ray import serve

    from serve import config as sc
    from serve.streams import drop_store, store_name

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.address:
        ray.init(address=args.address, logging_level="WARNING")
    else:
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    body = {"clip_b64": base64.b64encode(_clip()).decode()}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    rows = []
    t_start = time.time()
    try:
        for mode, batch in (("batching off", 1), ("batching on", 8)):
            print(f"deploying: {mode} (max_batch_size={batch})", flush=True)
            _deploy(port, args.preset, batch)
            _wait_batch_size(batch)
            for c in levels:
                n = max(args.requests, 2 * c)
                res = asyncio.run(_run_level(base, body, c, n))
                res["mode"] = mode
                res["max_batch_size"] = batch
                rows.append(res)
                print(json.dumps(res), flush=True)
    finally:
        try:
            serve.shutdown()
            drop_store(store_name(sc.APP_NAME))
        finally:
            ray.shutdown()
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    speedup = {
        str(c): round(by[("batching on", c)]["req_per_s"] / by[("batching off", c)]["req_per_s"], 2)
        for c in levels
        if by[("batching off", c)]["req_per_s"]
    }
    result = {
        "benchmark": "serve /v1/embed on loopback",
        "preset": args.preset,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
        },
        "seconds": round(time.time() - t_start, 1),
        "rows": rows,
        "throughput_ratio_batching_on_vs_off": speedup,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Serve benchmark: `/v1/embed` on loopback",
        "",
        f"Preset `{args.preset}`, one Encoder replica (1 CPU), {os.cpu_count()} cores, "
        f"load average at the end {os.getloadavg()[0]:.1f}. Dynamic batching on = "
        "`max_batch_size` 8, wait 10 ms; off = 1.",
        "",
        "| batching | concurrency | requests | p50 ms | p99 ms | req/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode'].split()[-1]} | {r['concurrency']} | {r['requests']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['req_per_s']} | {r['errors']} |"
        )
    lines += [
        "",
        "Throughput, batching on / off: " + ", ".join(f"c={k}: {v}x" for k, v in speedup.items()),
    ]
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
