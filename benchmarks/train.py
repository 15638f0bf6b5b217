"""Benchmark `vljepa train`: why pre-embedding pays, what Ray Data ingest costs, what 2 workers buy.

Three comparisons, each against a baseline measured in the same run, with the `bench` preset
(paper proportions scaled down: frozen ViT 6x384 on 512 tokens > 4-layer GQA Llama predictor >
MiniLM Y-encoder):

1. Training from Parquet features vs the same model decoding (decord) and encoding (X-encoder)
   every clip on the fly. The ideal speed-up comes from each stage's time measured alone:
   (decode + X-encoder + train step) / train step; the measured one should reach >= 80% of it.
2. Ray Data ingest (a materialised dataset, `iter_torch_batches` with the trainer's collate and
   prefetching) vs the same train steps on tensors already in memory, in steady state (after the
   first batch; time to the first batch reported separately): <= 15% slower.
3. `vljepa train` with 2 Ray Train workers (FSDP2, gloo) vs 1, samples/s from its MLflow metrics.

    python benchmarks/train.py [--clips 96] [--batch 8] [--batches 6] [--steps 30]
Writes benchmarks/results/train.json and train.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pipelines"))

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_s() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def decode(path: Path, n: int):
    import decord
    import numpy as np

    vr = decord.VideoReader(io.BytesIO(path.read_bytes()), num_threads=1)
    idx = np.linspace(0, len(vr) - 1, n).round().astype(int)
    return vr.get_batch(list(idx)).asnumpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6, help="timed batches per loop")
    ap.add_argument("--steps", type=int, default=30, help="vljepa train steps for 1 vs 2 workers")
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--skip-workers", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from conftest import embed_in_process  # the tests' in-process embedder (same Parquet layout)

    from jepa.config import VLJEPAConfig
    from jepa.loss import info_nce
    from jepa.x_encoder import XEncoder
    from pipelines.synth import SynthConfig, generate
    from pipelines.train.data import Collate, pad_ids
    from pipelines.train.joint import JointEmbedding

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    cfg = VLJEPAConfig.preset(args.preset)
    generate(
        SynthConfig(
            out=str(work / "corpus"), clips=args.clips, streams=0, seed=3, val_fraction=0.25
        )
    )
    rows = [
        json.loads(x) for x in (work / "corpus" / "manifest.jsonl").read_text().splitlines() if x
    ]
    xenc = XEncoder.from_config(cfg.x_encoder)
    model = JointEmbedding(cfg)
    opt = torch.optim.AdamW(model.param_groups(1e-4, 0.05), lr=1e-4)
    tok = model.y_encoder.tokenizer
    B, K = args.batch, args.batches
    res: dict = {
        "preset": args.preset,
        "batch": B,
        "batches": K,
        "threads": torch.get_num_threads(),
    }

    def step(x, ids, mask):
        pred, target, scale = model(x, ids, mask)
        loss, _ = info_nce(pred, target, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def text_batch(i):
        caps = [rows[(i * B + j) % len(rows)]["caption"] for j in range(B)]
        return pad_ids([tok(c)["input_ids"] for c in caps], 32)

    def clip_paths(i):
        return [work / "corpus" / rows[(i * B + j) % len(rows)]["video"] for j in range(B)]

    # ---- 1. stage times alone (per batch), then the fused on-the-fly loop
    frames = [np.stack([decode(p, xenc.num_frames) for p in clip_paths(i)]) for i in range(1)]
    x0 = xenc(frames[0])
    step(x0, *text_batch(0))  # warm-up
    t = time.perf_counter()
    for i in range(K):
        np.stack([decode(p, xenc.num_frames) for p in clip_paths(i)])
    t_dec = (time.perf_counter() - t) / K
    t = time.perf_counter()
    for _ in range(K):
        xenc(frames[0])
    t_x = (time.perf_counter() - t) / K
    t = time.perf_counter()
    for i in range(K):
        step(x0, *text_batch(i))
    t_step = (time.perf_counter() - t) / K
    ideal = (t_dec + t_x + t_step) / t_step
    t = time.perf_counter()
    for i in range(K):
        x = xenc(np.stack([decode(p, xenc.num_frames) for p in clip_paths(i)]))
        step(x, *text_batch(i))
    onthefly_sps = K * B / (time.perf_counter() - t)

    # ---- features: pre-embed (timed separately: a one-off cost), then train from Parquet
    t = time.perf_counter()
    embed_in_process(work / "corpus", work / "features", args.preset)
    res["embed_s"] = time.perf_counter() - t
    pf = pq.ParquetFile(work / "features" / "data" / "part-00000-0.parquet")
    collate = Collate(32)
    t = time.perf_counter()
    n = 0
    while n < K:
        for rb in pf.iter_batches(batch_size=B, columns=["x_tokens", "caption_ids"]):
            if rb.num_rows < B or n >= K:
                continue
            b = collate(
                {
                    "x_tokens": rb.column("x_tokens").to_numpy_ndarray(),
                    "caption_ids": np.array(rb.column("caption_ids").to_pylist(), dtype=object),
                }
            )
            step(b["x_tokens"].float(), b["input_ids"], b["attention_mask"])
            n += 1
    features_sps = K * B / (time.perf_counter() - t)
    measured = features_sps / onthefly_sps
    res["stages_s_per_batch"] = {"decode": t_dec, "x_encoder": t_x, "train_step": t_step}
    res["onthefly_samples_per_s"] = onthefly_sps
    res["features_samples_per_s"] = features_sps
    res["ideal_speedup"] = ideal
    res["measured_speedup"] = measured
    res["fraction_of_ideal"] = measured / ideal
    _save_partial(res)

    # ---- 2. Ray Data ingest vs in-memory tensors (steady state after the first batch)
    import ray

    from pipelines.train.data import load_splits

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    train_ds, _ = load_splits(str(work / "features"))
    mem = [
        collate(b)
        for b in train_ds.iter_batches(batch_size=B, batch_format="numpy", drop_last=True)
    ]
    t = time.perf_counter()
    first = None
    done = 0
    t_steady = None
    while done < K + 1:
        for b in train_ds.iter_torch_batches(
            batch_size=B, collate_fn=Collate(32), drop_last=True, prefetch_batches=2
        ):
            if first is None:
                first = time.perf_counter() - t
            step(b["x_tokens"].float(), b["input_ids"], b["attention_mask"])
            done += 1
            if done == 1:
                t_steady = time.perf_counter()
            if done >= K + 1:
                break
    ray_sps = K * B / (time.perf_counter() - t_steady)
    t = time.perf_counter()
    for i in range(K):
        b = mem[i % len(mem)]
        step(b["x_tokens"].float(), b["input_ids"], b["attention_mask"])
    mem_sps = K * B / (time.perf_counter() - t)
    res["ray_data"] = {
        "first_batch_s": first,
        "steady_samples_per_s": ray_sps,
        "in_memory_samples_per_s": mem_sps,
        "slowdown": mem_sps / ray_sps - 1,
    }
    ray.shutdown()
    _save_partial(res)

    # ---- 3. vljepa train: 1 vs 2 workers (FSDP2 over gloo), from MLflow's samples/s
    if not args.skip_workers:
        from pipelines.train import TrainConfig
        from pipelines.train.trainer import run_training

        res["workers"] = {}
        for w in (1, 2):
            cfg_t = TrainConfig(
                data=str(work / "features"),
                preset=args.preset,
                workers=w,
                steps=args.steps,
                batch_size=B,
                log_every=5,
                val_every=10_000,
                checkpoint_every=10_000,
                storage=str(work / "runs"),
                name=f"w{w}",
                register_name=None,
                tracking_uri=f"sqlite:///{work}/mlflow.db",
                experiment="bench",
            )
            t = time.perf_counter()
            r = run_training(cfg_t)
            from mlflow import MlflowClient

            hist = MlflowClient(cfg_t.tracking_uri).get_metric_history(
                r.run_id, "train/samples_per_s"
            )
            steady = [h.value for h in sorted(hist, key=lambda h: h.step)][1:] or [hist[-1].value]
            res["workers"][str(w)] = {
                "samples_per_s": float(np.median(steady)),
                "wall_s": time.perf_counter() - t,
            }
        res["workers"]["speedup_2_vs_1"] = (
            res["workers"]["2"]["samples_per_s"] / res["workers"]["1"]["samples_per_s"]
        )

    res["cpu_s"] = cpu_s()
    res["load_avg_1m"] = os.getloadavg()[0]
    res["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(res, indent=2))
    write_md(res)
    print(json.dumps(res, indent=2))
    return 0


def _save_partial(res: dict) -> None:
    """Write what is measured so far: a long run killed late still leaves its figures."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps({**res, "partial": True}, indent=2))


def write_md(r: dict) -> None:
    s = r["stages_s_per_batch"]
    lines = [
        f"# train: preset {r['preset']}, batch {r['batch']}, {r['batches']} timed batches, {r['machine']}",
        "",
        "| stage (per batch, alone) | seconds |",
        "|---|---:|",
        *(f"| {k} | {v:.3f} |" for k, v in s.items()),
        "",
        "| comparison | baseline | measured | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| features vs on-the-fly decode+encode (samples/s) | {r['onthefly_samples_per_s']:.2f} | "
        f"{r['features_samples_per_s']:.2f} | {r['measured_speedup']:.2f}x (ideal {r['ideal_speedup']:.2f}x, "
        f"{100 * r['fraction_of_ideal']:.0f}% of ideal) | >= 80% of ideal |",
        f"| Ray Data ingest vs in-memory, steady state (samples/s) | {r['ray_data']['in_memory_samples_per_s']:.2f} | "
        f"{r['ray_data']['steady_samples_per_s']:.2f} | {100 * r['ray_data']['slowdown']:+.1f}% | <= +15% |",
    ]
    if "workers" in r:
        w = r["workers"]
        lines.append(
            f"| vljepa train 2 workers vs 1 (samples/s) | {w['1']['samples_per_s']:.2f} | "
            f"{w['2']['samples_per_s']:.2f} | {w['speedup_2_vs_1']:.2f}x | reported |"
        )
    lines += [
        "",
        f"Time to the first Ray Data batch: {r['ray_data']['first_batch_s']:.2f} s. Pre-embedding "
        f"the corpus (one-off): {r['embed_s']:.1f} s. 1-min load average at the end: "
        f"{r['load_avg_1m']:.1f} (the machine is shared; wall times include other jobs).",
    ]
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
