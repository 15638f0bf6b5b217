"""The whole pipeline end to end on one machine: synthesize a corpus, pre-embed it with Ray Data,
train with Ray Train (FSDP2, 2 workers, the tiny preset), train the Y-decoder, evaluate, start
Ray Serve with the registered model and play synthetic streams through /v1/streams clip by clip,
printing the captions selective decoding emitted, the decoder calls it saved, the MLflow UI and
the Serve URL. Keeps serving until Ctrl-C (--no-serve stops after the evaluation,
--serve-seconds N after N seconds). The defaults finish in under 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="./vljepa-demo", help="output folder (default ./vljepa-demo)")
    p.add_argument("--clips", type=int, default=500, help="corpus clips (default 500)")
    p.add_argument(
        "--streams", type=int, default=2, help="streams played through Serve (default 2)"
    )
    p.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    p.add_argument("--decoder-steps", type=int, default=300, help="Y-decoder steps (default 300)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="per-worker batch (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in OUT/mlruns)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--host", default="127.0.0.1", help="Serve HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP port (default 8000)")
    p.add_argument("--no-serve", action="store_true", help="stop after the evaluation")
    p.add_argument(
        "--serve-seconds",
        type=float,
        default=None,
        help="after the stream, keep serving this long, then exit (0: exit at once; "
        "default: until Ctrl-C)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pipelines.demo import DemoConfig, run_demo

    cfg = DemoConfig(  # a ValidationError names the field, exit 2
        out=args.out,
        clips=args.clips,
        streams=args.streams,
        steps=args.steps,
        decoder_steps=args.decoder_steps,
        workers=args.workers,
        batch_size=args.batch_size,
        seed=args.seed,
        tracking_uri=args.tracking_uri,
        address=args.address,
        host=args.host,
        port=args.port,
        no_serve=args.no_serve,
        serve_seconds=args.serve_seconds,
        progress=not args.no_progress,
    )
    run_demo(cfg)
    return 0
