"""Generate a seeded synthetic video-caption corpus (mp4 clips, captions with paraphrases, class
labels, train/val split, long event streams with ground-truth boundaries) into a local directory
or s3://bucket/prefix. The same seed gives the same manifest and the same pixels."""

from __future__ import annotations

import argparse
import os

from cluster.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="./corpus", help="output directory or s3://bucket/prefix")
    p.add_argument("--clips", type=int, default=200, help="short captioned clips (default 200)")
    p.add_argument("--streams", type=int, default=5, help="long event streams (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="frame side in px, multiple of 16")
    p.add_argument("--fps", type=int, default=8, help="frames per second (default 8)")
    p.add_argument("--clip-seconds", type=float, default=2.0, help="clip length (default 2.0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class in val")
    p.add_argument("--webdataset", action="store_true", help="also write WebDataset tar shards")
    p.add_argument("--shard-size", type=int, default=100, help="clips per tar shard")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus already at --out")
    p.add_argument(
        "--worldprediction",
        type=int,
        default=None,
        help="WorldPrediction-style items (initial/final frame + 4 candidate clips), at most one "
        "per val clip; 0 writes none (default: SynthConfig's)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="encoding processes (default: min(2, cores))",
    )


def run(args: argparse.Namespace) -> int:
    from pipelines.synth import OutputError, SynthConfig, generate

    cfg = SynthConfig(  # a ValidationError here becomes exit 2 naming the field
        out=args.out,
        clips=args.clips,
        streams=args.streams,
        seed=args.seed,
        size=args.size,
        fps=args.fps,
        clip_seconds=args.clip_seconds,
        val_fraction=args.val_fraction,
        webdataset=args.webdataset,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        workers=args.workers,
        **({} if args.worldprediction is None else {"worldprediction": args.worldprediction}),
    )
    try:
        summary = generate(cfg, progress=True)
    except OutputError as e:
        raise UsageError(str(e)) from e
    print(summary.line())
    return 0
