"""Deploy the Serve application to Kubernetes as a KubeRay RayService.

  vljepa deploy --k8s --dry-run -o yaml                  # print the RayService; no server needed
  vljepa deploy --k8s -n ml --image ghcr.io/org/vljepa:0.1.0 --model-uri models:/vljepa/3

The RayService's serveConfigV2 is serve/serve_config.yaml, the same file `vljepa serve` runs
locally, byte for byte. --model-uri replaces applications[0].args.model_uri (the YAML is then
re-serialised: same data, comments dropped). Deploying again with the same --name replaces the
RayService (KubeRay upgrades it in place or with a new cluster). Without --k8s: use
`vljepa serve` to run the same application locally.
"""

from __future__ import annotations

import argparse
import sys

from cluster.cli import UsageError
from cluster.commands import add_cluster_shape_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--k8s", action="store_true", help="create a KubeRay RayService (KUBECONFIG)"
    )
    parser.add_argument("--name", default="vljepa", help="RayService name")
    parser.add_argument("-n", "--namespace", default="default")
    add_cluster_shape_arguments(parser)
    parser.add_argument("--model-uri", help="override applications[0].args.model_uri")
    parser.add_argument(
        "--serve-config", help="a Serve config YAML (default: serve/serve_config.yaml)"
    )
    parser.add_argument("--tracking-uri", help="MLFLOW_TRACKING_URI in the pods (models:/ URIs)")
    parser.add_argument("--s3-endpoint", help="AWS_ENDPOINT_URL in the pods")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the RayService; contact no server"
    )
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")


def run(args: argparse.Namespace) -> int:
    from cluster import kuberay
    from cluster.submit_config import DeployConfig

    if not args.k8s:
        raise UsageError("deploy needs --k8s (to run the Serve app here: vljepa serve)")
    if args.serve_config and not __import__("os").path.isfile(args.serve_config):
        raise UsageError(f"--serve-config {args.serve_config}: no such file")
    cfg = DeployConfig(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        profile=args.profile,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        model_uri=args.model_uri,
        serve_config=args.serve_config,
        tracking_uri=args.tracking_uri,
        s3_endpoint=args.s3_endpoint,
        s3_secret=args.s3_secret,
        env=args.env,
    )
    try:
        manifest = kuberay.rayservice(cfg)
    except ValueError as e:  # includes pydantic's ValidationError from the Serve schema
        first = str(e).strip().splitlines()
        raise UsageError(f"the Serve config is not valid: {' '.join(first[:3])}") from None
    if args.dry_run:
        sys.stdout.write(kuberay.to_text(manifest, args.output))
        return 0
    from cluster import k8s

    try:
        objs = k8s.RayObjects(k8s.custom_objects_api(context=args.context), cfg.namespace)
        _, created = objs.apply(manifest)
    except k8s.K8sError as e:
        print(f"vljepa deploy: error: {e}", file=sys.stderr)
        return 1
    verb = "created" if created else "replaced"
    print(f"rayservice.ray.io/{cfg.name} {verb} in namespace {cfg.namespace}")
    print(f"status: vljepa jobs status {cfg.name} --k8s --kind rayservice -n {cfg.namespace}")
    print(f"traffic: kubectl port-forward -n {cfg.namespace} svc/{cfg.name}-serve-svc 8000:8000")
    return 0
