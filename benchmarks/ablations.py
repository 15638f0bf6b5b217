"""Benchmark the paper's two VL-JEPA ablations on this platform's tiny model:

1. the Y-encoder's learning rate: frozen (`--y-lr-mult 0`: no gradient, no update, no optimizer
   state) vs 0.05x (the paper's choice) vs 1.0x the predictor's;
2. the loss: bidirectional InfoNCE vs cosine regression vs L2 regression on the normalised
   embeddings (`--loss`), all at 0.05x.

Every run is `vljepa train` (Ray Train, FSDP2, 1 worker, MLflow) on the same pre-embedded
features as benchmarks/embedding_vs_tokens.py (the 520-clip synthetic corpus through `vljepa
embed`, reused from its work folder when present), with the same steps, batch, schedule and
seeds; only the ablated setting differs (InfoNCE at 0.05x is the shared baseline of both
tables). The exported model of each run is evaluated on the val split: zero-shot top-1 / top-5
(cosine to the Y-encoder's embedding of each class name, "red_moves_left" -> "red moves left"),
text-to-video R@1 (a hit is any clip of the query's event); plus the final training loss and the
trainer's collapse diagnostics at the last step (mean per-dimension std of the unit predictions
and targets, effective rank of the targets). Writes benchmarks/results/ablations.{json,md} and
logs them to MLflow (experiment `bench-ablations`; the training runs themselves go to a scratch
store in --work, emptied at the end unless --keep-artifacts).

    python benchmarks/ablations.py [--steps 150] [--seeds 0 1 2] ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedding_vs_tokens import (  # noqa: E402
    CORPUS_SEED,
    DEFAULT_STEPS,
    DEFAULT_WORK,
    RESULTS,
    LoadSampler,
    machine,
    prepare_features,
    readable,
    scratch_store,
    train_run,
)

EXPERIMENT = "bench-ablations"
# name -> (table, TrainConfig overrides); "infonce_0.05x" is both tables' baseline
CONFIGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "frozen": (("y_lr",), {"y_lr_mult": 0.0, "loss": "infonce"}),
    "infonce_0.05x": (("y_lr", "loss"), {"y_lr_mult": 0.05, "loss": "infonce"}),
    "1.0x": (("y_lr",), {"y_lr_mult": 1.0, "loss": "infonce"}),
    "cosine": (("loss",), {"y_lr_mult": 0.05, "loss": "cosine"}),
    "l2": (("loss",), {"y_lr_mult": 0.05, "loss": "l2"}),
}
COLUMNS = ("top1", "top5", "t2v_r1", "final_loss", "pred_std", "target_std", "target_rank")
FINAL_METRICS = {
    "final_loss": "train/loss",
    "pred_std": "collapse/pred_std",
    "target_std": "collapse/target_std",
    "target_rank": "collapse/target_effective_rank",
}


def evaluate(export_dir: str, val: dict) -> dict:
    from jepa.model import VLJEPA
    from pipelines.evaluate import embedding_metrics

    model = VLJEPA.from_pretrained(export_dir)
    m, _, _ = embedding_metrics(model, readable(val))
    return {"top1": m["zero_shot_acc"], "top5": m["zero_shot_top5"], "t2v_r1": m["t2v_r1"]}


def write_md(r: dict, path: Path) -> None:
    ld = r["load_average"]

    def cell(name: str, k: str) -> str:
        a = r["aggregate"][name]
        scale = 100.0 if k in ("top1", "top5", "t2v_r1") else 1.0
        digits = {"final_loss": 3, "pred_std": 4, "target_std": 4, "target_rank": 1}.get(k, 1)
        return f"{scale * a[k]:.{digits}f} ± {scale * a[k + '_std']:.{digits}f}"

    head = (
        "| {0} | zero-shot top-1 % | zero-shot top-5 % | t2v R@1 % | final train loss | "
        "pred std | target std | target eff. rank |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    lines = [
        "# VL-JEPA ablations: Y-encoder learning rate, loss",
        "",
        f"Tiny preset; {r['corpus']['clips']} synthetic clips ({r['corpus']['val']} val, "
        f"{r['corpus']['classes']} classes) embedded by `vljepa embed` (the features of "
        f"embedding_vs_tokens); `vljepa train`, 1 worker, batch {r['batch']}, {r['steps']} steps "
        f"({r['steps'] * r['batch']} samples), lr {r['lr']} cosine; seeds "
        f"{', '.join(map(str, r['seeds']))} (mean ± std over seeds). {r['machine']}; 1-min load "
        f"average start/mean/max/end: {ld['start']:.1f} / {ld['mean']:.1f} / {ld['max']:.1f} / "
        f"{ld['end']:.1f}. Total {r['seconds'] / 60:.1f} min.",
        "",
        "## Y-encoder learning rate (InfoNCE)",
        "",
        head.format("Y-encoder lr"),
        sep,
    ]
    labels = {"frozen": "frozen (0x)", "infonce_0.05x": "0.05x (paper)", "1.0x": "1.0x"}
    for name in ("frozen", "infonce_0.05x", "1.0x"):
        lines.append(f"| {labels[name]} | " + " | ".join(cell(name, k) for k in COLUMNS) + " |")
    lines += ["", "## Loss (Y-encoder at 0.05x)", "", head.format("loss"), sep]
    labels = {"infonce_0.05x": "InfoNCE", "cosine": "cosine regression", "l2": "L2 regression"}
    for name in ("infonce_0.05x", "cosine", "l2"):
        lines.append(f"| {labels[name]} | " + " | ".join(cell(name, k) for k in COLUMNS) + " |")
    lines += [
        "",
        "Losses are not comparable across rows of the loss table (InfoNCE at temperature 0.07 vs "
        "1 - cos vs |p - t|^2 = 2 (1 - cos) on unit vectors). pred/target std: mean "
        "per-dimension std of the L2-normalised predictions/targets in the last logged batch "
        "(0 = collapsed to one point); target eff. rank: exp(entropy of the singular values) of "
        "that batch's targets (1 = one direction). Zero-shot: nearest Y-encoder embedding of the "
        "26 class names; t2v R@1: each val caption ranks the 104 val clips, a hit is a clip of "
        "its event. Per-seed numbers are in ablations.json.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=520)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per train worker")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-artifacts", action="store_true", help="keep the scratch MLflow store")
    args = ap.parse_args()

    from pipelines import tracking_store
    from pipelines.evaluate import load_split
    from pipelines.train import tracking

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.tracking_uri = tracking_store.resolve(args.tracking_uri)
    scratch = scratch_store(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load = LoadSampler()
    t0 = time.perf_counter()
    features = prepare_features(args.work, args.clips)
    val = load_split(str(features), "val")
    runs: list[dict] = []
    lr = None
    for seed in args.seeds:
        for name in args.configs:
            _, overrides = CONFIGS[name]
            res, cfg, wall, sps = train_run(
                features,
                args.work,
                scratch,
                EXPERIMENT,
                name=f"ablation-{name}-s{seed}",
                steps=args.steps,
                batch=args.batch,
                evals=1,
                seed=seed,
                threads=args.threads,
                **overrides,
            )
            lr = cfg.lr
            run = {"config": name, "seed": seed, "run_id": res.run_id, **overrides}
            for key, metric in FINAL_METRICS.items():
                hist = tracking.metric_history(scratch, res.run_id, metric)
                run[key] = hist[-1][1] if hist else float("nan")
            run.update(evaluate(res.export_dir, val))
            run.update(train_wall_s=wall, samples_per_s=sps)
            runs.append(run)
            print(
                f"{name} seed {seed}: top-1 {run['top1']:.3f} top-5 {run['top5']:.3f} t2v R@1 "
                f"{run['t2v_r1']:.3f} loss {run['final_loss']:.4f} pred std {run['pred_std']:.4f}",
                flush=True,
            )
            shutil.rmtree(res.storage_dir, ignore_errors=True)
            shutil.rmtree(res.export_dir, ignore_errors=True)
            (args.out / "ablations.json").write_text(
                json.dumps({"partial": True, "runs": runs}, indent=2)
            )

    agg = {}
    for name in args.configs:
        mine = [r for r in runs if r["config"] == name]
        agg[name] = {}
        for k in (*COLUMNS, "samples_per_s"):
            vals = [r[k] for r in mine]
            agg[name][k] = statistics.fmean(vals)
            agg[name][k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    result = {
        "benchmark": "ablations",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch_threads": args.threads,
        "corpus": {
            "clips": args.clips,
            "val": len(val["captions"]),
            "classes": len(set(val["labels"])),
            "seed": CORPUS_SEED,
            "features": str(features),
        },
        "steps": args.steps,
        "batch": args.batch,
        "seeds": args.seeds,
        "lr": lr,
        "configs": {k: CONFIGS[k][1] for k in args.configs},
        "aggregate": agg,
        "runs": runs,
        "seconds": time.perf_counter() - t0,
        "load_average": load.summary(),
    }
    files = [args.out / "ablations.json", args.out / "ablations.md"]
    files[0].write_text(json.dumps(result, indent=2))
    if set(args.configs) == set(CONFIGS):
        write_md(result, files[1])
    client = tracking_store.client(args.tracking_uri)
    run_id = tracking.start_run(
        args.tracking_uri,
        EXPERIMENT,
        "ablations",
        {"steps": args.steps, "batch": args.batch, "seeds": args.seeds},
        {"vljepa.job": "benchmark", "benchmark": "ablations"},
    )
    logger = tracking.StepLogger(args.tracking_uri, run_id, system_metrics=False)
    logger.log({f"{n}/{k}": a[k] for n, a in agg.items() for k in COLUMNS}, step=args.steps)
    for f in files:
        if f.exists():
            client.log_artifact(run_id, str(f))
    client.set_terminated(run_id, "FINISHED")
    result["mlflow_run_id"] = run_id
    files[0].write_text(json.dumps(result, indent=2))
    if not args.keep_artifacts:
        shutil.rmtree(args.work / "mlflow", ignore_errors=True)
    if files[1].exists():
        print(files[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
