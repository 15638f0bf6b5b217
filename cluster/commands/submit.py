"""Submit a `vljepa` job to Kubernetes (a KubeRay RayJob) or to a running Ray cluster (Jobs API).

  vljepa submit train --k8s --profile gpu --workers 2 --wait
  vljepa submit embed --manifest s3://b/corpus/manifest.parquet --out s3://b/emb --k8s -n ml
  vljepa submit train --k8s --dry-run -o yaml           # print the RayJob; no server needed
  vljepa submit embed --manifest m.parquet --out emb --address http://HEAD:8265

The job runs the same `vljepa JOB ARGS...` command inside the image (dependencies baked in, see
the Dockerfile). Submit flags may come before or after the job's arguments; put the job's
arguments after `--` if one of them has the name of a submit flag. S3 credentials never travel
in the manifest: pods read them from a Secret (--s3-secret, default from the profile).
With --k8s, --wait follows the RayJob's status; with --address the job's logs are tailed until
it ends (--detach returns at once). Exit codes: 0 succeeded (or submitted), 1 failed or
stopped, 2 bad arguments, 3 --timeout passed while waiting (the job keeps running).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys

from cluster.cli import UsageError
from cluster.commands import add_cluster_shape_arguments

_SUBMIT_DESTS: set[str] = set()


def _flags(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("where the job runs")
    where.add_argument("--k8s", action="store_true", help="create a KubeRay RayJob (KUBECONFIG)")
    where.add_argument(
        "--address", help="Ray dashboard URL for the Jobs API, e.g. http://HEAD:8265"
    )
    k8s = p.add_argument_group("Kubernetes (--k8s)")
    k8s.add_argument("-n", "--namespace", default="default", help="namespace of the RayJob")
    k8s.add_argument("--name", help="RayJob name / submission id (default: vljepa-JOB-xxxxx)")
    add_cluster_shape_arguments(k8s)
    k8s.add_argument(
        "--ttl", type=int, default=600, help="seconds to keep the cluster after the job ends"
    )
    k8s.add_argument(
        "--deadline", type=int, default=86400, help="activeDeadlineSeconds of the RayJob"
    )
    k8s.add_argument(
        "--submission-mode", default="K8sJobMode", choices=["K8sJobMode", "HTTPMode", "SidecarMode"]
    )
    k8s.add_argument(
        "--dry-run", action="store_true", help="print what would be submitted; contact no server"
    )
    k8s.add_argument(
        "-o", "--output", choices=["yaml", "json"], default="yaml", help="format for --dry-run"
    )
    env = p.add_argument_group("environment")
    env.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    env.add_argument("--tracking-uri", help="MLFLOW_TRACKING_URI for the job")
    env.add_argument("--s3-endpoint", help="AWS_ENDPOINT_URL for the job (S3-compatible stores)")
    env.add_argument(
        "--working-dir", help="runtime_env working_dir (local dir with --address; a URI with --k8s)"
    )
    env.add_argument(
        "--runtime-env",
        help="YAML/JSON file with a Ray runtime_env (no pip: bake deps into the image)",
    )
    wait = p.add_argument_group("waiting")
    wait.add_argument("--wait", action="store_true", help="follow the job until it ends")
    wait.add_argument(
        "--detach", action="store_true", help="with --address: return after submitting"
    )
    wait.add_argument(
        "--timeout", type=float, help="give up waiting after this many seconds (exit 3)"
    )
    wait.add_argument(
        "--stuck-after",
        type=float,
        default=300.0,
        help="with --k8s --wait: explain a job whose status has not moved for this many seconds",
    )
    wait.add_argument(
        "--token", help="Ray auth token (default RAY_AUTH_TOKEN or ~/.ray/auth_token)"
    )
    wait.add_argument(
        "--no-check-args", action="store_true", help="do not check the job's arguments locally"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the vljepa subcommand to run (embed, train, eval, ...)")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="the job's own arguments")
    _flags(parser)


def _split(args: argparse.Namespace) -> tuple[list[str], argparse.Namespace]:
    """Pull submit flags out of the remainder; everything else (and all after `--`) is the job's.

    The option strings taken this way are kept in `late_flags`, so that a flag the job has too
    (train's --workers, embed's --address) can be pointed out.
    """
    rest = list(args.job_args)
    tail: list[str] = []
    if "--" in rest:
        i = rest.index("--")
        rest, tail = rest[:i], rest[i + 1 :]
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _flags(p)
    defaults = {a.dest: a.default for a in p._actions}
    late, job_args = p.parse_known_args(rest)
    merged = argparse.Namespace(**vars(args))
    for dest, value in vars(late).items():
        if value != defaults.get(dest):  # given after the job name: wins
            if isinstance(value, list):
                value = list(getattr(args, dest) or []) + value
            setattr(merged, dest, value)
    known = {o for a in p._actions for o in a.option_strings}
    merged.late_flags = [a.split("=", 1)[0] for a in rest if a.split("=", 1)[0] in known]
    return job_args + tail, merged


def check_job_args(job: str, job_args: list[str], late_flags: list[str] = ()) -> None:
    """Parse the job's arguments with the job's own parser, so a typo fails here, not on the cluster.

    Also says when a submit flag written after the job name is one the job has too: submit
    took it (the job's arguments after `--` all go to the job).
    """
    if any(a in {"-h", "--help"} for a in job_args):
        return
    from cluster import cli

    try:
        parser = cli.build_parser(job)
    except ImportError as e:  # that job's module is not in this installation
        print(f"vljepa submit: note: cannot check {job}'s arguments here ({e})", file=sys.stderr)
        return
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    job_parser = sub.choices[job]
    for flag in dict.fromkeys(late_flags):
        if flag in job_parser._option_string_actions:
            print(
                f"vljepa submit: note: {flag} was taken as submit's option; to give it to "
                f"{job}, put {job}'s arguments after `--`",
                file=sys.stderr,
            )
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args([job, *job_args])
    except SystemExit as e:
        if e.code:
            lines = err.getvalue().strip().splitlines()
            reason = re.sub(r"^vljepa( \S+)?: error: ", "", lines[-1] if lines else "invalid")
            raise UsageError(f"{job}'s arguments: {reason}") from None


def _runtime_env(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise UsageError(f"--runtime-env {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--runtime-env {path}: expected a mapping")
    return data


def build_config(args: argparse.Namespace, job_args: list[str]):
    from cluster.submit_config import SubmitConfig

    return SubmitConfig(
        job=args.job,
        job_args=job_args,
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        profile=args.profile,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        env=args.env,
        tracking_uri=args.tracking_uri,
        s3_endpoint=args.s3_endpoint,
        s3_secret=args.s3_secret,
        ttl_seconds_after_finished=args.ttl,
        active_deadline_seconds=args.deadline,
        submission_mode=args.submission_mode,
        working_dir=args.working_dir,
        runtime_env=_runtime_env(args.runtime_env),
    )


def _backend(args: argparse.Namespace) -> str:
    if args.k8s and args.address:
        raise UsageError("choose one back end: --k8s or --address")
    if args.k8s:
        return "k8s"
    if not args.address:
        env_addr = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
        if env_addr.startswith("http"):
            args.address = env_addr
        elif not args.dry_run:
            raise UsageError(
                "choose a back end: --k8s (KubeRay RayJob) or --address http://HEAD:8265 "
                "(or run `vljepa JOB ...` directly to run it here)"
            )
    return "ray"


def run(args: argparse.Namespace) -> int:
    job_args, args = _split(args)
    backend = _backend(args)
    cfg = build_config(args, job_args)  # pydantic ValidationError -> exit 2 naming the field
    if not args.no_check_args:
        check_job_args(cfg.job, cfg.job_args, getattr(args, "late_flags", []))
    if backend == "k8s":
        return _run_k8s(cfg, args)
    return _run_ray(cfg, args)


def _run_k8s(cfg, args: argparse.Namespace) -> int:
    from cluster import k8s, kuberay

    wd = cfg.working_dir
    if wd and "://" not in wd:
        raise UsageError(
            f"--working-dir {wd}: a local directory cannot reach a Kubernetes cluster; give a "
            "URI (s3://…/dir.zip, https://…/dir.zip) or bake the code into the image"
        )
    manifest = kuberay.rayjob(cfg)
    if args.dry_run:
        sys.stdout.write(kuberay.to_text(manifest, args.output))
        return 0
    name, ns = manifest["metadata"]["name"], cfg.namespace
    try:
        objs = k8s.RayObjects(k8s.custom_objects_api(context=args.context), ns)
        objs.create(manifest)
        print(f"rayjob.ray.io/{name} created in namespace {ns}: {manifest['spec']['entrypoint']}")
        if not args.wait:
            print(f"follow it: vljepa jobs status {name} --k8s -n {ns} --wait")
            return 0
        result = k8s.follow_rayjob(
            objs, name, timeout_s=args.timeout, stuck_after_s=args.stuck_after
        )
    except k8s.K8sError as e:
        print(f"vljepa submit: error: {e}", file=sys.stderr)
        return 1
    print(f"{name}: {result.reason}")
    return result.code


# Flags that shape a Kubernetes cluster mean nothing to a running one (and --workers,
# --image, ... may be the job's own flags given in the wrong place).
_K8S_ONLY = (
    "namespace",
    "context",
    "image",
    "profile",
    "workers",
    "gpus_per_worker",
    "s3_secret",
    "ttl",
    "deadline",
    "submission_mode",
    "stuck_after",
)


def _refuse_k8s_flags(args: argparse.Namespace) -> None:
    p = argparse.ArgumentParser(add_help=False)
    _flags(p)
    for dest in _K8S_ONLY:
        if getattr(args, dest) != p.get_default(dest):
            flag = "--" + dest.replace("_", "-")
            raise UsageError(
                f"{flag} applies to --k8s only; if it is {args.job}'s own flag, put the job's "
                f"arguments after `--` (vljepa submit {args.job} --address URL -- {flag} ...)"
            )


def _run_ray(cfg, args: argparse.Namespace) -> int:
    import shlex

    from cluster import jobs_api, kuberay

    _refuse_k8s_flags(args)

    if args.dry_run:
        what = {
            "address": args.address,
            "entrypoint": shlex.join(cfg.entrypoint_argv()),
            "runtime_env": cfg.full_runtime_env(),
            "submission_id": cfg.name,
        }
        sys.stdout.write(kuberay.to_text(what, args.output))
        return 0
    try:
        client = jobs_api.client(args.address, token=args.token)
        sid = jobs_api.submit(client, cfg)
        print(
            f"submitted {sid} to {jobs_api.normalize_address(args.address)}: {shlex.join(cfg.entrypoint_argv())}"
        )
        if args.detach:
            print(f"follow it: vljepa jobs logs {sid} --address {args.address} --follow")
            return 0
        result = jobs_api.follow(client, sid, timeout_s=args.timeout)
    except jobs_api.JobsApiError as e:
        print(f"vljepa submit: error: {e}", file=sys.stderr)
        return 1
    return result.code
