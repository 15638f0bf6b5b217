"""Evaluate a trained model: retrieval both ways and zero-shot classification on the val split,
captioning CIDEr through the Y-decoder, and selective decoding on the synthetic streams (the
paper's §4.5 protocol: CIDEr against absolute decode rates for uniform and adaptive decoding, the
model's online detector as one more point, and the call ratio at equal CIDEr with a bootstrap
interval over streams), logged to MLflow with plots."""

from __future__ import annotations

import argparse
import json
import sys
from typing import get_args

from cluster.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.evaluate import EvalConfig

    p.add_argument(
        "--model", required=True, help="DIR | runs:/<run>/model | models:/<name>/<version>"
    )
    p.add_argument("--data", default=None, help="features root (val split: retrieval, captioning)")
    p.add_argument("--corpus", default=None, help="synthetic corpus root (streams.jsonl)")
    p.add_argument(
        "--worldprediction",
        default=None,
        metavar="CORPUS",
        help="corpus root with worldprediction.jsonl: WorldPrediction-style accuracy (which of "
        "the candidate clips turns the initial state image into the final one; needs --data)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="a second model scored the same way and shown beside --model (e.g. the stage-1 "
        "model a stage-2 run started from): VQA accuracy per question type",
    )
    p.add_argument("--split", default="val")
    p.add_argument("--max-streams", type=int, default=None)
    p.add_argument("--stride", type=float, default=1.0, help="stream window stride in seconds")
    rates = EvalConfig.model_fields["rates_hz"].default_factory()
    p.add_argument(
        "--rates",
        type=_rates,
        default=rates,
        help="decode rates in Hz of the uniform and adaptive curves, comma-separated (default "
        f"{','.join(f'{r:g}' for r in rates)}; windows every --stride s cap them at 1/stride)",
    )
    pool = EvalConfig.model_fields["segment_pool"]  # one source for choices and default
    p.add_argument(
        "--segment-pool",
        choices=list(get_args(pool.annotation)),
        default=pool.default,
        help="how a decode segment's windows are pooled, for every method: 'mean' (the paper) "
        "or 'trimmed' (the mean of the half closest to it, robust to windows that straddle two "
        f"events; default {pool.default})",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=EvalConfig.model_fields["bootstrap_resamples"].default,
        help="stream resamples for the call ratio's interval (0: none)",
    )
    p.add_argument("--beams", type=int, default=1, help="beam width for decoding")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help=EvalConfig.model_fields["tracking_uri"].description,
    )
    p.add_argument("--experiment", default="vljepa")
    p.add_argument("--no-mlflow", action="store_true")


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers, got {text!r}")
    return rates


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvalConfig, run_eval

    if args.worldprediction and not args.data:
        raise UsageError("--worldprediction needs --data (the candidate clips' tokens)")
    if not args.data and not args.corpus:
        raise UsageError("give --data (features) and/or --corpus (streams)")
    kwargs = dict(
        model=args.model,
        baseline=args.baseline,
        worldprediction=args.worldprediction,
        data=args.data,
        corpus=args.corpus,
        split=args.split,
        max_streams=args.max_streams,
        stride_s=args.stride,
        num_beams=args.beams,
        segment_pool=args.segment_pool,
        rates_hz=args.rates,
        bootstrap_resamples=args.bootstrap,
        experiment=args.experiment,
        log_mlflow=not args.no_mlflow,
    )
    if args.tracking_uri:
        kwargs["tracking_uri"] = args.tracking_uri
    from pipelines.features import IncompatibleFeatures

    try:
        results = run_eval(EvalConfig(**kwargs))
    except IncompatibleFeatures as e:  # a model for other features: a usage problem
        raise UsageError(str(e)) from e
    if "vqa" in results:
        from pipelines.vqa_eval import format_table

        print(format_table(results["vqa"]), file=sys.stderr)
    for name, r in results.get("worldprediction", {}).items():
        print(
            f"WorldPrediction-style accuracy {r['accuracy']:.3f} over {r['items']} items "
            f"(chance {r['chance']:.2f}): {name}",
            file=sys.stderr,
        )
    if "selective" in results:
        from pipelines.selective_eval import format_report

        print(format_report(results["selective"]), file=sys.stderr)
        for bulky in ("rows", "references"):  # kept in the MLflow run's eval_results.json
            results["selective"].pop(bulky, None)
    print(json.dumps(results, indent=2, default=str))
    return 0
