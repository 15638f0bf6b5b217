"""KubeRay manifests (ray.io/v1 RayJob, RayService) built from a validated SubmitConfig/DeployConfig.

Pure functions from config to dict: no server, so `--dry-run -o yaml` and the tests see exactly
what `submit --k8s` would send. Field names follow the KubeRay CRDs (ray.io_rayjobs.yaml,
ray.io_rayservices.yaml). Two rules from KubeRay users' pain (ANCHORS pain point 6) are built in:
dependencies live in the image (no runtime_env pip), and every RayJob carries a deadline and a
TTL so a stuck or finished job never holds a cluster forever.
"""

from __future__ import annotations

import secrets
import shlex
import string
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cluster.submit_config import (
    RAY_VERSION,
    ClusterProfile,
    ClusterRequest,
    DeployConfig,
    HeadSpec,
    SubmitConfig,
    WorkerGroup,
)

GROUP, VERSION = "ray.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURALS = {"RayJob": "rayjobs", "RayService": "rayservices", "RayCluster": "rayclusters"}
PART_OF = {"app.kubernetes.io/part-of": "vljepa"}
CREATED_BY = {"app.kubernetes.io/created-by": "vljepa-cli"}
JOB_LABEL = "vljepa.io/job"
#: Keys inside the profile's S3 Secret, and the env vars they become in every Ray container.
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
HEAD_PORTS = [
    {"containerPort": 6379, "name": "gcs-server"},
    {"containerPort": 8265, "name": "dashboard"},
    {"containerPort": 10001, "name": "client"},
]
SERVE_PORT = {"containerPort": 8000, "name": "serve"}


def generate_name(job: str) -> str:
    """vljepa-JOB-xxxxx: unique per submission, short enough for KubeRay's derived names."""
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"vljepa-{job}"[:40].rstrip("-") + f"-{suffix}"


def _secret_env(profile: ClusterProfile) -> list[dict[str, Any]]:
    if not profile.s3_secret:
        return []
    return [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {
                    "name": profile.s3_secret,
                    "key": key,
                    "optional": profile.s3_secret_optional,
                }
            },
        }
        for key in SECRET_KEYS
    ]


def _resources(spec: HeadSpec | WorkerGroup) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus:
        requests["nvidia.com/gpu"] = str(spec.gpus)
        limits["nvidia.com/gpu"] = str(spec.gpus)
    return {"requests": requests, "limits": limits}


def _pod_template(
    spec: HeadSpec | WorkerGroup,
    *,
    container: str,
    image: str,
    env: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None,
    autoscaling: bool,
    labels: dict[str, str],
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": container,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": _resources(spec),
    }
    if env:
        c["env"] = [dict(e) for e in env]
    if ports:
        c["ports"] = ports
    pod: dict[str, Any] = {"containers": [c]}
    # Ray pods need no Kubernetes API access; only KubeRay's autoscaler sidecar (head) does, and
    # the operator gives it its own ServiceAccount and token when autoscaling is on.
    if not autoscaling:
        pod["automountServiceAccountToken"] = False
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return {"metadata": {"labels": dict(labels)}, "spec": pod}


def ray_cluster_spec(
    req: ClusterRequest, *, extra_env: dict[str, str] | None = None, serve: bool = False
) -> dict[str, Any]:
    """The RayCluster shape (RayJob.spec.rayClusterSpec / RayService.spec.rayClusterConfig)."""
    prof = req.cluster_profile()
    image = req.resolved_image()
    env = [{"name": k, "value": v} for k, v in (extra_env or {}).items()] + _secret_env(prof)
    pod_labels = {**PART_OF, **req.labels}
    head_ports = HEAD_PORTS + ([SERVE_PORT] if serve else [])
    head_params = {"dashboard-host": "0.0.0.0", **prof.head.ray_start_params}
    if prof.head.gpus:
        head_params.setdefault("num-gpus", str(prof.head.gpus))
    spec: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": prof.autoscaling,
        "headGroupSpec": {
            "rayStartParams": head_params,
            "template": _pod_template(
                prof.head,
                container="ray-head",
                image=image,
                env=env,
                ports=head_ports,
                autoscaling=prof.autoscaling,
                labels=pod_labels,
            ),
        },
        "workerGroupSpecs": [],
    }
    if prof.autoscaling:
        spec["autoscalerOptions"] = {"upscalingMode": "Default", "idleTimeoutSeconds": 60}
    for g in prof.worker_groups:
        params = dict(g.ray_start_params)
        if g.gpus:
            params.setdefault("num-gpus", str(g.gpus))
        group: dict[str, Any] = {
            "groupName": g.name,
            "replicas": g.replicas,
            "minReplicas": g.min_replicas,
            "maxReplicas": g.max_replicas,
            "rayStartParams": params,
            "template": _pod_template(
                g,
                container="ray-worker",
                image=image,
                env=env,
                ports=None,
                autoscaling=prof.autoscaling,
                labels=pod_labels,
            ),
        }
        if prof.autoscaling and g.idle_timeout_seconds is not None:
            group["idleTimeoutSeconds"] = g.idle_timeout_seconds
        spec["workerGroupSpecs"].append(group)
    return spec


def _metadata(req: ClusterRequest, name: str, extra: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": req.namespace,
        "labels": {**PART_OF, **CREATED_BY, **extra, **req.labels},
    }


def rayjob(cfg: SubmitConfig) -> dict[str, Any]:
    """A RayJob that runs `vljepa JOB ARGS...` on a fresh cluster shaped by the profile.

    The cluster is torn down when the job ends (shutdownAfterJobFinishes) after
    ttlSecondsAfterFinished (time to read logs); activeDeadlineSeconds fails a job that never
    finishes, including one whose pods never start.
    """
    name = cfg.name or generate_name(cfg.job)
    spec: dict[str, Any] = {
        "entrypoint": shlex.join(cfg.entrypoint_argv()),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
        "activeDeadlineSeconds": cfg.active_deadline_seconds,
        "backoffLimit": cfg.backoff_limit,
        "submissionMode": cfg.submission_mode,
        "rayClusterSpec": ray_cluster_spec(cfg),
    }
    runtime_env = cfg.full_runtime_env()
    if runtime_env:
        spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(cfg, name, {JOB_LABEL: cfg.job}),
        "spec": spec,
    }


def default_serve_config_path() -> Path:
    """serve/serve_config.yaml as installed with the `serve` package (owned by the serve issue)."""
    return Path(str(resources.files("serve") / "serve_config.yaml"))


def serve_config_text(cfg: DeployConfig, validate: bool = True) -> str:
    """The Serve config YAML for serveConfigV2: the file's text unchanged, unless --model-uri.

    With --model-uri the vljepa application's `args.model_uri` is replaced (serve.config's own
    override helper) and the YAML dumped again: the same data, comments dropped. The result is
    checked with Ray's ServeDeploySchema and the app's argument model, so a config that
    `vljepa serve` would refuse never reaches a cluster.
    """
    from serve import config as serve_config

    path = Path(cfg.serve_config) if cfg.serve_config else default_serve_config_path()
    text = path.read_text()
    data = serve_config.load_config(path)
    if cfg.model_uri is not None:
        data = serve_config.apply_overrides(data, args={"model_uri": cfg.model_uri})
        text = yaml.safe_dump(data, sort_keys=False)
    if validate:
        serve_config.validate(data)
    return text


def rayservice(cfg: DeployConfig) -> dict[str, Any]:
    """A RayService whose serveConfigV2 is the local Serve config, on a profile-shaped cluster."""
    name = cfg.name or "vljepa"
    spec: dict[str, Any] = {
        "serveConfigV2": serve_config_text(cfg),
        "rayClusterConfig": ray_cluster_spec(cfg, extra_env=cfg.job_env(), serve=True),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(cfg, name, {"app.kubernetes.io/component": "serve"}),
        "spec": spec,
    }


def to_text(obj: dict[str, Any], fmt: str) -> str:
    """YAML (block style, keys in build order) or JSON for -o."""
    if fmt == "json":
        import json

        return json.dumps(obj, indent=2) + "\n"

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors in manifests
            return True

    def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(
        obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
