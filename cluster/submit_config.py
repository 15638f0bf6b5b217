"""What a submission or a deployment asks for, validated before anything reaches a server.

A Kubernetes API server answers a bad manifest with a 422 that names a JSON path, and a bad image
reference only shows up minutes later as a pod stuck in ImagePullBackOff. Checking the request
here turns both into one clear line and exit code 2 at the user's terminal.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

RAY_VERSION = "2.60.0"
#: The image the top-level Dockerfile builds (`docker build -t vljepa:0.1.0 .`); the GPU variant
#: (`--build-arg VARIANT=-gpu`) is tagged with a `-gpu` suffix.
DEFAULT_IMAGE = "vljepa:0.1.0"
DEFAULT_PROFILE = "cpu-small"

# OCI / docker distribution reference: [registry[:port]/]path[:tag][@digest]
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
)
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_RE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
# RFC 1035 label (Kubernetes names of Services, which KubeRay derives from the object name).
DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes resource.Quantity (decimal or binary SI suffix, or exponent).
QUANTITY_RE = re.compile(
    r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Credentials never travel in a manifest or runtime env: they come from a Secret (secretKeyRef).
CREDENTIAL_VARS = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "RAY_AUTH_TOKEN",
    }
)
#: `vljepa` subcommands that make no sense as a batch job on a cluster.
NOT_SUBMITTABLE = {
    "submit": "submit cannot submit itself",
    "jobs": "jobs talks to a cluster, it does not run on one",
    "deploy": "deploy creates a RayService; run it from your machine",
    "serve": "serving is long-lived: use `vljepa deploy --k8s` (a RayService)",
}
MAX_NAME_LEN = 47  # KubeRay appends suffixes (cluster, head service) to the RayJob's name


def _bad(message: str) -> Exception:
    """A validation error whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError("invalid", message)


def check_image(ref: str) -> str:
    """An OCI image reference, or ValueError naming what is wrong with it."""
    if not ref or len(ref) > 255 or not IMAGE_RE.match(ref):
        raise _bad(
            f"{ref!r} is not an image reference (expected [registry[:port]/]name[:tag][@sha256:…], "
            "lowercase name, e.g. ghcr.io/org/vljepa:0.1.0)"
        )
    return ref


def check_quantity(value: str | int | float) -> str:
    text = str(value)
    if not QUANTITY_RE.match(text):
        raise _bad(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    return text


def check_dns_label(value: str, what: str) -> str:
    if not DNS_LABEL_RE.match(value) or len(value) > 63:
        raise _bad(
            f"{what} {value!r} must be a DNS label: lowercase letters, digits and '-', starting "
            "with a letter, at most 63 characters"
        )
    return value


# --------------------------------------------------------------------------- cluster profiles


class _Pod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: str = "1"
    memory: str = "4Gi"
    gpus: int = Field(0, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    ray_start_params: dict[str, str] = Field(default_factory=dict)

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> str:
        return check_quantity(v)


class HeadSpec(_Pod):
    """The head pod: the GCS, the dashboard (Jobs API) and, with small profiles, work too."""


class WorkerGroup(_Pod):
    name: str
    replicas: int = Field(1, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=0)
    idle_timeout_seconds: int | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dns_label(v, "worker group name")

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise _bad(
                f"worker group {self.name}: need min_replicas <= replicas <= max_replicas, got "
                f"{self.min_replicas} <= {self.replicas} <= {self.max_replicas}"
            )
        return self


class ClusterProfile(BaseModel):
    """A named shape of Ray cluster: head, worker groups, scheduling, where credentials live."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    autoscaling: bool = False
    gpu: bool = False  # the profile schedules onto GPU nodes; only then may workers ask for GPUs
    image_variant: Literal["cpu", "gpu"] = "cpu"
    s3_secret: str | None = None
    s3_secret_optional: bool = True
    env: dict[str, str] = Field(default_factory=dict)
    head: HeadSpec = Field(default_factory=HeadSpec)
    worker_groups: list[WorkerGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _gpu_consistent(self) -> ClusterProfile:
        if not self.gpu and any(g.gpus for g in self.worker_groups):
            raise _bad(f"profile {self.name}: worker groups ask for GPUs but gpu: false")
        bad = sorted(set(self.env) & CREDENTIAL_VARS)
        if bad:
            raise _bad(f"profile {self.name}: {', '.join(bad)} must come from s3_secret")
        return self


def profile_names() -> list[str]:
    folder = resources.files("cluster") / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str) -> ClusterProfile:
    """A built-in profile by name (cluster/profiles/NAME.yaml) or a user's YAML file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise _bad(f"profile file {name_or_path} does not exist")
        text = path.read_text()
    else:
        ref = resources.files("cluster") / "profiles" / f"{name_or_path}.yaml"
        if not ref.is_file():
            raise _bad(
                f"unknown profile {name_or_path!r}; choose from {', '.join(profile_names())} "
                "or give a path to a profile YAML"
            )
        text = ref.read_text()
    data = yaml.safe_load(text) or {}
    data.setdefault("name", path.stem)
    return ClusterProfile.model_validate(data)


# --------------------------------------------------------------------------- submissions


def _env_pairs(pairs: list[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(pairs, dict):
        items = list(pairs.items())
    else:
        items = []
        for p in pairs:
            key, sep, value = p.partition("=")
            if not sep:
                raise _bad(f"--env {p!r}: expected KEY=VALUE")
            items.append((key, value))
    out: dict[str, str] = {}
    for key, value in items:
        if not ENV_NAME_RE.match(key):
            raise _bad(f"environment variable name {key!r} is not valid")
        if key in CREDENTIAL_VARS:
            raise _bad(
                f"{key} must not travel in the manifest: put credentials in a Kubernetes Secret "
                "and pass --s3-secret NAME (it is read through secretKeyRef)"
            )
        out[key] = value
    return out


class ClusterRequest(BaseModel):
    """What both a RayJob and a RayService need: where, which image, which cluster shape."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    namespace: str = "default"
    image: str | None = None  # None: DEFAULT_IMAGE, with a -gpu suffix for GPU profiles
    profile: str = DEFAULT_PROFILE
    workers: int | None = None
    gpus_per_worker: int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    tracking_uri: str | None = None
    s3_endpoint: str | None = None
    s3_secret: str | None = None  # overrides the profile's
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None:
            check_dns_label(v, "name")
            if len(v) > MAX_NAME_LEN:
                raise _bad(f"name {v!r} is longer than {MAX_NAME_LEN} characters")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return check_dns_label(v, "namespace")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else check_image(v)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise _bad(f"--workers must be at least 1, got {v}")
        return v

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise _bad(f"--gpus-per-worker must be 0 or more, got {v}")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> dict[str, str]:
        return _env_pairs(v or {})

    @field_validator("s3_secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None and (not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", v) or len(v) > 253):
            raise _bad(f"--s3-secret {v!r} is not a Secret name")
        return v

    @model_validator(mode="after")
    def _profile_fits(self) -> ClusterRequest:
        try:
            prof = load_profile(self.profile)
        except (ValueError, PydanticCustomError) as e:
            raise _bad(str(e)) from None
        if self.gpus_per_worker and not prof.gpu:
            gpu_profiles = [n for n in profile_names() if load_profile(n).gpu]
            raise _bad(
                f"--gpus-per-worker {self.gpus_per_worker} needs a GPU profile; profile "
                f"{prof.name!r} schedules onto CPU nodes (try --profile {' or '.join(gpu_profiles)})"
            )
        return self

    # ---- derived
    def cluster_profile(self) -> ClusterProfile:
        """The profile with --workers / --gpus-per-worker applied to its first worker group."""
        prof = load_profile(self.profile)
        groups = [g.model_copy() for g in prof.worker_groups]
        first = groups[0]
        if self.workers is not None:
            if prof.autoscaling:
                first.max_replicas = self.workers
                first.min_replicas = min(first.min_replicas, self.workers)
                first.replicas = min(max(first.replicas, first.min_replicas), self.workers)
            else:
                first.replicas = first.min_replicas = first.max_replicas = self.workers
        if self.gpus_per_worker is not None:
            for g in groups:
                if g.gpus or g is first:
                    g.gpus = self.gpus_per_worker
        secret = self.s3_secret if self.s3_secret is not None else prof.s3_secret
        return prof.model_copy(update={"worker_groups": groups, "s3_secret": secret})

    def resolved_image(self) -> str:
        if self.image:
            return self.image
        prof = load_profile(self.profile)
        return f"{DEFAULT_IMAGE}-gpu" if prof.image_variant == "gpu" else DEFAULT_IMAGE

    def job_env(self) -> dict[str, str]:
        """Plain (non-secret) environment for the job: profile env, then flags, then --env."""
        env = dict(load_profile(self.profile).env)
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        if self.s3_endpoint:
            env["AWS_ENDPOINT_URL"] = self.s3_endpoint
        env.update(self.env)
        return env


class SubmitConfig(ClusterRequest):
    """One `vljepa submit`: the job, its arguments, and how it runs on Kubernetes or Ray."""

    job: str
    job_args: list[str] = Field(default_factory=list)
    ttl_seconds_after_finished: int = Field(600, ge=0)
    active_deadline_seconds: int = Field(24 * 3600, ge=1)
    submission_mode: Literal["K8sJobMode", "HTTPMode", "SidecarMode"] = "K8sJobMode"
    backoff_limit: int = Field(0, ge=0)
    working_dir: str | None = None
    runtime_env: dict[str, Any] = Field(default_factory=dict)

    @field_validator("job")
    @classmethod
    def _job(cls, v: str) -> str:
        from cluster.cli import COMMANDS

        if v in NOT_SUBMITTABLE:
            raise _bad(f"{v!r} cannot be submitted: {NOT_SUBMITTABLE[v]}")
        if v not in COMMANDS:
            allowed = [c for c in COMMANDS if c not in NOT_SUBMITTABLE]
            raise _bad(f"unknown job {v!r}; choose from {', '.join(allowed)}")
        return v

    @field_validator("runtime_env")
    @classmethod
    def _runtime_env(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "pip" in v or "uv" in v or "conda" in v:
            raise _bad(
                "runtime_env pip/uv/conda installs at job start are slow and fragile: bake "
                "dependencies into the image (see Dockerfile)"
            )
        _env_pairs(dict(v.get("env_vars", {})))
        return v

    def entrypoint_argv(self) -> list[str]:
        return ["vljepa", self.job, *self.job_args]

    def full_runtime_env(self) -> dict[str, Any]:
        """runtime_env for the Ray job: user's runtime_env, working_dir, env vars merged."""
        rt = {k: v for k, v in self.runtime_env.items() if k != "env_vars"}
        env = {**dict(self.runtime_env.get("env_vars", {})), **self.job_env()}
        if self.working_dir:
            rt["working_dir"] = self.working_dir
        if env:
            rt["env_vars"] = env
        return rt


class DeployConfig(ClusterRequest):
    """One `vljepa deploy --k8s`: a RayService running serve/serve_config.yaml."""

    name: str | None = "vljepa"
    model_uri: str | None = None
    serve_config: str | None = None  # a path; None: serve/serve_config.yaml from the package
