"""Serve keeps answering when one of the two nodes its replicas run on dies.

`vljepa serve --address` deploys the packaged config with the Ingress and the Encoder at two
replicas each, at most one per node (so one of each on each worker node), the HTTP proxy on the
head. Clients post clips to /v1/embed all along; one worker node is killed like a lost machine.
Requests in flight on the lost replicas may fail (a bounded few); the Ingress retries Encoder
calls on the surviving replica, the proxy stops routing to the dead Ingress, and once Serve has
noticed, every request succeeds again, on the surviving node alone.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml

from serve import config as sc
from tests.conftest import _vljepa_cmd
from tests.services import free_port

SMALL = {"num_cpus": 0.1}

# Waits are on conditions; a busy machine can stretch them past the suite's 600 s default.
pytestmark = pytest.mark.timeout(1800)


def _fixed(n: int) -> dict:
    # Fixed counts as autoscaling min = max: the app's code gives these deployments autoscaling.
    return {"min_replicas": n, "initial_replicas": n, "max_replicas": n}


def _from_zero() -> dict:
    return {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}


# One Ingress and one Encoder on each worker node; no TextEncoder or Decoder replica (both scale
# from zero and /v1/embed never calls them).
DEPLOYMENTS = {
    "Ingress": {"num_replicas": 2, "max_replicas_per_node": 1, "ray_actor_options": SMALL},
    "Encoder": {
        "autoscaling_config": _fixed(2),
        "max_replicas_per_node": 1,
        "ray_actor_options": SMALL,
    },
    "TextEncoder": {"autoscaling_config": _from_zero(), "ray_actor_options": SMALL},
    "Decoder": {"autoscaling_config": _from_zero(), "ray_actor_options": SMALL},
}
CLIENTS = 2
MAX_FAILED = 6  # requests in flight on the lost node's replicas, and a few routed before it


@dataclass
class Traffic:
    """Clients posting the same clip to /v1/embed in a loop, recording (time, ok) per request."""

    base: str
    body: dict
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as c:
            while not self.stop.is_set():
                try:
                    r = c.post("/v1/embed", json=self.body)
                    ok, why = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, why = False, repr(e)
                self.results.append((time.monotonic(), ok, why))

    def count(self, since: float = 0.0) -> tuple[int, int]:
        rs = [ok for t, ok, _ in self.results if t >= since]
        return sum(rs), len(rs) - sum(rs)

    def ok_streak(self) -> int:
        n = 0
        for _, ok, _ in reversed(self.results):
            if not ok:
                break
            n += 1
        return n


def _wait(what: str, cond, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_serve_answers_through_worker_node_loss(cluster, synth_corpus, tmp_path):
    port = free_port()
    cfg = sc.apply_overrides(sc.load_config(), deployments=DEPLOYMENTS, host="127.0.0.1", port=port)
    cfg["proxy_location"] = "HeadOnly"  # all nodes share 127.0.0.1: one proxy, on the head
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    deploy = subprocess.run(
        [*_vljepa_cmd(), "serve", "--config", path, "--address", cluster.address, "--no-block"],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-3000:]
        hosts = {n.name for n in cluster.node_running("ServeReplica:vljepa:Encoder")}
        hosts &= {n.name for n in cluster.node_running("ServeReplica:vljepa:Ingress")}
        assert len(hosts) == 2, f"Ingress + Encoder replicas not on both nodes: {hosts}"

        clip = (sorted((synth_corpus / "videos").glob("*.mp4"))[0]).read_bytes()
        traffic = Traffic(f"http://127.0.0.1:{port}", {"clip_b64": base64.b64encode(clip).decode()})
        threads = [threading.Thread(target=traffic.run, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            _wait("answers before the kill", lambda: traffic.ok_streak() >= 6, 120)
            t_ok = time.monotonic()
            victim = next(n for n in cluster.workers() if n.name in hosts)
            t_kill = time.monotonic()
            cluster.kill(victim)
            # through the loss: answers go on from the surviving node's replicas
            _wait("answers after the kill", lambda: traffic.count(t_kill)[0] >= 10, 120)
            _wait("a clean run of answers", lambda: traffic.ok_streak() >= 20, 120)
            t_recovered = time.monotonic()
            _wait("more answers", lambda: traffic.count(t_recovered)[0] >= 20, 120)
        finally:
            traffic.stop.set()
            for t in threads:
                t.join(timeout=90)
        ok_before = traffic.count()[0] - traffic.count(t_kill)[0]
        ok_after, failed_after = traffic.count(t_kill)
        failures = [why for t, ok, why in traffic.results if not ok and t >= t_kill]
        assert traffic.count(t_ok)[1] == failed_after, "requests failed before the kill"
        assert failed_after <= MAX_FAILED, f"{failed_after} requests failed: {failures}"
        assert traffic.count(t_recovered)[1] == 0, f"failures after recovery: {failures}"
        print(
            f"{ok_before} answers before the kill of {victim.name}; after it {ok_after} answered, "
            f"{failed_after} failed {failures[:3]}"
        )
    finally:
        _shutdown_serve(cluster, env)


def _shutdown_serve(cluster, env: dict) -> None:
    """Serve's controller is detached: stop it, so later tests get the worker CPUs back."""
    code = (
        "import ray; from ray import serve; "
        f"ray.init(address={cluster.address!r}, logging_level='ERROR'); serve.shutdown()"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        timeout=120,
    )
