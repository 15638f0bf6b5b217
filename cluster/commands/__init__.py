"""One module per `vljepa` subcommand: `add_arguments(parser)` and `run(args) -> int`.

Command modules stay thin: they parse flags into the job's config object and call the job.
"""

from __future__ import annotations

import argparse


def add_cluster_shape_arguments(group: argparse._ActionsContainer) -> None:
    """The flags that shape the Ray cluster KubeRay creates, shared by `submit --k8s` (RayJob) and
    `deploy --k8s` (RayService) so both read the same profile the same way."""
    group.add_argument("--context", help="kubeconfig context (default: current)")
    group.add_argument(
        "--image", help="container image (default vljepa:0.1.0, -gpu for GPU profiles)"
    )
    group.add_argument("--profile", default="cpu-small", help="cluster profile name or YAML path")
    group.add_argument("--workers", type=int, help="workers in the first worker group")
    group.add_argument("--gpus-per-worker", type=int, help="GPUs per worker (GPU profiles only)")
    group.add_argument(
        "--s3-secret", help="existing Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
