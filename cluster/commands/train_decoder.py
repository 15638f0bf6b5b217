"""Train the Y-decoder (shared-space embedding -> text) on the corpus captions and paraphrases
embedded through the trained Y-encoder; save it with the model, track the run in MLflow and
register the result as a new model version."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="DIR | runs:/<run>/model | models:/<name>/<version>"
    )
    p.add_argument("--data", required=True, help="features root (its captions + paraphrases)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-paraphrases", action="store_true", help="captions only")
    p.add_argument("--out", default=None, help="where the model with its decoder is saved")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: ./mlruns SQLite)")
    p.add_argument("--experiment", default="vljepa")
    p.add_argument("--register-name", default="vljepa", help="Model Registry name ('' skips)")


def run(args: argparse.Namespace) -> int:
    from pipelines.decoder import DecoderConfig, run_decoder_training

    kwargs = dict(
        model=args.model,
        data=args.data,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        paraphrases=not args.no_paraphrases,
        out=args.out,
        experiment=args.experiment,
        register_name=args.register_name or None,
    )
    if args.tracking_uri:
        kwargs["tracking_uri"] = args.tracking_uri
    print(json.dumps(run_decoder_training(DecoderConfig(**kwargs)), indent=2))
    return 0
