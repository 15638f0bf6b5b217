"""Train the predictor and Y-encoder with InfoNCE on pre-embedded features: Ray Train workers,
FSDP2 (gloo on CPU, NCCL + bf16 on GPU), cross-rank negatives, sharded DCP checkpoints with
automatic resume, MLflow tracking and a registered model at the end.

Runs with no flags beyond --data on one machine: embedded local Ray, 2 CPU workers, the tiny
preset, MLflow in ./mlruns (SQLite) unless --tracking-uri or MLFLOW_TRACKING_URI is set. The
X-encoder and the clip sampling come from the features (whatever `vljepa embed` used); the
predictor and Y-encoder from --preset, or from pretrained folders/names (--predictor,
--y-encoder). Every flag below is a field of the run's config and shows its default."""

from __future__ import annotations

import argparse
import json

from cluster.cli import UsageError

# Testing hooks: accepted, never shown.
_HIDDEN = ("fail_at_step", "fail_rank", "fail_marker")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cluster.commands.config_flags import add_config_arguments
    from pipelines.train.config import TrainConfig

    add_config_arguments(
        p,
        TrainConfig,
        hidden=_HIDDEN,
        help_overrides={"data": "features root written by `vljepa embed` (dir or s3://)"},
    )


def run(args: argparse.Namespace) -> int:
    from cluster.commands.config_flags import config_kwargs
    from pipelines import storage
    from pipelines.features import IncompatibleFeatures
    from pipelines.train.config import TrainConfig
    from pipelines.train.trainer import run_training

    cfg = TrainConfig(
        **config_kwargs(args, list(TrainConfig.model_fields))
    )  # exit 2 on a bad field
    if not storage.list_files(storage.join(cfg.data, "data"), suffix=".parquet"):
        raise UsageError(f"no Parquet features under {cfg.data}/data (run `vljepa embed` first)")
    try:
        result = run_training(cfg)
    except IncompatibleFeatures as e:  # features that cannot train this model: a usage problem
        raise UsageError(str(e)) from e
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
