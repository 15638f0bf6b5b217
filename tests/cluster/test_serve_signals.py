"""`vljepa serve` stops cleanly on SIGTERM and Ctrl-C (issue 14, acceptance 9): Serve shut down,
the local Ray it started stopped, exit 0, no native stack dump, no Ray process left behind, and
from start to stop no line of Ray's own output (tests/cluster/ray_output.py).

Each test runs a real `vljepa serve` (the untrained tiny preset: no model store needed) in its
own process group with its own local Ray: RAY_ADDRESS removed, so it does not join the session's
cluster, and RAY_TMPDIR a fresh short folder, so every process of that Ray session carries the
folder in its command line (its session dir, sockets, logs) and is found by it, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.ray_output import ray_internal_lines
from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 30  # the acceptance bound for the whole stop
START_TIMEOUT_S = 420  # Serve with four deployments on a busy 2-core machine


def _pids_with(marker: str, environ: bool = True) -> list[int]:
    """Processes whose command line contains `marker` (this test's Ray temp dir), or, with
    `environ`, whose environment does: Ray's workers rename themselves (`ray::ServeReplica...`),
    but they inherit RAY_TMPDIR from the raylet, which inherited it from `vljepa serve`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie holds nothing
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                text = f.read()
            if environ:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    text += f.read()
        except OSError:  # gone meanwhile
            continue
        if marker.encode() in text:
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:200].replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


def _poll(cond: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval_s)
    return cond()


class _Serve:
    """A `vljepa serve` subprocess and its collected output."""

    def __init__(self, cwd: Path):
        self.ray_tmp = tempfile.mkdtemp(prefix="vjs-", dir="/tmp")  # short: socket paths
        self.port = free_port()
        env = {**os.environ, "RAY_TMPDIR": self.ray_tmp}
        env.pop("RAY_ADDRESS", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        script = Path(sys.executable).parent / "vljepa"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cluster.cli"]
        cmd += ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=str(cwd),
            start_new_session=True,  # its own process group: our signal reaches only it
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"vljepa serve exited {self.proc.returncode}:\n{self.output}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def ray_pids(self, environ: bool = True) -> list[int]:
        return _pids_with(self.ray_tmp, environ)

    def cleanup(self) -> None:
        """Whatever the test's outcome: nothing of this run survives it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for pid in self.ray_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture
def serve_proc(tmp_path: Path) -> Iterator[_Serve]:
    s = _Serve(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def _stop_and_check(s: _Serve, sig: signal.Signals) -> None:
    # The local Ray's own processes (GCS, raylet: the temp dir in their arguments) are there.
    assert s.ray_pids(environ=False), "no local Ray process found: the check would be empty"
    t0 = time.monotonic()
    s.proc.send_signal(sig)
    try:
        rc = s.proc.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running {STOP_WITHIN_S}s after {sig.name}:\n{s.output}"
        ) from None
    took = time.monotonic() - t0
    s._reader.join(timeout=10)
    assert rc == 0, f"exit {rc} after {sig.name}:\n{s.output[-4000:]}"
    assert "SIGTERM received" not in s.output and "Fatal Python error" not in s.output, s.output
    assert "shutting down Serve" in s.output
    found = ray_internal_lines(s.output)  # start to stop, Serve's teardown included
    assert not found, "lines from Ray's internals:\n" + "\n".join(found[:20])
    # The local Ray's processes were stopped by the command itself, before it exited; allow
    # only the moment the kernel needs to reap the last of them.
    assert _poll(lambda: not s.ray_pids(), timeout_s=max(1.0, STOP_WITHIN_S - took)), (
        f"Ray processes left after {sig.name}: " + "; ".join(_cmdline(p) for p in s.ray_pids())
    )


@pytest.mark.timeout(START_TIMEOUT_S + 120)
def test_sigterm_once_serving_exits_0_and_stops_its_ray(serve_proc: _Serve):
    assert _poll(serve_proc.ready, timeout_s=START_TIMEOUT_S, interval_s=1), serve_proc.output
    _stop_and_check(serve_proc, signal.SIGTERM)


@pytest.mark.timeout(START_TIMEOUT_S + 120)
def test_ctrl_c_while_deploying_exits_0_and_stops_its_ray(serve_proc: _Serve):
    """Ctrl-C (SIGINT) in the middle of the deploy: the same clean stop, sooner."""
    assert _poll(
        lambda: "deploying the vljepa Serve app" in serve_proc.output or serve_proc.ready(),
        timeout_s=START_TIMEOUT_S,
        interval_s=0.5,
    ), serve_proc.output
    _stop_and_check(serve_proc, signal.SIGINT)
