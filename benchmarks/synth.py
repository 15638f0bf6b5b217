"""Benchmark `vljepa synth`: clips generated per second, 1 worker (baseline) vs N workers.

Acceptance: 1,000 clips in under 3 minutes on 2 cores. Both runs generate the same corpus
(same seed) into fresh temporary directories, so the ratio is pure parallel speed-up; the test
suite checks the outputs are byte-identical, this script only times them.

    python benchmarks/synth.py [--clips 1000] [--workers 2] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.synth import SynthConfig, generate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT_S = 180.0


def _cpu_s() -> float:
    """CPU seconds of this process plus its finished children (the pool's workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(clips: int, workers: int, size: int) -> dict:
    out = tempfile.mkdtemp(prefix=f"synth-bench-w{workers}-")
    cpu0 = _cpu_s()
    try:
        s = generate(SynthConfig(out=out, clips=clips, streams=0, size=size, workers=workers))
        mb = s.bytes / 1e6
    finally:
        shutil.rmtree(out, ignore_errors=True)
    cpu = _cpu_s() - cpu0
    return {
        "workers": workers,
        "clips": s.clips,
        "seconds": s.seconds,
        "clips_per_s": s.clips_per_s,
        "mb": round(mb, 1),
        "cpu_s": round(cpu, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument(
        "--repeats", type=int, default=2, help="1: one run each; 2: ABBA order, best of 2"
    )
    args = ap.parse_args()

    # ABBA order, best of each: the machine is shared, so one slow moment should not decide it.
    order = [1, args.workers, args.workers, 1] if args.repeats > 1 else [1, args.workers]
    runs = []
    for w in order:
        runs.append(run(args.clips, w, args.size))
        print(
            f"{w} worker(s): {runs[-1]['seconds']:.1f} s, {runs[-1]['clips_per_s']:.1f} clips/s",
            flush=True,
        )
    base = min((r for r in runs if r["workers"] == 1), key=lambda r: r["seconds"])
    par = min((r for r in runs if r["workers"] == args.workers), key=lambda r: r["seconds"])
    speedup = par["clips_per_s"] / base["clips_per_s"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "synth",
        "clips": args.clips,
        "size": args.size,
        "frames_per_clip": 16,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_after": load,
        "python": platform.python_version(),
        "baseline": base,
        "parallel": par,
        "runs": runs,
        "speedup": round(speedup, 2),
        "limit_s_per_1000_clips": LIMIT_S,
        "parallel_s_per_1000_clips": round(par["seconds"] * 1000 / args.clips, 1),
        "meets_limit": par["seconds"] * 1000 / args.clips < LIMIT_S,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# synth: {args.clips} clips ({args.size}px, 16 frames, H.264), {os.cpu_count()} cores",
        "",
        "| workers | seconds (best) | clips/s | CPU s | MB | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| 1 (baseline) | {base['seconds']:.1f} | {base['clips_per_s']:.1f} | {base['cpu_s']} | {base['mb']} | 1.00x |",
        f"| {args.workers} | {par['seconds']:.1f} | {par['clips_per_s']:.1f} | {par['cpu_s']} | {par['mb']} | {speedup:.2f}x |",
        "",
        f"Acceptance: 1,000 clips in under {LIMIT_S:.0f} s -> "
        f"{result['parallel_s_per_1000_clips']} s per 1,000 clips with {args.workers} workers "
        f"({'met' if result['meets_limit'] else 'NOT met'}). 1-min load average after the run: {load}"
        " (the machine is shared: wall time includes other jobs; CPU s does not).",
        "",
    ]
    (RESULTS / "synth.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
