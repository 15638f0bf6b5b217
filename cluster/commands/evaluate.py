"""Evaluate a trained model: retrieval both ways and zero-shot classification on the val split,
captioning CIDEr through the Y-decoder, and selective decoding on the synthetic streams (CIDEr
against decode rate, uniform vs adaptive, the paper's §4.5 protocol), logged to MLflow with plots."""

from __future__ import annotations

import argparse
import json
from typing import get_args

from cluster.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.evaluate import EvalConfig

    p.add_argument(
        "--model", required=True, help="DIR | runs:/<run>/model | models:/<name>/<version>"
    )
    p.add_argument("--data", default=None, help="features root (val split: retrieval, captioning)")
    p.add_argument("--corpus", default=None, help="synthetic corpus root (streams.jsonl)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-streams", type=int, default=None)
    p.add_argument("--stride", type=float, default=1.0, help="stream window stride in seconds")
    pool = EvalConfig.model_fields["segment_pool"]  # one source for choices and default
    p.add_argument(
        "--segment-pool",
        choices=list(get_args(pool.annotation)),
        default=pool.default,
        help="how a decode segment's windows are pooled, for uniform and adaptive alike: 'mean' "
        "(the paper) or 'trimmed' (the mean of the half closest to it, robust to windows that "
        f"straddle two events; default {pool.default})",
    )
    p.add_argument("--beams", type=int, default=1, help="beam width for decoding")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: ./mlruns SQLite)")
    p.add_argument("--experiment", default="vljepa")
    p.add_argument("--no-mlflow", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvalConfig, run_eval

    if not args.data and not args.corpus:
        raise UsageError("give --data (features) and/or --corpus (streams)")
    kwargs = dict(
        model=args.model,
        data=args.data,
        corpus=args.corpus,
        split=args.split,
        max_streams=args.max_streams,
        stride_s=args.stride,
        num_beams=args.beams,
        segment_pool=args.segment_pool,
        experiment=args.experiment,
        log_mlflow=not args.no_mlflow,
    )
    if args.tracking_uri:
        kwargs["tracking_uri"] = args.tracking_uri
    results = run_eval(EvalConfig(**kwargs))
    if "selective" in results:
        results["selective"].pop("rows", None)
    print(json.dumps(results, indent=2, default=str))
    return 0
