"""Parameter counts per module for a preset (trainable vs frozen), beside the paper's sizes.

Built on the meta device from architectures written in code: no download, no weights, seconds
even for the paper preset (V-JEPA 2 ViT-L + 8 Llama-3.2-1B layers + EmbeddingGemma-300M).
"""

from __future__ import annotations

import argparse
import json

from cluster.cli import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", default="tiny", help="tiny | tiny-text | paper | bench (default: tiny)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from jepa.config import PRESETS

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    from jepa.model_info import format_table, model_info

    info = model_info(args.preset)
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0
