"""Train the predictor and Y-encoder with InfoNCE on pre-embedded features: Ray Train workers,
FSDP2 (gloo on CPU, NCCL + bf16 on GPU), cross-rank negatives, sharded DCP checkpoints with
automatic resume, MLflow tracking and a registered model at the end.

Runs with no flags beyond --data on one machine: embedded local Ray, 2 CPU workers, the tiny
preset, MLflow in ./mlruns (SQLite) unless --tracking-uri or MLFLOW_TRACKING_URI is set."""

from __future__ import annotations

import argparse
import json

from cluster.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="features root written by `vljepa embed` (dir or s3://)"
    )
    p.add_argument("--preset", default="tiny", help="model preset (tiny, tiny-text, bench, paper)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker, NCCL, bf16")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--batch-size", type=int, default=32, help="per-worker micro-batch (default 32)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm, 0 = off")
    p.add_argument("--paraphrase-prob", type=float, default=0.0, help="paraphrase as target")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--storage", default="./vljepa_runs", help="run storage: dir or s3://bucket/prefix"
    )
    p.add_argument("--name", default=None, help="run name (default: a timestamp)")
    p.add_argument("--resume-from", default=None, help="checkpoint dir or s3:// URI to start from")
    p.add_argument("--max-failures", type=int, default=2, help="worker-group restarts allowed")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: ./mlruns SQLite)")
    p.add_argument("--experiment", default="vljepa")
    p.add_argument("--register-name", default="vljepa", help="Model Registry name ('' skips)")
    p.add_argument("--export-dir", default=None, help="where the final save_pretrained goes")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    p.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fail-marker", default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from pipelines import storage
    from pipelines.train.config import TrainConfig

    kwargs = dict(
        data=args.data,
        preset=args.preset,
        workers=args.workers,
        gpus=args.gpus,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        grad_clip=args.grad_clip,
        paraphrase_prob=args.paraphrase_prob,
        val_every=args.val_every,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        storage=args.storage,
        name=args.name,
        resume_from=args.resume_from,
        max_failures=args.max_failures,
        experiment=args.experiment,
        register_name=args.register_name or None,
        export_dir=args.export_dir,
        address=args.address,
        fail_at_step=args.fail_at_step,
        fail_marker=args.fail_marker,
    )
    if args.tracking_uri:
        kwargs["tracking_uri"] = args.tracking_uri
    cfg = TrainConfig(**kwargs)  # ValidationError -> exit 2 naming the field
    if not storage.list_files(storage.join(cfg.data, "data"), suffix=".parquet"):
        raise UsageError(f"no Parquet features under {cfg.data}/data (run `vljepa embed` first)")
    from jepa.config import VLJEPAConfig
    from pipelines.train.data import check_compatible
    from pipelines.train.trainer import run_training

    try:
        check_compatible(cfg.data, VLJEPAConfig.preset(cfg.preset).hash())
    except ValueError as e:  # features from other encoders: a usage problem, not a crash
        raise UsageError(str(e)) from e
    result = run_training(cfg)
    summary = {
        "run_id": result.run_id,
        "checkpoint": result.checkpoint,
        "export_dir": result.export_dir,
        "model_version": result.model_version,
        "step": result.train_state.get("step"),
        **{k: round(v, 4) for k, v in result.metrics.items() if k.startswith("val/")},
    }
    print(json.dumps(summary, indent=2))
    return 0
