"""The `vljepa` command line: one entry point, one module per subcommand.

Subcommand modules are imported only when that subcommand runs, so `vljepa --help` answers in
well under a second instead of paying for torch, transformers and Ray imports. Each module in
`cluster/commands/` provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence


class UsageError(Exception):
    """A bad argument or config value: reported as one line, exit code 2."""


# name -> (module, one-line help). The module is imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cluster.commands.synth", "Generate a seeded synthetic video-caption corpus."),
    "model-info": ("cluster.commands.model_info", "Parameter counts per module for a preset."),
    "embed": ("cluster.commands.embed", "Pre-embed a corpus into Parquet with Ray Data."),
    "train": ("cluster.commands.train", "Train predictor + Y-encoder with FSDP2 on Ray Train."),
    "train-decoder": ("cluster.commands.train_decoder", "Train the Y-decoder (embedding -> text)."),
    "eval": (
        "cluster.commands.evaluate",
        "Retrieval, classification, captioning, selective decoding.",
    ),
    "serve": ("cluster.commands.serve", "Run the Ray Serve application locally."),
    "submit": (
        "cluster.commands.submit",
        "Submit a job to a Ray cluster or to Kubernetes (RayJob).",
    ),
    "jobs": ("cluster.commands.jobs", "List, inspect, follow, stop or delete submitted jobs."),
    "deploy": ("cluster.commands.deploy", "Deploy the Serve app to Kubernetes as a RayService."),
    "demo": ("cluster.commands.demo", "The whole pipeline end to end on one machine."),
}


_VERBOSE_HELP = "debug logging, and Ray's own output (its workers', actors' and loggers' lines)"


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line reason (no multi-line usage dump on stderr)."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _load(name: str):
    module_name = COMMANDS[name][0]
    return importlib.import_module(module_name)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vljepa",
        description=(
            "VL-JEPA on Ray. Every command runs with no flags on one machine (local Ray, local "
            "paths, ./mlruns tracking, the tiny preset); flags switch to GPUs, S3, a tracking "
            "server, a remote cluster or Kubernetes."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # `vljepa embed ... -v` as well as `vljepa -v embed ...`
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
        )
        if name == selected:
            module = _load(name)
            if module.__doc__:
                p.description = module.__doc__.strip()
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines import tracking_store

    tracking_store.no_telemetry()
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected is not None and selected not in COMMANDS:
        print(
            f"vljepa: error: unknown command {selected!r}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    from pipelines import connect

    args.verbose = bool(args.verbose) or connect.verbose()  # -v, or VLJEPA_VERBOSE=1
    # Ray's own output (workers', actors', loggers') stays in its log files unless -v; SIGTERM
    # stops a command the way Ctrl-C does.
    connect.quiet_console(not args.verbose)
    connect.interrupt_on_sigterm()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # libraries' INFO lines (credentials found, ...) are not ours to print
        for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # MLflow sets its own level when imported (later), from this variable.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except UsageError as e:
        print(f"vljepa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vljepa {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a pydantic ValidationError names the field
        if type(e).__name__ == "ValidationError":
            print(f"vljepa {args.command}: error: {_one_line_validation(e)}", file=sys.stderr)
            return 2
        raise


def _one_line_validation(e: Exception) -> str:
    errors = getattr(e, "errors", lambda: [])()
    parts = [
        f"{'.'.join(str(x) for x in err.get('loc', ())) or 'config'}: {err.get('msg', '')}"
        for err in errors
    ]
    return "; ".join(parts) or str(e).splitlines()[0]


if __name__ == "__main__":
    # Re-import so `UsageError` raised by command modules (cluster.cli.UsageError) is the class
    # caught here, not a second copy living in __main__.
    from cluster.cli import main as _main

    sys.exit(_main())
