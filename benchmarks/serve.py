"""Serving benchmark: /v1/embed latency (p50/p99) and throughput on loopback at concurrency 1, 8
and 32, with the Encoder's dynamic batching on (max_batch_size 8) against off (1), and both
against the in-process limit, all measured in one run.

- In-process limit: the same clips embedded in this process by the same code (decode with
  `serve.clips.decode_clip`, i.e. pipelines/clips.py, then `serve.clips.predict`, the Encoder's
  model step) on as many torch threads as the Encoder replica gets: one clip at a time (the
  issue's reference, ~44 clips/s on an idle 2-core machine) and, stricter, in batches of
  max_batch_size. Each measured before and after the Serve runs; the larger is used.
- Serve: the real config (serve/serve_config.yaml) with one fixed Encoder replica (1 CPU), so
  the comparison isolates batching; the batching switch is the Encoder's `user_config`, applied
  by a redeploy that reconfigures the live replica (same process, same warm model). After each
  level the Encoder reports where its requests' time went (`Encoder.timings`: decode, queue,
  model, all in the replica); client latency minus the replica's is the HTTP proxy, the Ingress
  and the two handle hops.

Targets (issue 14): batching on costs at most 1.2x the p50 of off at c=1; Serve at c=32 reaches
at least 80% of the in-process rate (one clip at a time; the batched fraction is reported too).
Wall-clock figures need an idle machine; the CPU each process spends per request does not, and
gives a load-robust bound: cores / CPU per request, against 1 / in-process CPU per clip.
Writes benchmarks/results/serve.json and serve.md.

    python benchmarks/serve.py [--requests 64] [--levels 1,8,32] [--preset tiny] [--address ADDR]

`benchmarks/serve_soak.py` starts the app with this file's helpers.
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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `serve` package: put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from serve.deployments import _BATCH_DEFAULTS  # noqa: E402 (after the sys.path fix)

RESULTS = Path(__file__).resolve().parent / "results"
# What "batching on" means here: the packaged defaults (their one home: serve/deployments.py).
BATCH_ON = int(_BATCH_DEFAULTS["max_batch_size"])
ENCODER_CPUS = 1
C1_P50_TARGET = 1.2  # batching on / off, p50 at concurrency 1: at most
LIMIT_TARGET = 0.8  # Serve's c=32 rate / the in-process rate (one clip at a time): at least


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clips(n: int = 1, seed: int = 0) -> list[bytes]:
    """`n` real 2 s synthetic clips (128 px, 16 frames) from the corpus generator."""
    from pipelines.synth import SynthConfig, generate

    out = Path(tempfile.mkdtemp(prefix="vljepa-bench-serve-"))
    generate(SynthConfig(out=str(out / "c"), clips=n, streams=0, seed=seed, workers=1))
    return [p.read_bytes() for p in sorted((out / "c" / "videos").glob("*.mp4"))]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


def start_ray(address: str | None) -> None:
    """Connect to `address`, or start a private local Ray (never someone else's on this host)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # replicas' request logs stay in the session's log files: printed, they would cost the
    # driver (the load generator) CPU and bury the results
    quiet = {"logging_level": "WARNING", "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", num_cpus=4, include_dashboard=False, **quiet)


def stop_ray() -> None:
    import ray
    from ray import serve

    from serve import config as sc
    from serve.streams import drop_store, store_name

    try:
        serve.shutdown()
        drop_store(store_name(sc.APP_NAME))
    finally:
        ray.shutdown()


def deploy(
    port: int,
    preset: str,
    batch: int,
    args: dict[str, Any] | None = None,
    deployments: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """The packaged config with fixed replica counts (one Encoder replica, 1 CPU) and the
    Encoder's batching switched by `batch` (1 = off); `args`/`deployments` override more.

    Model deployments are pinned with autoscaling min = max = 1: `num_replicas` in the config
    does not switch off the `autoscaling_config` their decorators carry (the first version of
    this benchmark, pinned that way, had the Encoder autoscaled to 4 replicas on 2 cores in its
    c=32 level, and the next level measured replicas starting up)."""
    from serve import config as sc

    wait = _BATCH_DEFAULTS["batch_wait_timeout_s"] if batch > 1 else 0.0
    one = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}
    fixed = {
        "Ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}},
        "Encoder": {
            "autoscaling_config": one,
            "max_ongoing_requests": 64,
            "user_config": {"max_batch_size": batch, "batch_wait_timeout_s": wait},
            "ray_actor_options": {"num_cpus": ENCODER_CPUS},
        },
        "TextEncoder": {"autoscaling_config": one, "ray_actor_options": {"num_cpus": 0.1}},
        "Decoder": {"autoscaling_config": one, "ray_actor_options": {"num_cpus": 0.1}},
    }
    for name, over in (deployments or {}).items():
        fixed[name] = {**fixed.get(name, {}), **over}
    cfg = sc.apply_overrides(
        sc.load_config(),
        args={"model_uri": "", "model_preset": preset, **(args or {})},
        deployments=fixed,
        host="127.0.0.1",
        port=port,
    )
    sc.deploy(cfg)
    sc.wait_running(sc.APP_NAME, timeout_s=600)
    wait_batch_size(batch)
    return cfg


def wait_batch_size(want: int, timeout_s: float = 120) -> None:
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


def replica_timings(deployment: str, reset: bool = False) -> dict | None:
    """The deployment's `timings()` (None: a build without it)."""
    from ray import serve

    from serve import config as sc

    try:
        handle = serve.get_deployment_handle(deployment, sc.APP_NAME)
        return handle.timings.remote(reset=reset).result(timeout_s=30)
    except Exception:
        return None


def write_results(stem: str, result: dict, md: str) -> None:
    """benchmarks/results/<stem>.json and .md (serve_soak.py writes its own with this too)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)


def busy_note(load_start: float, load_end: float) -> list[str]:
    """A warning for the results when the machine was not idle when the run began (other work on
    the cores makes wall-clock figures unrepresentative; CPU per request is much less affected).
    The load at the end is the benchmark's own Ray processes, so only the start decides."""
    cores = len(os.sched_getaffinity(0))
    if load_start <= 0.5 * cores:
        return []
    return [
        "",
        f"**Measured on a busy machine** (load average {load_start:.1f} at the start, "
        f"{load_end:.1f} at the end, {cores} cores): wall-clock figures are not representative; "
        "rerun on an idle machine.",
    ]


def serve_processes() -> dict[str, int]:
    """label -> pid of this app's Serve replicas, its stream store, the HTTP proxy and the
    controller on this node (local Ray). Read from the GCS actor table
    (`ray._private.state.actors`: it has the pids and needs no dashboard, which the benchmarks
    leave off to keep its CPU)."""
    import ray
    from ray._private import state

    from serve import config as sc
    from serve.streams import store_name

    here = ray.get_runtime_context().get_node_id()
    store = store_name(sc.APP_NAME)
    found: list[tuple[str, str, int]] = []
    for a in state.actors(actor_state_name="ALIVE").values():
        cls, name = a["ActorClassName"], a["Name"]
        if a["Address"]["NodeID"] != here or not a["Pid"]:
            continue
        if cls.startswith(f"ServeReplica:{sc.APP_NAME}:"):
            label = cls.split(":")[-1]
        elif name == store:
            label = "stream store"
        elif cls in ("ProxyActor", "ServeController"):
            label = {"ProxyActor": "HTTP proxy", "ServeController": "controller"}[cls]
        else:
            continue
        found.append((label, a["ActorID"][:6], a["Pid"]))
    n = Counter(label for label, _, _ in found)
    return {(f"{label} {aid}" if n[label] > 1 else label): pid for label, aid, pid in found}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each process (gone ones left out)."""
    import psutil

    out = {}
    for label, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[label] = t.user + t.system
    return out


# ------------------------------------------------------------------------------ in-process


def in_process(clips: list[bytes], preset: str, threads: int, batch: int, n: int) -> dict:
    """Clips/s of decode + model in this process, one at a time and in batches of `batch`, on
    `threads` torch threads: the rate the Encoder's own code reaches with no serving around it."""
    import torch

    from pipelines.clips import Sampling
    from serve.clips import decode_clip, predict
    from serve.model_loading import load_model

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = load_model("", preset, "", keep=("x_encoder", "predictor"))
        sampling = Sampling.of(model.config.x_encoder)
        out: dict[str, Any] = {"threads": threads, "clips": n}
        for b in (1, batch):
            predict(model, [(decode_clip(clips[0], sampling).frames, "")] * b)  # warm-up
            decode_s = model_s = 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, n, b):
                t = time.perf_counter()
                items = [
                    (decode_clip(clips[j % len(clips)], sampling).frames, "")
                    for j in range(i, min(n, i + b))
                ]
                decode_s += time.perf_counter() - t
                t = time.perf_counter()
                predict(model, items)
                model_s += time.perf_counter() - t
            wall = time.perf_counter() - t0
            out[f"batch_{b}"] = {
                "clips_per_s": round(n / wall, 2),
                "decode_ms_per_clip": round(decode_s / n * 1000, 2),
                "model_ms_per_clip": round(model_s / n * 1000, 2),
                "cpu_ms_per_clip": round((time.process_time() - c0) / n * 1000, 1),
                "cpu_s_per_wall_s": round((time.process_time() - c0) / wall, 2),
            }
        return out
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ serve


async def run_level(
    base: str, bodies: list[bytes], concurrency: int, n: int, pids: dict[str, int]
) -> dict:
    """One closed-loop level: `concurrency` clients, `n` requests. Besides latency and rate,
    the CPU each process spent per request (robust to a busy machine where wall time is not).
    `bodies`: JSON request bodies, serialised once (the client shares the cores measured)."""
    pids = {**pids, "client (benchmark)": os.getpid()}
    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits, headers=headers) as c:
        # warm-up: one request per connection
        await asyncio.gather(
            *(c.post("/v1/embed", content=bodies[i % len(bodies)]) for i in range(concurrency))
        )
        replica_timings("Encoder", reset=True)

        async def one(i: int):
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                r = await c.post("/v1/embed", content=bodies[i % len(bodies)])
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code == 200:
                    lat.append(dt)
                else:
                    errors += 1

        cpu0 = cpu_seconds(pids)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds(pids)
    row: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": n,
        "errors": errors,
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p99_ms": round(pct(lat, 0.99), 1) if lat else None,
        "req_per_s": round(len(lat) / wall, 2),
        "cpu_ms_per_request": {
            k: round((cpu1[k] - cpu0[k]) / n * 1000, 1) for k in cpu0 if k in cpu1
        },
    }
    t = await asyncio.to_thread(replica_timings, "Encoder")
    if t and "total" in t:
        row["encoder"] = {k: t[k]["p50_ms"] for k in ("decode", "queue", "model", "total")}
        row["encoder"]["batch_mean"] = t["batches"]["mean_size"]
        if row["p50_ms"] is not None:
            row["outside_encoder_p50_ms"] = round(row["p50_ms"] - t["total"]["p50_ms"], 1)
    return row


def aggregate(raw: list[dict]) -> list[dict]:
    """One row per (mode, concurrency): the median over rounds of every figure."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in raw:
        groups[(r["mode"], r["concurrency"])].append(r)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return round(statistics.median(xs), 2) if xs else None

    rows = []
    for (mode, c), rs in groups.items():
        row: dict[str, Any] = {
            "mode": mode,
            "max_batch_size": rs[0]["max_batch_size"],
            "concurrency": c,
            "rounds": len(rs),
            "requests": sum(r["requests"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
        }
        for k in ("p50_ms", "p99_ms", "req_per_s", "outside_encoder_p50_ms"):
            row[k] = med([r.get(k) for r in rs])
        for k in ("encoder", "cpu_ms_per_request"):
            keys = {kk for r in rs for kk in r.get(k) or {}}
            if keys:
                row[k] = {kk: med([(r.get(k) or {}).get(kk) for r in rs]) for kk in sorted(keys)}
        rows.append(row)
    return rows


def summarise(rows: list[dict], levels: list[int], before: dict, after: dict) -> dict:
    """The figures the targets are judged on (see the module docstring)."""
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    b = f"batch_{BATCH_ON}"
    one = max(before["batch_1"]["clips_per_s"], after["batch_1"]["clips_per_s"])
    batched = max(before[b]["clips_per_s"], after[b]["clips_per_s"])
    cpu_one = min(before["batch_1"]["cpu_ms_per_clip"], after["batch_1"]["cpu_ms_per_clip"])
    cpu_batched = min(before[b]["cpu_ms_per_clip"], after[b]["cpu_ms_per_clip"])
    cores = len(os.sched_getaffinity(0))

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    top = 32 if 32 in levels else max(levels)
    modes = ("on", "off")
    rate = {m: by[(f"batching {m}", top)]["req_per_s"] for m in modes}
    # load-robust: what `cores` fully busy could serve at this CPU cost per request
    cpu_rate = {
        m: round(cores * 1000 / sum(by[(f"batching {m}", top)]["cpu_ms_per_request"].values()), 2)
        for m in modes
        if by[(f"batching {m}", top)].get("cpu_ms_per_request")
    }
    return {
        "in_process_clips_per_s": {"one_at_a_time": one, "batched": batched},
        "in_process_cpu_ms_per_clip": {"one_at_a_time": cpu_one, "batched": cpu_batched},
        "c1_p50_on_over_off": ratio(
            by.get(("batching on", 1), {}).get("p50_ms"),
            by.get(("batching off", 1), {}).get("p50_ms"),
        ),
        "c32_req_per_s": rate,
        "c32_of_in_process": {m: ratio(rate[m], one) for m in modes},
        "c32_of_in_process_batched": {m: ratio(rate[m], batched) for m in modes},
        "c32_cpu_bound_req_per_s": cpu_rate,
        "c32_cpu_bound_of_in_process": {m: ratio(v, 1000 / cpu_one) for m, v in cpu_rate.items()},
        "c32_cpu_bound_of_in_process_batched": {
            m: ratio(v, 1000 / cpu_batched) for m, v in cpu_rate.items()
        },
        "throughput_on_over_off": {
            str(c): ratio(by[("batching on", c)]["req_per_s"], by[("batching off", c)]["req_per_s"])
            for c in levels
        },
        "targets": {"c1_p50_on_over_off_max": C1_P50_TARGET, "c32_of_in_process_min": LIMIT_TARGET},
        "cores": cores,
    }


def _md(result: dict) -> str:
    s = result["summary"]
    lim = result["in_process"]
    lines = [
        "# Serve benchmark: `/v1/embed` on loopback",
        "",
        f"Preset `{result['preset']}`, one Encoder replica ({ENCODER_CPUS} CPU, "
        f"{lim['before']['threads']} torch thread), {result['machine']['cpus']} cores, load "
        f"average at the end {result['machine']['load_avg'][0]:.1f}. Batching on = "
        f"`max_batch_size` {BATCH_ON}, wait for clips still decoding up to "
        f"{result['batch_wait_timeout_s'] * 1000:g} ms; off = 1. Encoder columns: p50 ms inside "
        "the replica (decode, queue for the model, the batch's model run); outside = client p50 "
        "minus the replica's (HTTP proxy, Ingress, handle hops). Each figure: the median over "
        f"{result['rounds']} round(s) alternating the modes.",
        *busy_note(result["machine"]["load_avg_1m_at_start"], result["machine"]["load_avg"][0]),
        "",
        "| batching | concurrency | requests | p50 ms | p99 ms | req/s | of in-process | "
        "decode | queue | model | outside | mean batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one = s["in_process_clips_per_s"]["one_at_a_time"]
    for r in result["rows"]:
        e = r.get("encoder") or {}
        lines.append(
            f"| {r['mode'].split()[-1]} | {r['concurrency']} | {r['requests']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['req_per_s']} | {r['req_per_s'] / one:.2f} | "
            f"{e.get('decode', '')} | {e.get('queue', '')} | {e.get('model', '')} | "
            f"{r.get('outside_encoder_p50_ms', '')} | {e.get('batch_mean', '')} | {r['errors']} |"
        )
    labels = sorted(
        {k for r in result["rows"] for k in r.get("cpu_ms_per_request") or {}},
        key=lambda k: (k.split()[0] not in ("Encoder", "Ingress", "HTTP", "client"), k),
    )
    if labels:
        lines += [
            "",
            "CPU ms per request by process (user + system; what each request costs, robust on a "
            "busy machine where wall time is not):",
            "",
            "| batching | concurrency | " + " | ".join(labels) + " | all |",
            "|---|---:|" + "---:|" * (len(labels) + 1),
        ]
        for r in result["rows"]:
            cpu = r.get("cpu_ms_per_request") or {}
            lines.append(
                f"| {r['mode'].split()[-1]} | {r['concurrency']} | "
                + " | ".join(str(cpu.get(k, "")) for k in labels)
                + f" | {sum(cpu.values()):.1f} |"
            )
    b = f"batch_{BATCH_ON}"
    lines += [
        "",
        "In-process limit (same clips, `decode_clip` + `predict`, one process, "
        f"{lim['before']['threads']} torch thread), clips/s before / after the Serve runs:",
        "",
        "| batch | before | after | decode ms/clip | model ms/clip | CPU ms/clip |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ("batch_1", b):
        lines.append(
            f"| {k.split('_')[1]} | {lim['before'][k]['clips_per_s']} | "
            f"{lim['after'][k]['clips_per_s']} | {lim['before'][k]['decode_ms_per_clip']} | "
            f"{lim['before'][k]['model_ms_per_clip']} | {lim['before'][k]['cpu_ms_per_clip']} |"
        )
    ip, of, ofb = (
        s["in_process_clips_per_s"],
        s["c32_of_in_process"],
        s["c32_of_in_process_batched"],
    )
    cpu, cpu_of = s["c32_cpu_bound_req_per_s"], s["c32_cpu_bound_of_in_process"]
    cpu_ofb = s["c32_cpu_bound_of_in_process_batched"]
    lines += [
        "",
        f"- c=1 p50, batching on / off: **{s['c1_p50_on_over_off']}x** "
        f"(target <= {C1_P50_TARGET}x)",
        f"- c=32 rate / in-process rate one clip at a time ({ip['one_at_a_time']} clips/s): "
        f"batching on **{of['on']}**, off {of['off']} (target >= {LIMIT_TARGET}); / in-process "
        f"batched ({ip['batched']} clips/s): on {ofb['on']}, off {ofb['off']}",
        f"- load-robust, from CPU per request: {s['cores']} cores fully busy would serve c=32 at "
        f"{cpu.get('on')} req/s with batching on, {cpu.get('off')} off: "
        f"{cpu_of.get('on')} / {cpu_of.get('off')} of the in-process CPU-bound rate one clip at "
        f"a time, {cpu_ofb.get('on')} / {cpu_ofb.get('off')} batched",
        "- throughput, batching on / off: "
        + ", ".join(f"c={k}: {v}x" for k, v in s["throughput_on_over_off"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--requests", type=int, default=64, help="requests per level (at least 4 x concurrency)"
    )
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--address", default=None, help="Ray address (default: a private local Ray)")
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels (32 must be one)")
    ap.add_argument("--clips", type=int, default=8, help="distinct clips the requests cycle over")
    ap.add_argument(
        "--rounds", type=int, default=1, help="alternate the modes this many times (busy machine)"
    )
    ap.add_argument("--no-write", action="store_true", help="print only; keep results/ as is")
    args = ap.parse_args()
    try:
        levels = [int(x) for x in args.levels.split(",")]
    except ValueError:
        levels = []
    if min([args.requests, args.clips, args.rounds, *levels, 0 if not levels else 1]) < 1:
        print(
            "serve.py: --requests, --clips, --rounds and --levels must be positive", file=sys.stderr
        )
        return 2

    t_start = time.time()
    load_start = os.getloadavg()[0]
    clips = make_clips(args.clips)
    bodies = [json.dumps({"clip_b64": base64.b64encode(c).decode()}).encode() for c in clips]
    n_limit = max(64, args.requests)
    print("in-process limit (before) ...", flush=True)
    before = in_process(clips, args.preset, ENCODER_CPUS, BATCH_ON, n_limit)
    print(json.dumps(before), flush=True)

    start_ray(args.address)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    raw = []
    try:
        # Rounds alternate the modes (a config update, same warm replica), so a machine whose
        # load drifts weighs on both alike; each figure is the median over rounds.
        for rnd in range(args.rounds):
            for mode, batch in (("batching off", 1), ("batching on", BATCH_ON)):
                print(f"round {rnd + 1}: {mode} (max_batch_size={batch})", flush=True)
                deploy(port, args.preset, batch)
                pids = serve_processes()
                for c in levels:
                    n = max(args.requests, 4 * c)
                    res = asyncio.run(run_level(base, bodies, c, n, pids))
                    res.update(mode=mode, max_batch_size=batch, round=rnd + 1)
                    raw.append(res)
                    print(json.dumps(res), flush=True)
    finally:
        stop_ray()
    rows = aggregate(raw)
    print("in-process limit (after) ...", flush=True)
    after = in_process(clips, args.preset, ENCODER_CPUS, BATCH_ON, n_limit)
    print(json.dumps(after), flush=True)

    summary = summarise(rows, levels, before, after)
    result = {
        "benchmark": "serve /v1/embed on loopback",
        "preset": args.preset,
        "batch_wait_timeout_s": _BATCH_DEFAULTS["batch_wait_timeout_s"],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
            "load_avg_1m_at_start": load_start,
        },
        "seconds": round(time.time() - t_start, 1),
        "in_process": {"before": before, "after": after},
        "rounds": args.rounds,
        "rows": rows,
        "raw_rows": raw,
        "summary": summary,
    }
    md = _md(result)
    print(md)
    if not args.no_write:
        write_results("serve", result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
