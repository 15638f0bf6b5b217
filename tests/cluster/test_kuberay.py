"""`vljepa submit --k8s`, `vljepa jobs --k8s` and `vljepa deploy --k8s` against a real API server.

The API server (../shared/tools/kube) serves the KubeRay CRDs with their real OpenAPI schemas,
so every create below is checked field by field the way a cluster checks it. There is no KubeRay
operator (no pods can run here): where a RayJob must move, the test patches its status
subresource exactly as the operator would, and says so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SENTINEL_SECRET = "sentinel-secret-value-must-never-appear"


@pytest.fixture(scope="module")
def api(kubeconfig):
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))


@pytest.fixture(scope="module")
def ns(k8s_namespace) -> str:
    """The session's namespace: every object below is made there (`-n ns` on each command)."""
    return k8s_namespace


def _get(api, ns, name, plural="rayjobs"):
    return api.get_namespaced_custom_object("ray.io", "v1", ns, plural, name)


def _exists(api, ns, name, plural="rayjobs") -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        _get(api, ns, name, plural)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def _operator_patch(api, ns, name, status: dict) -> None:
    """Stand-in for the KubeRay operator (none can run here): write status like it would."""
    api.patch_namespaced_custom_object_status(
        "ray.io", "v1", ns, "rayjobs", name, {"status": status}
    )


def _popen(*args: str) -> subprocess.Popen:
    import os

    vljepa = Path(sys.executable).parent / "vljepa"
    return subprocess.Popen(
        [str(vljepa), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


class _Lines:
    """Collect a subprocess's output lines in a thread, so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait_for(self, text: str, timeout_s: float = 60.0) -> None:
        with self._cv:
            ok = self._cv.wait_for(lambda: any(text in ln for ln in self.lines), timeout=timeout_s)
        assert ok, f"never saw {text!r} in:\n" + "\n".join(self.lines)

    def text(self) -> str:
        self._t.join(timeout=30)
        return "\n".join(self.lines)


def _wait_created(api, ns, name, timeout_s=30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _exists(api, ns, name):
            return _get(api, ns, name)
        time.sleep(0.1)
    raise AssertionError(f"RayJob {name} never appeared")


# --------------------------------------------------------------------------- manifests (no server)


def test_dry_run_rayjob_carries_profile_env_and_secret_refs(cli):
    out = cli(
        "submit",
        "embed",
        "--manifest",
        "s3://b/corpus/manifest.jsonl",
        "--out",
        "s3://b/emb",
        "--k8s",
        "--dry-run",
        "-o",
        "yaml",
        "--profile",
        "gpu",
        "--workers",
        "3",
        "--gpus-per-worker",
        "2",
        "--tracking-uri",
        "http://vljepa-mlflow.ml.svc:5000",
        "--s3-endpoint",
        "http://seaweed:8333",
        "--s3-secret",
        "my-s3",
        "-n",
        "ml",
        "--ttl",
        "120",
        "--deadline",
        "3600",
        "--image",
        "ghcr.io/org/vljepa:1.2.3-gpu",
        env={"AWS_SECRET_ACCESS_KEY": SENTINEL_SECRET, "AWS_ACCESS_KEY_ID": SENTINEL_SECRET},
    )
    assert out.returncode == 0, out.stderr
    assert SENTINEL_SECRET not in out.stdout  # the caller's credentials never enter a manifest
    rj = yaml.safe_load(out.stdout)
    assert (rj["apiVersion"], rj["kind"]) == ("ray.io/v1", "RayJob")
    assert rj["metadata"]["namespace"] == "ml"
    spec = rj["spec"]
    assert (
        spec["entrypoint"]
        == "vljepa embed --manifest s3://b/corpus/manifest.jsonl --out s3://b/emb"
    )
    assert spec["shutdownAfterJobFinishes"] is True
    assert (spec["ttlSecondsAfterFinished"], spec["activeDeadlineSeconds"]) == (120, 3600)
    assert spec["submissionMode"] == "K8sJobMode"
    rt = yaml.safe_load(spec["runtimeEnvYAML"])
    assert rt["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://vljepa-mlflow.ml.svc:5000",
        "AWS_ENDPOINT_URL": "http://seaweed:8333",
    }
    assert "pip" not in rt
    rcs = spec["rayClusterSpec"]
    assert rcs["enableInTreeAutoscaling"] is True  # the gpu profile autoscales
    (gpu_group,) = rcs["workerGroupSpecs"]
    assert gpu_group["maxReplicas"] == 3 and gpu_group["minReplicas"] <= gpu_group["replicas"] <= 3
    assert gpu_group["rayStartParams"]["num-gpus"] == "2"
    pod = gpu_group["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["image"] == "ghcr.io/org/vljepa:1.2.3-gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    containers = [rcs["headGroupSpec"]["template"]["spec"]["containers"][0], c]
    for cont in containers:
        cred = {e["name"]: e for e in cont["env"] if e["name"].startswith("AWS_")}
        assert set(cred) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        for e in cred.values():
            assert "value" not in e
            assert e["valueFrom"]["secretKeyRef"]["name"] == "my-s3"


def test_default_profile_and_gpu_profile_pick_matching_images(cli):
    cpu = yaml.safe_load(
        cli("submit", "train", "--data", "s3://vljepa/emb", "--k8s", "--dry-run").stdout
    )
    gpu = yaml.safe_load(
        cli(
            "submit", "train", "--data", "s3://vljepa/emb", "--k8s", "--dry-run", "--profile", "gpu"
        ).stdout
    )
    cpu_img = cpu["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    gpu_img = gpu["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert gpu_img == cpu_img + "-gpu"
    cpu_limits = cpu["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"
    ][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits
    assert cpu["metadata"]["name"] != gpu["metadata"]["name"]  # generated per submission


def test_job_flags_after_double_dash_go_to_the_job(cli):
    out = cli(
        "submit",
        "--k8s",
        "--dry-run",
        "embed",
        "--manifest",
        "m.jsonl",
        "--no-check-args",
        "--",
        "--out",
        "x",
        "--timeout",
        "5",
        "--k8s",
    )
    assert out.returncode == 0, out.stderr
    rj = yaml.safe_load(out.stdout)
    assert rj["spec"]["entrypoint"] == "vljepa embed --manifest m.jsonl --out x --timeout 5 --k8s"
    # a submit flag the job also has (train --workers): submit takes it, and says so
    shared = cli(
        "submit", "train", "--data", "s3://vljepa/emb", "--workers", "3", "--k8s", "--dry-run"
    )
    assert shared.returncode == 0, shared.stderr
    assert "--workers was taken as submit's option" in shared.stderr
    rj = yaml.safe_load(shared.stdout)
    assert rj["spec"]["entrypoint"] == "vljepa train --data s3://vljepa/emb"
    assert rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3


# --------------------------------------------------------------------------- refused before the server


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "-2"], "--workers must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--image", "Not An/Image:!"], "is not an image reference"),
        (["--image", "registry.io/UPPER/case:1"], "is not an image reference"),
        (["--gpus-per-worker", "1"], "needs a GPU profile"),
        (["--profile", "cpu-autoscale", "--gpus-per-worker", "2"], "needs a GPU profile"),
        (["--env", "AWS_SECRET_ACCESS_KEY=abc"], "must not travel in the manifest"),
        (["--name", "Bad_Name"], "must be a DNS label"),
        (["--profile", "nope"], "unknown profile"),
    ],
)
def test_invalid_options_are_refused_before_the_server(cli, api, ns, extra, message):
    name = f"refused-{abs(hash(tuple(extra))) % 10**8}"
    args = ["submit", "train", "--data", "s3://vljepa/emb", "--k8s", "-n", ns, *extra]
    if "--name" not in extra:
        args += ["--name", name]
    out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1  # one clear line, no traceback
    assert not _exists(api, ns, name)


def test_bad_job_arguments_are_refused_with_the_jobs_own_parser(cli, api, ns):
    out = cli(
        "submit",
        "embed",
        "--manifest",
        "m.jsonl",
        "--out",
        "o",
        "--bogus-flag",
        "--k8s",
        "-n",
        ns,
        "--name",
        "refused-args",
    )
    assert out.returncode == 2
    assert "embed's arguments" in out.stderr and "--bogus-flag" in out.stderr
    assert not _exists(api, ns, "refused-args")


# --------------------------------------------------------------------------- the API server accepts


def test_every_profile_makes_a_rayjob_the_crd_schema_accepts(cli, api, ns):
    from cluster.submit_config import profile_names

    names = profile_names()
    assert {"cpu-small", "gpu"} <= set(names)
    for prof in names:
        name = f"schema-{prof}"
        out = cli(
            "submit",
            "train",
            "--data",
            "s3://vljepa/emb",
            "--k8s",
            "-n",
            ns,
            "--profile",
            prof,
            "--name",
            name,
        )
        assert out.returncode == 0, out.stderr
        obj = _get(api, ns, name)
        assert obj["spec"]["entrypoint"] == "vljepa train --data s3://vljepa/emb"
        assert obj["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
        out = cli("jobs", "delete", name, "--k8s", "-n", ns)
        assert out.returncode == 0, out.stderr
        assert not _exists(api, ns, name)


def test_the_schema_check_is_real(api, ns):
    """A wrong type is refused by the server (422): acceptance above means something."""
    from kubernetes.client.exceptions import ApiException

    from cluster import kuberay
    from cluster.submit_config import SubmitConfig

    bad = kuberay.rayjob(SubmitConfig(job="train", name="schema-bad", namespace=ns))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(ApiException) as e:
        api.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", bad)
    assert e.value.status == 422


def test_wait_follows_status_transitions_patched_like_the_operator(cli, api, ns):
    name = "follow-ok"
    proc = _popen(
        "submit",
        "train",
        "--data",
        "s3://vljepa/emb",
        "--k8s",
        "-n",
        ns,
        "--name",
        name,
        "--wait",
        "--timeout",
        "60",
    )
    lines = _Lines(proc)
    try:
        lines.wait_for(f"RayJob {ns}/{name}: New")  # the CLI has read the new object
        # --- what the KubeRay operator would write as the cluster comes up and the job runs
        _operator_patch(
            api,
            ns,
            name,
            {"jobDeploymentStatus": "Initializing", "rayClusterName": f"{name}-raycluster-x1"},
        )
        _operator_patch(
            api,
            ns,
            name,
            {
                "jobDeploymentStatus": "Running",
                "jobStatus": "PENDING",
                "jobId": f"{name}-id",
                "dashboardURL": f"{name}-raycluster-x1-head-svc.{ns}.svc.cluster.local:8265",
            },
        )
        _operator_patch(api, ns, name, {"jobStatus": "RUNNING"})
        _operator_patch(
            api, ns, name, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
        )
        proc.wait(timeout=60)
    finally:
        proc.kill()
    out = lines.text()
    assert proc.returncode == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith(f"RayJob {ns}/{name}")]
    states = [ln.split(": ", 1)[1] for ln in lines]
    assert states == [
        "New",
        "Initializing",
        "Running / job PENDING",
        "Running / job RUNNING",
        "Complete / job SUCCEEDED",
    ], out
    assert f"http://{name}-raycluster-x1-head-svc.{ns}.svc.cluster.local:8265" in out

    listed = cli("jobs", "list", "--k8s", "-n", ns)
    assert re.search(rf"^{name}\s+Complete\s+SUCCEEDED", listed.stdout, re.M), listed.stdout
    assert cli("jobs", "delete", name, "--k8s", "-n", ns).returncode == 0
    assert not _exists(api, ns, name)


def test_wait_reports_failure_with_the_operators_reason(cli, api, ns):
    name = "follow-fail"
    proc = _popen(
        "submit",
        "train",
        "--data",
        "s3://vljepa/emb",
        "--k8s",
        "-n",
        ns,
        "--name",
        name,
        "--wait",
        "--timeout",
        "60",
    )
    try:
        _wait_created(api, ns, name)
        # --- the operator failing a job that ran past activeDeadlineSeconds
        _operator_patch(
            api,
            ns,
            name,
            {
                "jobDeploymentStatus": "Failed",
                "reason": "DeadlineExceeded",
                "message": "The RayJob has passed the activeDeadlineSeconds.",
            },
        )
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        cli("jobs", "delete", name, "--k8s", "-n", ns)
    assert proc.returncode == 1, out
    assert "Failed (reason: DeadlineExceeded)" in out


def test_a_stuck_job_is_explained_and_times_out(cli, api, ns):
    name = "follow-stuck"
    proc = _popen(
        "submit",
        "train",
        "--k8s",
        "-n",
        ns,
        "--no-check-args",
        "--name",
        name,
        "--wait",
        "--stuck-after",
        "1",
        "--timeout",
        "4",
    )
    try:
        _wait_created(api, ns, name)
        # --- the operator created the cluster, but the head pod never becomes ready
        _operator_patch(
            api,
            ns,
            name,
            {
                "jobDeploymentStatus": "Initializing",
                "rayClusterName": f"{name}-raycluster-q2",
                "rayClusterStatus": {
                    "conditions": [
                        {
                            "type": "HeadPodReady",
                            "status": "False",
                            "reason": "HeadPodNotReady",
                            "message": "containers with unready status: [ray-head]",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ]
                },
            },
        )
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3, out
    assert "still Initializing after" in out
    assert "head pod not ready: image pull? resources?" in out
    assert f"kubectl describe raycluster {name}-raycluster-q2" in out
    assert "HeadPodReady=False (HeadPodNotReady): containers with unready status" in out
    assert "timed out after" in out
    assert _exists(api, ns, name)  # a timed-out wait leaves the job alone

    status = cli("jobs", "status", name, "--k8s", "-n", ns)
    assert status.returncode == 0 and "Initializing" in status.stdout
    stop = cli("jobs", "stop", name, "--k8s", "-n", ns)
    assert stop.returncode == 0, stop.stderr
    assert _get(api, ns, name)["spec"]["suspend"] is True  # KubeRay's way to stop a RayJob
    assert cli("jobs", "delete", name, "--k8s", "-n", ns).returncode == 0
    assert not _exists(api, ns, name)
    missing = cli("jobs", "delete", name, "--k8s", "-n", ns)
    assert missing.returncode == 1 and "not found" in missing.stderr


# --------------------------------------------------------------------------- RayService


def test_deploy_carries_the_local_serve_config_unchanged(cli, api, ns):
    from serve import config as serve_config

    out = cli("deploy", "--k8s", "-n", ns, "--dry-run", "-o", "yaml", "--name", "vj-serve")
    assert out.returncode == 0, out.stderr
    rs = yaml.safe_load(out.stdout)
    assert rs["kind"] == "RayService"
    text = rs["spec"]["serveConfigV2"]
    assert text == serve_config.DEFAULT_CONFIG.read_text()  # byte for byte what `vljepa serve` runs
    assert yaml.safe_load(text) == serve_config.load_config()
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 8000, "name": "serve"} in head["ports"]

    created = cli("deploy", "--k8s", "-n", ns, "--name", "vj-serve")
    assert created.returncode == 0, created.stderr
    assert _get(api, ns, "vj-serve", "rayservices")["spec"]["serveConfigV2"] == text
    # deploying again replaces it (a RayService upgrade), here with another model
    again = cli(
        "deploy", "--k8s", "-n", ns, "--name", "vj-serve", "--model-uri", "models:/vljepa/7"
    )
    assert again.returncode == 0 and "replaced" in again.stdout, again.stderr
    new = yaml.safe_load(_get(api, ns, "vj-serve", "rayservices")["spec"]["serveConfigV2"])
    expected = serve_config.apply_overrides(
        serve_config.load_config(), args={"model_uri": "models:/vljepa/7"}
    )
    assert new == expected
    listed = cli("jobs", "list", "--k8s", "-n", ns, "--kind", "rayservice", "-o", "json")
    assert "vj-serve" in [o["metadata"]["name"] for o in json.loads(listed.stdout)["items"]]
    assert (
        cli("jobs", "delete", "vj-serve", "--k8s", "-n", ns, "--kind", "rayservice").returncode == 0
    )
    assert not _exists(api, ns, "vj-serve", "rayservices")


def test_image_ray_version_matches_manifests():
    """The Dockerfile's Ray base image, the CLI's rayVersion and the chart's agree."""
    from cluster.submit_config import RAY_VERSION

    docker = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(RAY_VERSION)}$", docker, re.M)
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT}" in docker
    values = yaml.safe_load((REPO / "helm/vljepa/values.yaml").read_text())
    assert values["rayVersion"] == RAY_VERSION
    import ray

    assert ray.__version__ == RAY_VERSION


def test_a_job_no_operator_picked_up_is_explained():
    from cluster import k8s, kuberay
    from cluster.submit_config import SubmitConfig

    obj = kuberay.rayjob(SubmitConfig(job="train", name="orphan", namespace="ml"))
    text = k8s.why_stuck(obj, 301)
    assert "no KubeRay operator has picked it up" in text and "namespace ml" in text
    obj["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}
    assert "kubectl logs -n ml job/orphan" in k8s.why_stuck(obj, 60)
