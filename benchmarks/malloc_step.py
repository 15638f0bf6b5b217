"""Benchmark glibc huge pages in the training workers (pipelines/train/malloc.py).

The suite's stage-1 run (tiny preset, `--pool-temporal 2` features, 2 CPU workers with FSDP2 over
gloo, batch 32 each) as `vljepa train` starts its workers now (`glibc.malloc.hugetlb=1`) against
glibc's default (`GLIBC_TUNABLES=glibc.malloc.hugetlb=0`, which the trainer leaves as the user set
it: the baseline). The variants alternate (A B B A ...) on one embedded Ray, so machine load hits
both alike; each run's steady-state samples/s comes from its MLflow metrics (first window
dropped), and its wall time from fit to registered model.

Beside it, the mechanism alone: a fresh process making and freeing a 45 MiB fp32 tensor (MiniLM's
token table) 50 times under each setting, its page faults and milliseconds per tensor.

    python benchmarks/malloc_step.py [--clips 160] [--steps 30] [--rounds 2]
Writes benchmarks/results/malloc_step.json and malloc_step.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedding_vs_tokens import RESULTS, machine, scratch_store, write_results  # noqa: E402

from pipelines.train import malloc  # noqa: E402

VARIANTS = {"glibc default (hugetlb=0)": "glibc.malloc.hugetlb=0", "huge pages (trainer)": None}
BASELINE = "glibc default (hugetlb=0)"

_FAULTS = """
import json, resource, time, torch
torch.set_num_threads(1)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.randn(30522 * 384)
f0, t0 = faults(), time.perf_counter()
for _ in range(50):
    y = x * 2.0
    del y
print(json.dumps({"faults": (faults() - f0) / 50, "ms": (time.perf_counter() - t0) / 50 * 1e3}))
"""


def _env(tunables: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != malloc.VAR}
    if tunables is not None:
        env[malloc.VAR] = tunables
    return env


def mechanism(tunables: str) -> dict:
    """Page faults and ms per 45 MiB tensor in a process started with GLIBC_TUNABLES=tunables."""
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS],
        env=_env(tunables),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def features(work: Path, clips: int) -> Path:
    """A synthetic corpus embedded as the suite's is (tiny preset, pool_temporal 2)."""
    from pipelines.embed import EmbedConfig, run_embed
    from pipelines.synth import SynthConfig, generate

    corpus, out = work / "corpus", work / "features"
    generate(SynthConfig(out=str(corpus), clips=clips, streams=0, seed=5, val_fraction=0.2))
    run_embed(
        EmbedConfig(
            manifest=str(corpus / "manifest.jsonl"),
            out=str(out),
            preset="tiny",
            pool_temporal=2,
            progress=False,
        )
    )
    return out


def train(data: Path, work: Path, name: str, steps: int, tunables: str | None) -> dict:
    """One stage-1 run with the driver's GLIBC_TUNABLES set to `tunables` (None: unset)."""
    from pipelines.train import TrainConfig
    from pipelines.train.tracking import metric_history
    from pipelines.train.trainer import run_training

    if tunables is None:
        os.environ.pop(malloc.VAR, None)
    else:
        os.environ[malloc.VAR] = tunables
    uri = scratch_store(work)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%H%M%S%f")
    cfg = TrainConfig(
        data=str(data),
        preset="tiny",
        workers=2,
        steps=steps,
        batch_size=32,
        log_every=5,
        val_every=steps,
        checkpoint_every=steps,
        storage=str(work / "runs"),
        name=f"{name}-{stamp}",
        tracking_uri=uri,
        experiment="malloc_step",
        register_name=None,
        export_dir=str(work / "exports" / stamp),
    )
    t = time.perf_counter()
    res = run_training(cfg)
    wall = time.perf_counter() - t
    sps = [v for _, v in metric_history(uri, res.run_id, "train/samples_per_s")][1:]
    return {"samples_per_s": statistics.median(sps), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=160)
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--rounds", type=int, default=2, help="runs per variant (alternating)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    user = os.environ.get(malloc.VAR)

    mech = {v: mechanism(t or malloc.worker_tunables(None)) for v, t in VARIANTS.items()}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="malloc-step-") as tmp:
        work = Path(tmp)
        data = features(work, args.clips)
        order = list(VARIANTS)
        for r in range(args.rounds):
            for v in order if r % 2 == 0 else order[::-1]:
                runs[v].append(train(data, work, f"r{r}", args.steps, VARIANTS[v]))
                print(v, runs[v][-1], flush=True)
    if user is None:
        os.environ.pop(malloc.VAR, None)
    else:
        os.environ[malloc.VAR] = user

    sps = {v: statistics.median(x["samples_per_s"] for x in rs) for v, rs in runs.items()}
    wall = {v: statistics.median(x["wall_s"] for x in rs) for v, rs in runs.items()}
    base = sps[BASELINE]
    result = {
        "benchmark": "malloc_step",
        "machine": machine(),
        "clips": args.clips,
        "steps": args.steps,
        "rounds": args.rounds,
        "workers": 2,
        "batch_per_worker": 32,
        "samples_per_s": sps,
        "speedup_vs_glibc_default": {v: s / base for v, s in sps.items()},
        "wall_s": wall,
        "runs": runs,
        "mechanism_45mib_tensor": mech,
    }
    rows = "".join(
        f"| {v} | {sps[v]:.1f} | {sps[v] / base:.2f}x | {wall[v]:.1f} | "
        f"{mech[v]['faults']:.0f} | {mech[v]['ms']:.1f} |\n"
        for v in VARIANTS
    )
    table = (
        f"# malloc_step: stage-1 `vljepa train`, tiny preset, 2 CPU workers x batch 32, "
        f"{args.steps} steps, median of {args.rounds} runs each (alternating), {machine()}\n\n"
        "| workers' malloc | samples/s (steady) | speed-up | run wall s | page faults per "
        "45 MiB tensor | ms per 45 MiB tensor |\n|---|---:|---:|---:|---:|---:|\n" + rows + "\n"
        f"Baseline: `{BASELINE}`. Wall time includes the run's fixed costs (Ray Train start, "
        "validation, export, registration).\n"
    )
    write_results(args.out, "malloc_step", result, table)


if __name__ == "__main__":
    main()
