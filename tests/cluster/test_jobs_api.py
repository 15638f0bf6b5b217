"""`vljepa submit --address` and `vljepa jobs --address` against a real Ray head's Jobs API.

The session's Ray head (`ray start --head` on loopback, token auth on, as Ray 2.60 does by
default) runs the submitted `vljepa` commands as real Ray jobs; the CLI sends the token itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq


def test_submit_embed_waits_for_success_and_reads_logs(cli, ray_cluster, synth_corpus, tmp_path):
    url = ray_cluster.dashboard_url
    out_dir = tmp_path / "emb"
    sid = f"vljepa-embed-{int(time.time() * 1000) % 10**9}"
    r = cli(
        "submit",
        "embed",
        "--manifest",
        str(synth_corpus / "manifest.jsonl"),
        "--out",
        str(out_dir),
        "--limit",
        "4",
        "--batch-size",
        "4",
        "--concurrency",
        "1,1",
        "--no-progress",
        "--address",
        url,
        "--name",
        sid,
        "--timeout",
        "280",
        timeout=300,
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert f"submitted {sid} to {url}" in r.stdout
    assert f"job {sid}: SUCCEEDED" in r.stdout
    # the job really ran on the cluster: its Parquet output is there
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in (out_dir / "data").glob("*.parquet"))
    assert rows == 4

    logs = cli("jobs", "logs", sid, "--address", url)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip()
    assert logs.stdout.strip() in r.stdout  # what `submit` tailed live is the job's log

    status = cli("jobs", "status", sid, "--address", url)
    assert status.returncode == 0 and f"{sid}: SUCCEEDED" in status.stdout
    listed = cli("jobs", "list", "--address", url)
    assert sid in listed.stdout
    assert cli("jobs", "delete", sid, "--address", url).returncode == 0
    gone = cli("jobs", "status", sid, "--address", url)
    assert gone.returncode == 1 and "error" in gone.stderr


def test_stop_a_running_job(cli, ray_cluster, tmp_path):
    url = ray_cluster.dashboard_url
    sid = f"vljepa-synth-{int(time.time() * 1000) % 10**9}"
    r = cli(
        "submit",
        "synth",
        "--address",
        url,
        "--name",
        sid,
        "--detach",
        "--",
        "--out",
        str(tmp_path / "corpus"),
        "--clips",
        "5000",
        "--streams",
        "0",
        "--workers",
        "1",
    )
    assert r.returncode == 0, r.stderr
    from cluster import jobs_api

    client = jobs_api.client(url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and jobs_api.status(client, sid) != "RUNNING":
        time.sleep(0.3)
    assert jobs_api.status(client, sid) == "RUNNING"
    assert cli("jobs", "stop", sid, "--address", url).returncode == 0
    waited = cli("jobs", "status", sid, "--address", url, "--wait", "--timeout", "60")
    assert waited.returncode == 1 and f"job {sid}: STOPPED" in waited.stdout, waited.stdout
    assert not (Path(tmp_path / "corpus") / "_SUCCESS").exists()


def test_k8s_only_flags_and_bad_tokens_are_refused_clearly(cli, ray_cluster):
    url = ray_cluster.dashboard_url
    r = cli("submit", "synth", "--workers", "2", "--address", url)
    assert r.returncode == 2 and "--workers applies to --k8s only" in r.stderr
    bad = cli("jobs", "list", "--address", url, "--token", "not-the-token")
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "error" in bad.stderr, bad.stderr


def test_failed_job_and_rayjob_logs_through_its_dashboard(
    cli, ray_cluster, kubeconfig, k8s_namespace
):
    """A failing job exits 1 with Ray's reason; `jobs logs NAME --k8s` reads it via the RayJob."""
    url = ray_cluster.dashboard_url
    sid = f"vljepa-fail-{int(time.time() * 1000) % 10**9}"
    r = cli(
        "submit",
        "synth",
        "--no-check-args",
        "--address",
        url,
        "--name",
        sid,
        "--",
        "--no-such-flag",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"job {sid}: FAILED" in r.stdout
    assert "--no-such-flag" in r.stdout  # synth's own complaint, tailed from the job's log

    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    name = "logs-through-dashboard"
    ns = k8s_namespace
    made = cli("submit", "synth", "--k8s", "-n", ns, "--no-check-args", "--name", name)
    assert made.returncode == 0, made.stderr
    try:
        # --- stand-in for the KubeRay operator: the job ran on "its" cluster, whose dashboard
        # is the session's Ray head (the operator writes host:port without a scheme)
        api.patch_namespaced_custom_object_status(
            "ray.io",
            "v1",
            ns,
            "rayjobs",
            name,
            {
                "status": {
                    "jobDeploymentStatus": "Complete",
                    "jobStatus": "FAILED",
                    "jobId": sid,
                    "dashboardURL": url.removeprefix("http://"),
                }
            },
        )
        logs = cli("jobs", "logs", name, "--k8s", "-n", ns)
        assert logs.returncode == 0, logs.stderr
        assert "--no-such-flag" in logs.stdout
        status = cli("jobs", "status", name, "--k8s", "-n", ns)
        assert status.returncode == 1 and "Complete / job FAILED" in status.stdout
    finally:
        cli("jobs", "delete", name, "--k8s", "-n", ns)
