"""Process helpers for the test harness: free ports, start/wait/stop by pid, captured logs.

Several pytest sessions (other developers, CI) may run on one machine at once, so every service
gets ports nobody else holds, its own data directory, and is stopped only through the process id
(and the process group) that this session started — never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Ports handed out by this process; a port is never given twice even before it is bound.
_handed_out: set[int] = set()
_ports_lock = threading.Lock()  # services start from several threads at once
# Stay below the kernel's ephemeral range (32768+), where outgoing connections take ports at
# random and could steal one between our check and the service's bind.
_PORT_LOW, _PORT_HIGH = 20000, 32000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and not yet handed out by this session."""
    return free_port_block(1)


def free_port_block(n: int, offsets: Sequence[int] = ()) -> int:
    """First of `n` consecutive free ports; `offsets` are extra ports (base + k) that must be free.

    Consecutive blocks are for Ray's worker port range; offsets for tools that derive ports
    from a base port (the kube start.sh puts etcd on PORT+7347 and PORT+7357).
    """
    rng = random.Random(os.getpid() ^ time.time_ns())
    with _ports_lock:
        return _pick_block(rng, n, offsets)


def _pick_block(rng: random.Random, n: int, offsets: Sequence[int]) -> int:
    for _ in range(2000):
        base = rng.randrange(_PORT_LOW, _PORT_HIGH - n)
        wanted = [base + i for i in range(n)] + [base + k for k in offsets]
        if any(p in _handed_out for p in wanted):
            continue
        if all(_bindable(p) for p in wanted):
            _handed_out.update(wanted)
            return base
    raise RuntimeError(f"no block of {n} free ports found")


def tail(path: Path | str, lines: int = 60) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<no log at {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    """A process this session started; `stop()` ends it (and its process group) by pid."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)
    ready_after_s: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def terminate(self) -> None:
        """Send SIGTERM to its process group and return at once (stop() finishes the job).

        Fixtures call this at teardown so that all services shut down in parallel; the session
        end then calls stop() on each, which waits and SIGKILLs stragglers.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM its process group, wait up to `grace_s`, then SIGKILL what is left.

        The service runs in a new session (start_new_session=True), so its process group id is
        its pid and holds only the children it spawned (Ray's raylet, GCS and workers): nothing
        of anybody else's is touched.
        """
        pgid = self.pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                self.popen.poll()  # reap our direct child, or its zombie keeps the group "alive"
                if not _group_alive(pgid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start(
    name: str,
    cmd: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> Service:
    """Start `cmd` in its own process group with stdout+stderr going to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed when we exit
    popen = subprocess.Popen(
        list(cmd),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    log.close()
    return Service(name=name, popen=popen, log_path=log_path)


def start_with_own_ray(
    cmd: Sequence[str], cwd: Path | str, repo: Path, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """A long-lived `vljepa`-side process (the shared demo, the session's models) that starts
    its own local Ray, never the session's (RAY_ADDRESS dropped), with this checkout importable.
    It runs in a session of its own, so a signal to its group reaches it and the Ray it started,
    and nothing else; its stdout and stderr come back as one text stream."""
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=str(cwd),
        start_new_session=True,
    )


def wait_until(
    service: Service,
    ready: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.2,
) -> Service:
    """Poll `ready()` until true; on timeout or early exit, stop the service and raise with its log."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(
                f"{service.name} exited with code {service.popen.returncode} before it was ready; "
                f"log {service.log_path}:\n{service.log_tail()}"
            )
        try:
            if ready():
                service.ready_after_s = time.monotonic() - service.started_at
                return service
        except Exception as e:  # not up yet: connection refused, 503, ...
            last_error = e
        time.sleep(interval_s)
    service.stop()
    raise RuntimeError(
        f"{service.name} not ready after {timeout_s:.0f}s (last error: {last_error!r}); "
        f"log {service.log_path}:\n{service.log_tail()}"
    )


def http_ok(url: str, timeout_s: float = 2.0, expect: tuple[int, ...] = (200,)) -> bool:
    """True when `url` answers with one of the `expect` status codes."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status in expect
    except urllib.error.HTTPError as e:
        return e.code in expect


def tcp_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        return s.connect_ex((host, port)) == 0
