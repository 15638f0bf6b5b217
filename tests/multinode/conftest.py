"""One 3-node Ray cluster on loopback for the whole tests/multinode package (issue 14, Build 1).

A head that schedules nothing and two worker nodes, each its own raylet; all job storage on the
session's S3 server. Each test kills a worker node; the next one first tops the cluster up to two
live worker nodes again (`ensure_workers`), so every test stands alone and in any order. The
cluster is stopped, by pid, after the package's last test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import _pythonpath, _to_stop, _vljepa_cmd
from tests.multinode.cluster import LoopbackCluster


@pytest.fixture(scope="package")
def multinode(s3, session_dir: Path) -> LoopbackCluster:
    """Head (0 CPUs) + two worker nodes (1 logical CPU each) sharing the session's Ray token."""
    env = {**os.environ, **s3.env, "PYTHONPATH": _pythonpath()}
    env.pop("RAY_ADDRESS", None)  # the session's own cluster, if a test started it
    cluster = LoopbackCluster(session_dir / "mn", env)
    _to_stop.append(cluster)  # stopped at session end even if a start below fails
    cluster.start_head()
    cluster.ensure_workers(2)
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(multinode: LoopbackCluster) -> LoopbackCluster:
    """The package's cluster with two live worker nodes (replacing any a test before killed)."""
    multinode.ensure_workers(2)
    return multinode


@pytest.fixture
def vljepa(cluster: LoopbackCluster, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `vljepa ARGS` in the background against the cluster, output to a log file in
    tmp_path; returns the Popen (its `.log` attribute is the log's path). One still running when
    the test ends (it failed) is killed, by pid."""
    started: list[subprocess.Popen] = []

    def start(*args: str, log_name: str = "vljepa.log") -> subprocess.Popen:
        env = {**cluster.env, "RAY_ADDRESS": cluster.address}
        log_path = tmp_path / log_name
        with open(log_path, "w") as log:  # a file, not a pipe: a full pipe blocks the job
            proc = subprocess.Popen(
                [*_vljepa_cmd(), *map(str, args), "--address", cluster.address],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=str(tmp_path),
            )
        proc.log = log_path  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
