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
    p.add_argument(
        "--manifest",
        required=True,
        help="manifest file, or a folder/.tar of WebDataset shards (local or s3://)",
    )
    p.add_argument("--out", required=True, help="output root (local folder or s3://bucket/prefix)")
    p.add_argument(
        "--webdataset",
        action="store_true",
        default=None,
        help="treat --manifest as WebDataset tars (default: detect)",
    )
    p.add_argument("--preset", default="tiny", help="model preset for the encoders (default: tiny)")
    p.add_argument(
        "--x-encoder", help="X-encoder: hub name or local path, 'random' or 'vitl-random'"
    )
    p.add_argument("--y-encoder", help="Y-encoder text backbone: hub name, local path or 'minilm'")
    p.add_argument("--frames", type=int, help="frames per clip (default: the X-encoder's)")
    p.add_argument("--size", type=int, help="frame size in px (default: the X-encoder's)")
    p.add_argument("--fps", type=float, help="sampling rate (default: frames spread over the clip)")
    p.add_argument(
        "--pad",
        action="store_true",
        help="repeat frames of clips that are too short instead of rejecting them",
    )
    p.add_argument(
        "--dtype", choices=["float16", "float32"], default="float16", help="stored x_tokens dtype"
    )
    p.add_argument(
        "--x-dtype", choices=["float32", "bfloat16", "float16"], help="X-encoder compute dtype"
    )
    p.add_argument(
        "--rows-per-file", type=int, default=1000, help="max rows per Parquet file (default 1000)"
    )
    p.add_argument(
        "--shard-size", type=int, help="manifest rows per input shard (default: --rows-per-file)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="clips per encoder batch (default 8)")
    p.add_argument("--concurrency", help="encoder actors MIN,MAX (default: 1,<CPUs or GPUs>)")
    p.add_argument(
        "--gpus",
        type=float,
        nargs="?",
        const=1.0,
        default=0.0,
        help="GPUs per encoder actor (flag alone: 1)",
    )
    p.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads per CPU actor (default 1)"
    )
    p.add_argument("--limit", type=int, help="embed only the first N inputs")
    p.add_argument(
        "--overwrite", action="store_true", help="redo everything, removing earlier outputs"
    )
    p.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)"
    )
    p.add_argument(
        "--mlflow", action="store_true", help="log the config and summary to an MLflow run"
    )
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns)"
    )
    p.add_argument("--experiment", default="vljepa-embed", help="MLflow experiment name")
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")
    p.add_argument("--summary-json", help="also write the run summary to this local file")
    p.add_argument("--debug-batch-delay", type=float, default=0.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from cluster.cli import UsageError
    from pipelines.embed.config import EmbedConfig
    from pipelines.embed.run import EmbedError, ResumeMismatch, format_summary, log_to_mlflow
    from pipelines.embed.run import run as run_embed

    for flag in (
        "rows_per_file",
        "batch_size",
        "frames",
        "size",
        "shard_size",
        "limit",
        "torch_threads",
    ):
        v = getattr(args, flag)
        if v is not None and v <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be > 0, got {v}")
    cfg = EmbedConfig(
        manifest=args.manifest,
        out=args.out,
        webdataset=args.webdataset,
        preset=args.preset,
        x_encoder=args.x_encoder,
        y_encoder=args.y_encoder,
        frames=args.frames,
        size=args.size,
        fps=args.fps,
        pad=args.pad,
        dtype=args.dtype,
        x_dtype=args.x_dtype,
        rows_per_file=args.rows_per_file,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        gpus=args.gpus,
        torch_threads=args.torch_threads,
        limit=args.limit,
        overwrite=args.overwrite,
        address=args.address,
        mlflow=args.mlflow,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        progress=not args.no_progress,
        debug_batch_delay_s=args.debug_batch_delay,
    )
    try:
        summary = run_embed(cfg)
    except ResumeMismatch as e:
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
