"""The test harness does real work against each real service (issue 2, acceptance line 3).

If one of these fails, every test that builds on the service would fail for a reason that has
nothing to do with its own code; these tests say which service is broken.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import storage


def _table(n: int = 50) -> pa.Table:
    return pa.table(
        {
            "id": [f"clip-{i:04d}" for i in range(n)],
            "emb": [[float(i), float(i) / 2, -float(i)] for i in range(n)],
            "label": [i % 7 for i in range(n)],
        }
    )


# --------------------------------------------------------------------------- S3


def test_s3_parquet_roundtrip_pyarrow_and_boto3(s3):
    """Parquet written through pyarrow is the same object boto3 reads, and the other way round."""
    table = _table()
    uri = s3.uri("harness", uuid.uuid4().hex, "part-0.parquet")
    fs, path = storage.filesystem(uri)
    pq.write_table(table, path, filesystem=fs)

    assert pq.read_table(path, filesystem=fs).equals(table)

    client = storage.s3_client()
    key = uri.split(f"s3://{s3.bucket}/", 1)[1]
    body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert pq.read_table(io.BytesIO(body)).equals(table)

    # boto3 -> pyarrow: a second file uploaded with boto3 shows up in a dataset read.
    other = table.slice(0, 10)
    buf = io.BytesIO()
    pq.write_table(other, buf)
    client.put_object(Bucket=s3.bucket, Key=key.replace("part-0", "part-1"), Body=buf.getvalue())
    listed = storage.list_files(storage.parent(uri), suffix=".parquet")
    assert [u.rsplit("/", 1)[1] for u in listed] == ["part-0.parquet", "part-1.parquet"]
    both = pq.read_table(storage.filesystem(storage.parent(uri))[1], filesystem=fs)
    assert both.num_rows == table.num_rows + other.num_rows


def test_s3_wrong_secret_is_refused(s3):
    """The server checks signatures: a client with the wrong secret gets SignatureDoesNotMatch."""
    import boto3
    from botocore.exceptions import ClientError

    bad = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key + "x",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError) as err:
        bad.put_object(Bucket=s3.bucket, Key="harness/forged.txt", Body=b"nope")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert not storage.exists(s3.uri("harness/forged.txt"))


# --------------------------------------------------------------------------- MLflow


def test_mlflow_run_logged_through_server_and_read_back(mlflow_server, tmp_path):
    """Params, metrics and an artifact go through the server; the artifact lands in its store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp_id = client.create_experiment(f"harness-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id, run_name="harness")
    rid = run.info.run_id
    client.log_param(rid, "lr", "0.001")
    for step, loss in enumerate([1.0, 0.5, 0.25]):
        client.log_metric(rid, "loss", loss, step=step)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preset": "tiny", "seed": 0}))
    client.log_artifact(rid, str(config))
    client.set_terminated(rid)

    fresh = MlflowClient(tracking_uri=mlflow_server.url)
    got = fresh.get_run(rid)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.001"}
    assert [m.value for m in fresh.get_metric_history(rid, "loss")] == [1.0, 0.5, 0.25]
    assert [a.path for a in fresh.list_artifacts(rid)] == ["config.json"]
    local = fresh.download_artifacts(rid, "config.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == {"preset": "tiny", "seed": 0}
    # Proxied artifacts: the client never saw the store; the server wrote the file into it.
    # (other tests share the server: look only at this run's files)
    stored = [
        p
        for p in _walk(mlflow_server.artifacts_dir)
        if p.endswith("config.json") and f"{os.sep}{rid}{os.sep}" in p
    ]
    assert len(stored) == 1


def _walk(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


# --------------------------------------------------------------------------- Kubernetes


def _rayjob(name: str, namespace: str, **spec_overrides) -> dict:
    spec = {
        "entrypoint": "python -c 'print(1)'",
        "shutdownAfterJobFinishes": True,
        "rayClusterSpec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {
                    "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}
                },
            },
        },
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@pytest.mark.k8s
def test_rayjob_created_and_schema_invalid_refused(kubeconfig, k8s_namespace):
    """The API server stores a valid RayJob and refuses a schema-invalid one with 422."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    name = f"harness-{uuid.uuid4().hex[:8]}"
    ns = k8s_namespace
    created = api.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", _rayjob(name, ns))
    try:
        assert created["metadata"]["uid"]
        got = api.get_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", name)
        assert got["spec"]["entrypoint"] == "python -c 'print(1)'"
        names = [
            o["metadata"]["name"]
            for o in api.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]
        ]
        assert name in names

        bad = _rayjob(name + "-bad", ns, shutdownAfterJobFinishes="yes please")
        with pytest.raises(ApiException) as err:
            api.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", bad)
        assert err.value.status == 422
        assert "shutdownAfterJobFinishes" in err.value.body
    finally:
        api.delete_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", name)


def test_an_inherited_cluster_is_not_used_without_opt_in():
    """KUBECONFIG and in-cluster variables from the caller's shell never reach the tests (or the
    `vljepa` subprocesses they start) unless VLJEPA_TEST_USE_KUBECONFIG=1: tests/conftest.py,
    imported by a fresh interpreter with both set, replaces the one and drops the others."""
    import subprocess
    import sys

    from tests import kube

    env = {
        **{k: v for k, v in os.environ.items() if k != kube.OPT_IN_VAR},
        "KUBECONFIG": "/inherited/kubeconfig",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    probe = (
        "import json, os, tests.conftest; "
        "print(json.dumps({k: os.environ.get(k) for k in "
        "('KUBECONFIG', 'KUBERNETES_SERVICE_HOST', 'KUBERNETES_SERVICE_PORT')}))"
    )
    repo = Path(__file__).resolve().parents[1]

    def run(extra: dict[str, str]) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**env, **extra},
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run({}) == {
        "KUBECONFIG": kube.NO_KUBECONFIG,
        "KUBERNETES_SERVICE_HOST": None,
        "KUBERNETES_SERVICE_PORT": None,
    }
    assert run({kube.OPT_IN_VAR: "1"})["KUBECONFIG"] == "/inherited/kubeconfig"


def test_an_object_outside_the_session_namespace_is_caught(kubeconfig, k8s_namespace):
    """The session-end guard, against the real server: a RayJob made in another namespace is
    named as a stray, one in the session namespace is not, and neither is left behind."""
    from kubernetes import client, config

    from tests import kube

    assert k8s_namespace.startswith(kube.NAMESPACE_PREFIX)
    api_client = config.new_client_from_config(config_file=kubeconfig)
    api = client.CustomObjectsApi(api_client)
    before = kube.snapshot(api_client)
    elsewhere = kube.SessionNamespace(kubeconfig, f"{k8s_namespace}-stray").open()
    name = f"stray-{uuid.uuid4().hex[:8]}"
    try:
        for ns in (k8s_namespace, elsewhere.name):
            api.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", _rayjob(name, ns))
        found = kube.strays(before, kube.snapshot(api_client), k8s_namespace)
        assert [(o.namespace, o.plural, o.name) for o in found] == [
            (elsewhere.name, "rayjobs", name)
        ]
    finally:
        api.delete_namespaced_custom_object("ray.io", "v1", k8s_namespace, "rayjobs", name)
        elsewhere.close()  # deletes the stray (and its Namespace, on a full cluster)
    assert kube.strays(before, kube.snapshot(api_client), k8s_namespace) == []


# --------------------------------------------------------------------------- Ray


def test_ray_task_runs_on_shared_cluster_with_s3_env(ray_session, ray_cluster, s3):
    """A task runs on the session cluster (4 logical CPUs), and its worker sees the S3 settings."""
    import ray

    @ray.remote(num_cpus=1)
    def probe(uri: str) -> tuple[str | None, bytes]:
        from pipelines import storage as st

        return os.environ.get("AWS_ENDPOINT_URL"), st.read_bytes(uri)

    uri = s3.uri("harness", uuid.uuid4().hex, "hello.bin")
    payload = os.urandom(64)
    storage.write_bytes(uri, payload)
    endpoint, data = ray.get(probe.remote(uri), timeout=120)
    assert endpoint == s3.endpoint_url
    assert data == payload
    assert ray.cluster_resources().get("CPU") == 4
    # The same cluster the fixture started (Ray reports the node's own IP, so compare ports).
    assert (
        ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
        == ray_cluster.address.rsplit(":", 1)[1]
    )


def test_ray_data_reads_parquet_from_s3(ray_session, s3):
    """Ray Data reads rows of a Parquet file on the S3 server."""
    import ray

    table = _table(20)
    uri = s3.uri("harness", uuid.uuid4().hex, "rows.parquet")
    fs, path = storage.filesystem(uri)
    pq.write_table(table, path, filesystem=fs)

    ds = ray.data.read_parquet(path, filesystem=fs)
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == table.column("id").to_pylist()
    assert [list(r["emb"]) for r in rows] == table.column("emb").to_pylist()


def test_ray_dashboard_requires_the_session_token(ray_cluster):
    """Job clients on this machine authenticate with the session token; without it: refused."""
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(ray_cluster.dashboard_url).list_jobs()
    assert isinstance(jobs, list)

    req = urllib.request.Request(f"{ray_cluster.dashboard_url}/api/jobs/")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code in (401, 403)
    ok = urllib.request.Request(req.full_url, headers=ray_cluster.auth_headers())
    with urllib.request.urlopen(ok, timeout=10) as r:
        assert r.status == 200


def test_mlflow_artifacts_proxied_to_s3(mlflow_server_s3, s3, tmp_path):
    """With an s3:// artifact destination the server, not the client, writes the object to S3."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server_s3.url)
    exp_id = client.create_experiment(f"harness-s3-{uuid.uuid4().hex[:8]}")
    rid = client.create_run(exp_id).info.run_id
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(1000))
    client.log_artifact(rid, str(weights), artifact_path="model")
    assert client.get_run(rid).info.artifact_uri.startswith("mlflow-artifacts:")

    keys = [
        o["Key"]
        for o in storage.s3_client()
        .list_objects_v2(Bucket=s3.bucket, Prefix="mlartifacts/")
        .get("Contents", [])
    ]
    assert [k for k in keys if rid in k and k.endswith("model/weights.bin")]
    got = client.download_artifacts(rid, "model/weights.bin", str(tmp_path / "dl"))
    assert Path(got).read_bytes() == weights.read_bytes()


# --------------------------------------------------------------------------- pytest's log capture


def _enter_while_loggers_appear(enter, seconds: float = 1.0) -> int:
    """Enter pytest's log capture over and over while a thread creates loggers (as the services
    starting in the background do); how many entries failed."""
    import logging
    import sys
    import threading

    from _pytest.logging import LogCaptureHandler, catching_logs

    stop = threading.Event()

    def create() -> None:  # one logger at a time, removed again: the session's dict stays as it was
        loggers = logging.Logger.manager.loggerDict
        while not stop.is_set():
            name = f"vljepa-harness-{uuid.uuid4().hex}"
            logging.getLogger(name)
            with logging._lock:
                del loggers[name]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    failed, end = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            cap = catching_logs(LogCaptureHandler(), level=10)
            try:
                enter(cap)
            except RuntimeError:
                failed += 1
                continue
            cap.__exit__(None, None, None)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    return failed


def test_log_capture_is_safe_while_background_threads_create_loggers():
    """tests/conftest.py makes pytest's per-phase log capture take logging's lock: unlocked, it
    fails with "dictionary changed size during iteration" while a service's start-up thread
    imports modules that create loggers (the control shows the race is real here)."""
    from _pytest.logging import catching_logs

    locked = catching_logs.__enter__
    assert getattr(locked, "_vljepa_locked", False)
    assert _enter_while_loggers_appear(locked.__wrapped__) > 0  # pytest's own: the race
    assert _enter_while_loggers_appear(locked) == 0
