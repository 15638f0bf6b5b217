"""Benchmark `vljepa embed`: the Ray Data pipeline against a serial loop running the same code.

Measured in one run, on one synthetic corpus (pipelines.synth, 128 px, 8 fps, 2 s clips):
- steady-state clips/s of the pipeline (first embedded row at the driver -> last) against a
  serial single-process loop of the same decode -> embed -> write code (target >= 1.6x on 2
  cores); start-up (cluster + actors up to the first row) reported separately (target < 20 s);
- decode throughput per core inside the pipeline (clips / summed per-clip read+decode seconds
  in the workers) against a bare decord loop over the same bytes (target >= 80%);
- peak memory summed over the driver and every Ray process it started (PSS, from /proc) at
  N clips against N/10 clips (target: within 20%: streaming, not materialising);
- reading the output back with Ray Data: time to the first batch, and the file count.

    python benchmarks/embed.py [--clips 2000] [--unique 2000] [--concurrency 2,2]
    python benchmarks/embed.py --gpu --clips 2000 --x-encoder vitl-random   # acceptance 5

The GPU mode runs the decode stage as CPU actors and the X-encoder (ViT-L proportions, random
weights, bf16) as GPU actors, and also reports GPU busy time (nvidia-smi sampling + the
encoder actors' own compute seconds).

Writes benchmarks/results/embed.json and embed.md (embed_gpu.* in GPU mode).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("VLJEPA_BENCH_CACHE", Path(tempfile.gettempdir()) / "vljepa-bench"))


# ----------------------------------------------------------------------------- corpus


def corpus(clips: int, unique: int, size: int) -> Path:
    """`unique` synthetic clips (cached between runs); the manifest repeats them up to `clips`
    rows, each with its own id (decode + embed cost per row is that of a real clip)."""
    from pipelines.synth import SynthConfig, generate

    root = CACHE / f"corpus-u{unique}-s{size}"
    if not (root / "_SUCCESS").exists():
        print(f"generating {unique} synthetic clips into {root} ...", flush=True)
        generate(
            SynthConfig(out=str(root), clips=unique, streams=0, size=size, overwrite=True),
            progress=True,
        )
    rows = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines() if x]
    out = root / f"manifest-{clips}.jsonl"
    with open(out, "w") as f:
        for i in range(clips):
            r = dict(rows[i % len(rows)])
            r["id"] = f"{r['id']}-r{i // len(rows)}"
            f.write(json.dumps(r) + "\n")
    return out


# ----------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


_TICK = os.sysconf("SC_CLK_TCK")


def tree_usage(root: int) -> tuple[float, float]:
    """(PSS MB, CPU seconds) of `root` and all its descendants.

    PSS counts shared pages once. CPU includes each process's reaped children (cutime/cstime),
    so a Ray worker that has exited still counts, through its parent.
    """
    kids, todo, pss_kb, ticks = _children(), [root], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss_kb += int(line.split()[1])
                        break
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            pass
    return pss_kb / 1024, ticks / _TICK


def tree_pss_mb(root: int) -> float:
    return tree_usage(root)[0]


class PeakMemory:
    """Samples the process tree's PSS and CPU seconds in a thread: `.peak_mb`, `.cpu_at(t)`."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.peak_mb, self.interval_s = 0.0, interval_s
        self.cpu: list[tuple[float, float]] = []  # (wall time, CPU seconds of the tree)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            pss, cpu = tree_usage(os.getpid())
            self.peak_mb = max(self.peak_mb, pss)
            self.cpu.append((time.time(), cpu))
            self._stop.wait(self.interval_s)

    def cpu_at(self, t: float) -> float | None:
        """CPU seconds of the tree at wall time t (linear between samples)."""
        for (t0, c0), (t1, c1) in zip(self.cpu, self.cpu[1:], strict=False):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        return None

    def __enter__(self) -> PeakMemory:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


class GpuSampler:
    """nvidia-smi utilisation samples every 200 ms (GPU mode)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self._proc = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
                self.samples.append((time.time(), util, mem))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def busy(self, t0: float, t1: float) -> dict:
        s = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not s:
            return {"gpu_util_mean_pct": None, "gpu_busy_s": None, "gpu_mem_peak_mib": None}
        util = sum(u for u, _ in s) / len(s)
        return {
            "gpu_util_mean_pct": round(util, 1),
            "gpu_busy_s": round(util / 100 * (t1 - t0), 2),
            "gpu_mem_peak_mib": max(m for _, m in s),
        }


# ----------------------------------------------------------------------------- runs


def embed_config(manifest: Path, out: Path, args, **kw):
    from pipelines.embed import EmbedConfig

    return EmbedConfig(
        manifest=str(manifest),
        out=str(out),
        preset=args.preset,
        x_encoder=args.x_encoder,
        x_dtype=args.x_dtype,
        batch_size=args.batch_size,
        rows_per_file=args.rows_per_file,
        concurrency=args.concurrency,
        gpus=1.0 if args.gpu else 0.0,
        overwrite=True,
        progress=False,
        **kw,
    )


def pipeline_run(manifest: Path, out: Path, args, gpu: GpuSampler | None = None) -> dict:
    """One `run_embed` on a fresh local Ray cluster started by this process."""
    import ray

    from pipelines.embed import run_embed

    cfg = embed_config(manifest, out, args)
    wall0 = time.time()
    with PeakMemory() as mem:
        s = run_embed(cfg)
    ray.shutdown()
    r = {
        k: s[k]
        for k in (
            "clips_written",
            "seconds",
            "startup_s",
            "steady_clips_per_s",
            "clips_per_s",
            "decode_s_total",
            "decode_cpu_s_total",
            "encode_s_total",
            "files",
            "concurrency",
            "errors",
        )
    }
    r["peak_pss_mb"] = round(mem.peak_mb, 1)
    # CPU seconds the whole tree (driver, raylet, actors) spent per clip in steady state: what the
    # pipeline costs, whatever else the machine is running.
    if s["startup_s"] is not None and s["last_row_s"]:
        c0, c1 = mem.cpu_at(wall0 + s["startup_s"]), mem.cpu_at(wall0 + s["last_row_s"])
        n = s["clips_embedded_this_run"] - s["first_batch_rows"]
        if c0 is not None and c1 is not None and n > 0:
            r["steady_cpu_s_per_clip"] = round((c1 - c0) / n, 5)
            r["steady_cpu_cores_busy"] = round((c1 - c0) / (s["last_row_s"] - s["startup_s"]), 2)
    if gpu is not None:
        t_first = wall0 + (s["startup_s"] or 0)
        r.update(gpu.busy(t_first, wall0 + s["seconds"]))
        r["encoder_busy_s"] = s["encode_s_total"]
    return r


def serial_run(manifest: Path, out: Path, n: int, args, threads: int | None = None) -> dict:
    """The same decode -> embed -> write code in one process, one clip batch after another.

    threads=1 is exactly the actors' setting; None lets torch use every core for its matmuls
    (a stronger baseline, reported beside it)."""
    import pyarrow as pa

    from pipelines.embed.manifest import read_manifest
    from pipelines.embed.run import output_schema
    from pipelines.embed.stages import EmbedClipsStage
    from pipelines.embed.writer import write_shard

    cfg = embed_config(manifest, out, args, limit=n)
    s = cfg.sampling()
    device = "cuda" if args.gpu else "cpu"
    # Not torch.get_num_threads(): an earlier 1-thread run in this process already lowered it.
    threads = threads or os.cpu_count() or 1
    t0 = time.perf_counter()
    stage = EmbedClipsStage(
        {"frames": s.frames, "size": s.size, "fps": s.fps, "pad": s.pad},
        cfg.model().to_dict(),
        device=device,
        torch_threads=threads,
        dtype=cfg.dtype,
    )
    setup_s = time.perf_counter() - t0
    shards = read_manifest(str(manifest), cfg.rows_per_shard, n)
    schema = output_schema(cfg)
    shutil.rmtree(out, ignore_errors=True)
    t1, c1 = time.perf_counter(), time.process_time()
    done = 0
    for sh in shards:
        items = sh.table()
        parts = [
            stage(items.slice(i, cfg.batch_size)) for i in range(0, items.num_rows, cfg.batch_size)
        ]
        good = pa.concat_tables(parts)
        write_shard(str(out), sh.shard, good, None, schema, cfg.rows_per_file)
        done += good.num_rows
    secs, cpu = time.perf_counter() - t1, time.process_time() - c1
    return {
        "cpu_s_per_clip": round(cpu / done, 5),
        "clips": done,
        "seconds": round(secs, 3),
        "clips_per_s": round(done / secs, 3),
        "setup_s": round(setup_s, 2),
        "torch_threads": threads,
    }


def bare_decord(manifest: Path, n: int, frames: int) -> dict:
    """Bytes already in memory -> decord (1 thread) -> the same frame indices: the decode ceiling."""
    import io

    import decord
    import numpy as np

    rows = [json.loads(x) for x in manifest.read_text().splitlines()[:n]]
    blobs = [(manifest.parent / r["video"]).read_bytes() for r in rows]
    t, c = time.perf_counter(), time.process_time()
    for b in blobs:
        vr = decord.VideoReader(io.BytesIO(b), ctx=decord.cpu(0), num_threads=1)
        vr.get_batch([int(round(i)) for i in np.linspace(0, len(vr) - 1, frames)]).asnumpy()
        del vr
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    return {
        "clips": n,
        "seconds": round(secs, 3),
        "clips_per_s": round(n / secs, 2),
        "cpu_s": round(cpu, 3),
        "clips_per_cpu_s": round(n / cpu, 2),
    }


def read_back(out: Path) -> dict:
    import ray

    files = sorted((out / "data").glob("*.parquet"))
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING")
    t1 = time.perf_counter()
    ds = ray.data.read_parquet(str(out / "data"))
    batch = next(
        iter(ds.select_columns(["x_tokens", "y_embedding"]).iter_torch_batches(batch_size=256))
    )
    t2 = time.perf_counter()
    rows = sum(
        len(b["clip_id"])
        for b in ds.select_columns(["clip_id"]).iter_batches(batch_size=4096, batch_format="numpy")
    )
    t3 = time.perf_counter()
    ray.shutdown()
    return {
        "files": len(files),
        "rows": rows,
        "ray_init_s": round(t1 - t0, 2),
        "first_batch_s": round(t2 - t1, 2),
        "full_scan_s": round(t3 - t2, 2),
        "first_batch_shape": list(batch["x_tokens"].shape),
    }


# ----------------------------------------------------------------------------- main


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument(
        "--unique", type=int, default=None, help="distinct videos to generate (default: --clips)"
    )
    ap.add_argument(
        "--small",
        type=int,
        default=None,
        help="the small run for the memory ratio (default clips/10)",
    )
    ap.add_argument("--serial-clips", type=int, default=400, help="clips timed in the serial loop")
    ap.add_argument("--decode-clips", type=int, default=400)
    ap.add_argument("--size", type=int, default=128, help="synthetic video size in px")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--x-encoder", default=None, help="e.g. vitl-random (GPU mode default)")
    ap.add_argument("--x-dtype", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--rows-per-file", type=int, default=1000)
    ap.add_argument(
        "--concurrency",
        default=None,
        help="MIN,MAX encoder actors (default 2,2 on CPU; 1,1 per GPU)",
    )
    ap.add_argument("--gpu", action="store_true", help="acceptance 5: encoder actors on the GPU")
    args = ap.parse_args()
    if args.gpu:
        args.x_encoder = args.x_encoder or "vitl-random"
        args.x_dtype = args.x_dtype or "bfloat16"
        args.batch_size = args.batch_size or 16
        args.concurrency = args.concurrency or "1,1"
    else:
        args.batch_size = args.batch_size or 8
        args.concurrency = args.concurrency or f"{os.cpu_count() or 2},{os.cpu_count() or 2}"
    unique = args.unique or args.clips
    small = args.small or max(1, args.clips // 10)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("RAY_ADDRESS", None)  # a private local cluster: the benchmark owns the machine
    load_before = _load()
    big_manifest = corpus(args.clips, unique, args.size)
    small_manifest = corpus(small, unique, args.size)
    work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    res: dict = {
        "clips": args.clips,
        "unique_videos": unique,
        "small_clips": small,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "gpu": args.gpu,
        "x_encoder": args.x_encoder or f"{args.preset} preset",
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "load_avg_before": load_before,
    }
    try:
        n_serial = min(args.serial_clips, args.clips)
        print("serial baseline (1 torch thread, as in the actors) ...", flush=True)
        res["serial"] = serial_run(big_manifest, work / "serial", n_serial, args, threads=1)
        print(json.dumps(res["serial"]), flush=True)
        if not args.gpu:
            print("serial baseline (torch on every core) ...", flush=True)
            res["serial_all_threads"] = serial_run(big_manifest, work / "serial2", n_serial, args)
            print(json.dumps(res["serial_all_threads"]), flush=True)
        print("bare decord loop ...", flush=True)
        res["bare_decord"] = bare_decord(big_manifest, min(args.decode_clips, args.clips), 16)
        print(f"pipeline, {small} clips ...", flush=True)
        res["pipeline_small"] = pipeline_run(small_manifest, work / "small", args)
        print(json.dumps(res["pipeline_small"]), flush=True)
        print(f"pipeline, {args.clips} clips ...", flush=True)
        with GpuSampler() if args.gpu else _null() as gpu:
            res["pipeline"] = pipeline_run(
                big_manifest, work / "big", args, gpu if args.gpu else None
            )
        print(json.dumps(res["pipeline"]), flush=True)
        print("reading the output back with Ray Data ...", flush=True)
        res["read_back"] = read_back(work / "big")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p, ser = res["pipeline"], res["serial"]
    # Per core = per CPU-second spent reading + decoding (in the workers / in the bare loop), so
    # other jobs on a shared machine do not count; wall-clock figures are kept alongside.
    bare = res["bare_decord"]
    per_cpu = p["clips_written"] / p["decode_cpu_s_total"] if p["decode_cpu_s_total"] else 0.0
    per_wall = p["clips_written"] / p["decode_s_total"] if p["decode_s_total"] else 0.0
    res["speedup_steady"] = round((p["steady_clips_per_s"] or 0) / ser["clips_per_s"], 3)
    if p.get("steady_cpu_s_per_clip"):
        # Contention-free projection: the serial loop keeps one core busy, the pipeline every
        # core; each costs its measured CPU seconds per clip. Labelled as a projection.
        res["projected_speedup_idle_machine"] = round(
            (os.cpu_count() or 1) * ser["cpu_s_per_clip"] / p["steady_cpu_s_per_clip"], 3
        )
    if "serial_all_threads" in res:
        res["speedup_steady_vs_all_threads"] = round(
            (p["steady_clips_per_s"] or 0) / res["serial_all_threads"]["clips_per_s"], 3
        )
    res["decode_per_core_clips_per_s"] = round(per_cpu, 2)
    res["decode_efficiency"] = round(per_cpu / bare["clips_per_cpu_s"], 3) if per_cpu else None
    res["decode_efficiency_wall"] = round(per_wall / bare["clips_per_s"], 3) if per_wall else None
    res["memory_ratio"] = round(p["peak_pss_mb"] / res["pipeline_small"]["peak_pss_mb"], 3)
    res["load_avg_after"] = _load()
    res["targets"] = {
        "speedup_steady >= 1.6": res["speedup_steady"] >= 1.6,
        "startup_s < 20": (p["startup_s"] or 1e9) < 20,
        "decode_efficiency >= 0.8": (res["decode_efficiency"] or 0) >= 0.8,
        "memory within 20%": abs(res["memory_ratio"] - 1) <= 0.2,
    }
    write(res, "embed_gpu" if args.gpu else "embed")


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def write(res: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    p, s, rb = res["pipeline"], res["serial"], res["read_back"]
    rows = [
        (
            "serial loop (same decode/embed/write code, 1 process)",
            f"{s['clips_per_s']:.1f} clips/s",
            f"{s['clips']} clips, torch threads {s['torch_threads']}",
        ),
        *(
            [
                (
                    "serial loop, torch on every core (stronger baseline)",
                    f"{res['serial_all_threads']['clips_per_s']:.1f} clips/s",
                    f"torch threads {res['serial_all_threads']['torch_threads']}",
                )
            ]
            if "serial_all_threads" in res
            else []
        ),
        (
            f"pipeline steady state ({p['concurrency']} actors)",
            f"{p['steady_clips_per_s']:.1f} clips/s",
            f"speed-up {res['speedup_steady']:.2f}x vs the 1-thread loop (target >= 1.6x)"
            + (
                f"; {res['speedup_steady_vs_all_threads']:.2f}x vs the all-cores loop"
                if "speedup_steady_vs_all_threads" in res
                else ""
            ),
        ),
        (
            "CPU seconds per clip: serial loop vs whole pipeline tree (steady state)",
            f"{s['cpu_s_per_clip'] * 1000:.1f} vs {p.get('steady_cpu_s_per_clip', 0) * 1000:.1f} ms",
            f"pipeline kept {p.get('steady_cpu_cores_busy')} cores busy; projected speed-up on an idle "
            f"{res['cpus']}-core machine: {res.get('projected_speedup_idle_machine', 0):.2f}x",
        ),
        (
            "pipeline start-up (cluster + actors -> first row)",
            f"{p['startup_s']:.1f} s",
            "target < 20 s",
        ),
        (
            "pipeline end to end",
            f"{p['clips_per_s']:.1f} clips/s",
            f"{p['clips_written']} clips in {p['seconds']:.1f} s",
        ),
        (
            "decode per core (read + decode, CPU time) in the pipeline vs bare decord on bytes in memory",
            f"{res['decode_per_core_clips_per_s']:.0f} vs {res['bare_decord']['clips_per_cpu_s']:.0f} clips/CPU-s",
            f"{res['decode_efficiency']:.0%} (target >= 80%); wall-clock ratio {res['decode_efficiency_wall']:.0%}",
        ),
        (
            "peak memory (PSS, driver + Ray processes)",
            f"{p['peak_pss_mb']:.0f} MB @ {p['clips_written']} vs {res['pipeline_small']['peak_pss_mb']:.0f} MB @ {res['pipeline_small']['clips_written']}",
            f"ratio {res['memory_ratio']:.2f} (target within 20%)",
        ),
        (
            "read back with Ray Data: first batch",
            f"{rb['first_batch_s']:.1f} s",
            f"{rb['files']} files, full scan {rb['full_scan_s']:.1f} s, ray.init {rb['ray_init_s']:.1f} s",
        ),
    ]
    if res["gpu"]:
        rows.append(
            (
                "GPU busy (nvidia-smi mean util in steady state)",
                f"{p.get('gpu_util_mean_pct')}%",
                f"{p.get('gpu_busy_s')} s busy; encoder actors' compute {p.get('encoder_busy_s')} s; peak {p.get('gpu_mem_peak_mib')} MiB",
            )
        )
    md = [
        f"# `vljepa embed` benchmark ({'GPU' if res['gpu'] else 'CPU'}, {res['x_encoder']})",
        "",
        f"{res['clips']} synthetic clips ({res['unique_videos']} distinct videos), batch {res['batch_size']}, "
        f"{res['cpus']} CPUs, {res['machine']}. Load average before/after: {res['load_avg_before']} / {res['load_avg_after']} "
        "(other jobs on the machine inflate every figure; ratios are measured in the same run).",
        "",
        "| measure | value | note |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "Targets: "
        + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in res["targets"].items()),
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
