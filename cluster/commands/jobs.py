"""List, inspect, follow, stop or delete submitted jobs, on Kubernetes (--k8s) or a Ray cluster (--address).

  vljepa jobs list --k8s -n ml                 # RayJobs this platform created (--all: every RayJob)
  vljepa jobs status NAME --k8s --wait         # follow transitions, say why a job is stuck
  vljepa jobs logs NAME --k8s                  # via the RayJob's dashboard URL (or --address)
  vljepa jobs stop NAME --k8s                  # spec.suspend=true: KubeRay deletes the cluster
  vljepa jobs delete NAME --k8s                # the RayJob and, through it, its RayCluster
  vljepa jobs logs raysubmit_XYZ --address http://HEAD:8265 --follow

With --k8s, --kind rayservice lists, shows or deletes RayServices instead.
Exit codes: 0 ok, 1 job failed / not found / server error, 2 bad arguments, 3 --timeout passed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cluster.cli import UsageError

ACTIONS = ("list", "status", "logs", "stop", "delete")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument(
        "id", nargs="?", help="RayJob/RayService name (--k8s) or submission id (--address)"
    )
    parser.add_argument(
        "--k8s", action="store_true", help="KubeRay objects on Kubernetes (KUBECONFIG)"
    )
    parser.add_argument("--address", help="Ray dashboard URL, e.g. http://HEAD:8265")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--context", help="kubeconfig context (default: current)")
    parser.add_argument("--kind", choices=["rayjob", "rayservice"], default="rayjob")
    parser.add_argument(
        "--all", action="store_true", help="list: every object of the kind, not only vljepa's"
    )
    parser.add_argument("--wait", action="store_true", help="status: follow until the job ends")
    parser.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    parser.add_argument(
        "--timeout", type=float, help="give up waiting after this many seconds (exit 3)"
    )
    parser.add_argument("--stuck-after", type=float, default=300.0)
    parser.add_argument(
        "--token", help="Ray auth token (default RAY_AUTH_TOKEN or ~/.ray/auth_token)"
    )
    parser.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")


def run(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.id:
        raise UsageError(f"jobs {args.action} needs a job name or submission id")
    if args.k8s:
        return _k8s(args)
    if not args.address:
        env_addr = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
        if not env_addr.startswith("http"):
            raise UsageError("choose a back end: --k8s or --address http://HEAD:8265")
        args.address = env_addr
    return _ray(args)


# --------------------------------------------------------------------------- Kubernetes


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    from datetime import datetime, timezone

    t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    s = int((datetime.now(timezone.utc) - t).total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _print_obj(obj: dict, fmt: str) -> None:
    from cluster import kuberay

    sys.stdout.write(
        json.dumps(obj, indent=2) + "\n" if fmt == "json" else kuberay.to_text(obj, "yaml")
    )


def _k8s(args: argparse.Namespace) -> int:
    from cluster import k8s

    kind = {"rayjob": "RayJob", "rayservice": "RayService"}[args.kind]
    try:
        objs = k8s.RayObjects(k8s.custom_objects_api(context=args.context), args.namespace)
        if args.action == "list":
            items = objs.list(kind, all_objects=args.all)
            if args.output != "text":
                _print_obj({"items": items}, args.output)
                return 0
            if kind == "RayJob":
                print(f"{'NAME':40s} {'DEPLOYMENT':14s} {'JOB':10s} {'AGE':6s} ENTRYPOINT")
                for o in items:
                    dep, js = k8s.job_state(o)
                    print(
                        f"{o['metadata']['name']:40s} {dep:14s} {js or '-':10s} "
                        f"{_age(o['metadata'].get('creationTimestamp')):6s} {o['spec'].get('entrypoint', '')}"
                    )
            else:
                print(f"{'NAME':40s} {'STATUS':14s} AGE")
                for o in items:
                    st = (o.get("status") or {}).get("serviceStatus") or "-"
                    print(
                        f"{o['metadata']['name']:40s} {st:14s} {_age(o['metadata'].get('creationTimestamp'))}"
                    )
            return 0
        if args.action == "delete":
            objs.delete(kind, args.id)
            print(f"{kind.lower()}.ray.io/{args.id} deleted from namespace {args.namespace}")
            return 0
        if kind != "RayJob":
            if args.action != "status":
                raise UsageError(f"jobs {args.action} works on RayJobs only")
            _print_obj(objs.get(kind, args.id), "json" if args.output == "json" else "yaml")
            return 0
        if args.action == "status":
            if args.wait:
                res = k8s.follow_rayjob(
                    objs, args.id, timeout_s=args.timeout, stuck_after_s=args.stuck_after
                )
                return res.code
            obj = objs.get("RayJob", args.id)
            if args.output != "text":
                _print_obj(obj, args.output)
            else:
                print(k8s.describe(obj))
                url = k8s.dashboard_url(obj)
                if url:
                    print(f"dashboard: {url}")
            return 0 if not k8s.is_terminal(obj) else k8s.exit_code(obj)
        if args.action == "stop":
            objs.stop(args.id)
            print(
                f"rayjob.ray.io/{args.id} suspended (the operator stops the job and deletes its cluster)"
            )
            return 0
        if args.action == "logs":
            return _k8s_logs(objs, args)
    except k8s.K8sError as e:
        print(f"vljepa jobs: error: {e}", file=sys.stderr)
        return 1
    raise UsageError(f"unknown action {args.action}")


def _k8s_logs(objs, args: argparse.Namespace) -> int:
    """A RayJob's logs through the Jobs API of its cluster (its dashboard URL, or --address)."""
    from cluster import jobs_api, k8s

    obj = objs.get("RayJob", args.id)
    job_id = (obj.get("status") or {}).get("jobId")
    address = args.address or k8s.dashboard_url(obj)
    if not job_id or not address:
        print(
            f"vljepa jobs: error: {k8s.describe(obj)}; no Ray job or dashboard yet "
            f"(kubectl logs -n {args.namespace} job/{args.id} shows the submitter)",
            file=sys.stderr,
        )
        return 1
    try:
        client = jobs_api.client(address, token=args.token)
    except jobs_api.JobsApiError as e:
        print(
            f"vljepa jobs: error: {e}; from outside the cluster: kubectl port-forward -n "
            f"{args.namespace} svc/{k8s._head_service(obj)} 8265:8265, then add --address "
            "http://localhost:8265",
            file=sys.stderr,
        )
        return 1
    return _ray_logs(client, job_id, args)


# --------------------------------------------------------------------------- Ray Jobs API


def _ray_logs(client, job_id: str, args: argparse.Namespace) -> int:
    from cluster import jobs_api

    if args.follow:
        return jobs_api.follow(client, job_id, timeout_s=args.timeout).code
    sys.stdout.write(jobs_api.logs(client, job_id))
    return 0


def _ray(args: argparse.Namespace) -> int:
    from cluster import jobs_api

    try:
        client = jobs_api.client(args.address, token=args.token)
        if args.action == "list":
            rows = jobs_api.list_jobs(client)
            if args.output != "text":
                _print_obj({"items": rows}, args.output)
                return 0
            print(f"{'SUBMISSION ID':36s} {'STATUS':10s} {'STARTED':20s} ENTRYPOINT")
            for r in rows:
                started = time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime((r["start_time"] or 0) / 1000)
                )
                print(
                    f"{r['submission_id'] or '-':36s} {r['status']:10s} {started:20s} {r['entrypoint']}"
                )
            return 0
        if args.action == "status":
            if args.wait:
                return jobs_api.follow(client, args.id, timeout_s=args.timeout, logs_to=None).code
            d = jobs_api.info(client, args.id)
            if args.output != "text":
                _print_obj(d, args.output)
            else:
                print(
                    f"{args.id}: {d['status']}" + (f" ({d['message']})" if d.get("message") else "")
                )
            return 1 if d["status"] in {"FAILED", "STOPPED"} else 0
        if args.action == "logs":
            return _ray_logs(client, args.id, args)
        if args.action == "stop":
            stopped = jobs_api.stop(client, args.id)
            print(f"{args.id}: {'stop requested' if stopped else 'already finished'}")
            return 0
        if args.action == "delete":
            jobs_api.delete(client, args.id)
            print(f"{args.id}: deleted")
            return 0
    except jobs_api.JobsApiError as e:
        print(f"vljepa jobs: error: {e}", file=sys.stderr)
        return 1
    raise UsageError(f"unknown action {args.action}")
