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
    from cluster.demo import DemoConfig

    d = {k: f.default for k, f in DemoConfig.model_fields.items()}  # one source of defaults
    p.add_argument("--out", default=d["out"], help=f"output folder (default {d['out']})")
    p.add_argument(
        "--clips", type=int, default=d["clips"], help=f"corpus clips (default {d['clips']})"
    )
    p.add_argument(
        "--streams",
        type=int,
        default=d["streams"],
        help=f"streams played through Serve (default {d['streams']})",
    )
    p.add_argument(
        "--steps", type=int, default=d["steps"], help=f"training steps (default {d['steps']})"
    )
    p.add_argument(
        "--decoder-steps",
        type=int,
        default=d["decoder_steps"],
        help=f"Y-decoder steps (default {d['decoder_steps']})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=d["workers"],
        help=f"Ray Train workers (default {d['workers']})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d["batch_size"],
        help=f"per-worker batch (default {d['batch_size']})",
    )
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in OUT/mlruns)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--host", default=d["host"], help=f"Serve HTTP host (default {d['host']})")
    p.add_argument(
        "--port", type=int, default=d["port"], help=f"Serve HTTP port (default {d['port']})"
    )
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
    from cluster.demo import DemoConfig, run_demo

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
