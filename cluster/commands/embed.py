"""Pre-embed a video-caption corpus into Parquet with a streaming Ray Data pipeline.

Reads a manifest (JSONL/CSV/Parquet: id, video, caption, paraphrases, start, end, label, split)
or WebDataset tars (<key>.mp4/.txt/.json), decodes each clip's sampled frames with decord inside
the workers, runs the frozen X-encoder in an autoscaling actor pool (GPUs with --gpus), embeds
captions with the Y-encoder's frozen backbone, and writes OUT/data/*.parquet (+ OUT/_errors,
OUT/_state, OUT/_SUCCESS). Rerunning the same command resumes: finished shards are skipped.
Bad inputs are reported, never fatal; zero clips written exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("vljepa.embed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cluster.commands.config_flags import add_config_arguments
    from pipelines.embed.config import EmbedConfig

    add_config_arguments(p, EmbedConfig, skip=("gpus",), hidden=("debug_batch_delay_s",))
    gpus = EmbedConfig.model_fields["gpus"]
    p.add_argument(
        "--gpus",
        type=float,
        nargs="?",
        const=1.0,
        default=gpus.default,
        help=f"{gpus.description}; the flag alone: 1 (default: %(default)s)",
    )
    p.add_argument("--summary-json", help="also write the run summary to this local file")


def run(args: argparse.Namespace) -> int:
    from cluster.cli import UsageError
    from cluster.commands.config_flags import config_kwargs
    from pipelines.embed.config import EmbedConfig
    from pipelines.embed.run import (
        BadInput,
        EmbedError,
        ResumeMismatch,
        format_summary,
        log_to_mlflow,
    )
    from pipelines.embed.run import run as run_embed

    cfg = EmbedConfig(
        **config_kwargs(args, list(EmbedConfig.model_fields))
    )  # exit 2 on a bad field
    try:
        summary = run_embed(cfg)
    except (ResumeMismatch, BadInput) as e:
        raise UsageError(str(e)) from None
    except FileNotFoundError as e:
        print(f"vljepa embed: error: input not found: {e}", file=sys.stderr)
        return 1
    except EmbedError as e:
        print(f"vljepa embed: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(
        "EMBED_SUMMARY "
        + json.dumps({k: v for k, v in summary.items() if k != "config"}, sort_keys=True)
    )
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
    if cfg.mlflow:
        run_id = log_to_mlflow(cfg, summary)
        print(f"embed: MLflow run {run_id}")
    return 0 if summary["ok"] else 1
