"""A multi-node Ray cluster on loopback whose worker nodes can die like machines.

Every node is its own `ray start --block` process (its own raylet, object store, agents and
workers) with its own temp dir and ports, in a process group of its own. Killing a node sends
SIGKILL to every process of that tree at once (found by pid from the `ray start` process this
harness started, never by name): the closest a single machine gets to a pulled power cord or an
evicted pod. The head schedules no work (`--num-cpus 0`, as in the KubeRay profiles), so every
job's workers, actors and replicas run on the worker nodes that the tests kill.

A worker node has one logical CPU: it holds one encoder actor or one training worker, the way a
GPU node holds one GPU worker, so two of them land on two nodes by capacity alone (no placement
option in the product) and the loss of a node takes one of them.

The GCS is asked directly (`ray._raylet.GcsClient`, the client `ray.init` itself uses to pick a
node) which nodes are alive: this process never joins the cluster as a driver, so it can sit
next to the session's own `ray.init` connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests import services
from tests.services import Service, free_port, free_port_block

RAY = str(Path(sys.executable).parent / "ray")
# Node death is noticed after health_check_failure_threshold missed checks, one per
# health_check_period_ms (Ray's defaults: 5 x 3 s); a test waits on it, so keep it short.
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
OBJECT_STORE_BYTES = 256 * 1024 * 1024
WORKER_PORTS = 60  # worker processes per node (each Ray worker listens on one port)


@dataclass
class RayNode:
    """One node: the `ray start --block` process this harness started and what it spawned."""

    name: str
    cpus: int
    service: Service
    head: bool = False
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.service.pid

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and all its descendants (raylet, agents, workers)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def runs(self, fragment: str) -> bool:
        """True when one of this node's processes has `fragment` in its command line (Ray sets a
        worker's title to what it runs: `ray::MapWorker(...)`, `ray::ServeReplica:app:Name`)."""
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if fragment in " ".join(p.cmdline()):
                    return True
        return False

    def kill(self) -> None:
        """SIGKILL every process of the node at once: no graceful shutdown, no drain."""
        procs = self.processes()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for p in procs:  # a worker that moved to a process group of its own
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.killed = True
        psutil.wait_procs(procs, timeout=10)
        self.service.popen.poll()


@dataclass
class LoopbackCluster:
    """A head (no CPUs: it schedules nothing) plus worker nodes that can be killed and added."""

    root: Path
    env: dict[str, str]
    address: str = ""
    nodes: list[RayNode] = field(default_factory=list)
    _count: int = 0  # worker nodes named so far
    _launches: int = 0  # `ray start`s so far, retries included

    # ------------------------------------------------------------------ start / stop

    def start_head(self) -> RayNode:
        def launch() -> RayNode:
            gcs = free_port()
            self.address = f"127.0.0.1:{gcs}"
            extra = [
                "--head",
                f"--port={gcs}",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                f"--system-config={json.dumps(SYSTEM_CONFIG, separators=(',', ':'))}",
            ]
            return self._launch("head", 0, extra, head=True)

        return self._ready(launch(), launch)

    def add_worker(self, cpus: int = 1) -> RayNode:
        """Start one more worker node and wait until the GCS lists it as alive."""
        return self.ensure_workers(len(self.workers()) + 1, cpus)[-1]

    def ensure_workers(self, n: int = 2, cpus: int = 1) -> list[RayNode]:
        """Add worker nodes until `n` are alive (a test before may have killed one). One at a
        time: nodes starting side by side on 2 cores make each other miss Ray's deadlines."""
        while len(self.workers()) < n:
            self._ready(self._launch_worker(cpus), lambda: self._launch_worker(cpus))
        return self.workers()

    def _launch_worker(self, cpus: int) -> RayNode:
        self._count += 1
        return self._launch(f"worker-{self._count}", cpus, [f"--address={self.address}"])

    def _ready(self, node: RayNode, relaunch, attempts: int = 5) -> RayNode:
        """Wait until the GCS lists `node` as alive. A node that misses one of Ray's hard-coded
        start-up deadlines on a busy machine (its raylet gives the dashboard agent 15 s to come
        up, `ray start` gives the raylet 30 s to register) is started afresh, up to `attempts`
        times in all."""
        for attempt in range(1, attempts + 1):
            try:
                services.wait_until(
                    node.service, lambda n=node: self.alive_names().get(n.name, False), 180
                )
                return node
            except RuntimeError:
                node.kill()  # what the failed `ray start` left of its group
                self.nodes.remove(node)
                if attempt == attempts or "timed out during startup" not in node.service.log_tail():
                    raise
                node = relaunch()
        raise AssertionError("unreachable")

    def _launch(self, name: str, cpus: int, extra: list[str], head: bool = False) -> RayNode:
        self._launches += 1
        temp = self.root / f"n{self._launches}"  # short: Ray's socket paths must stay < 108 chars
        temp.mkdir(parents=True)
        low = free_port_block(WORKER_PORTS)
        cmd = [
            RAY,
            "start",
            "--block",
            *extra,
            "--node-ip-address=127.0.0.1",
            f"--node-name={name}",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--temp-dir={temp}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + WORKER_PORTS - 1}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ]
        svc = services.start(f"ray {name}", cmd, temp / "ray-start.log", env=self.env)
        node = RayNode(name, cpus, svc, head=head)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        """Kill every node (a throwaway cluster: nothing in it needs a graceful shutdown)."""
        for node in reversed(self.nodes):
            if not node.killed:
                node.kill()

    # ------------------------------------------------------------------ GCS view

    def _gcs(self):
        from ray._raylet import GcsClient

        return GcsClient(address=self.address)

    def alive_names(self) -> dict[str, bool]:
        """Node name -> alive, as the GCS sees it (the newest registration of a name wins)."""
        infos = self._gcs().get_all_node_info(timeout=5).values()
        out: dict[str, bool] = {}
        for info in sorted(infos, key=lambda i: i.start_time_ms):
            out[info.node_name] = info.state == 0  # GcsNodeInfo.ALIVE
        return out

    # ------------------------------------------------------------------ faults

    def workers(self) -> list[RayNode]:
        """Worker nodes this harness started and has not killed."""
        return [n for n in self.nodes if not n.head and not n.killed]

    def kill(self, node: RayNode, wait_dead_s: float = 60) -> float:
        """Kill `node` like a lost machine; return once the GCS has marked it dead (seconds)."""
        t0 = time.monotonic()
        node.kill()
        deadline = t0 + wait_dead_s
        while self.alive_names().get(node.name, False):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the GCS still lists {node.name} as alive after {wait_dead_s}s")
            time.sleep(0.2)
        return time.monotonic() - t0

    def node_running(self, fragment: str) -> list[RayNode]:
        """The live worker nodes with a process whose command line holds `fragment`."""
        return [n for n in self.workers() if n.runs(fragment)]

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {n.name}\n{n.service.log_tail(lines)}" for n in self.nodes)
