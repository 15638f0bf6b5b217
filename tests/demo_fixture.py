"""One small `vljepa demo` per pytest session, shared by tests/test_demo.py and test_browser.py.

The demo runs as a real `vljepa demo` subprocess on its own local Ray (the README's first command
starts one; the session's cluster is not its to hold: tests/serve restart Serve on it), tracking
into the session's MLflow server, with sizes small enough for the suite's budget. It keeps
serving after its stream (`--serve-seconds`), so the browser test can open the live Serve app's
/docs and the demo test can query the live stream state; the session's end (or `stop()`) sends
SIGTERM, which the demo treats like Ctrl-C: it tears its Serve app down and exits 0.

Both modules import `demo_run`; the run itself is a module-level singleton, so however many
modules register the fixture, the demo runs once.

Stopping the demo is itself under test (SIGTERM tears Serve down, exit 0), and a second demo
would double the suite's longest wait, so one test, marked `stops_demo`, stops the shared run.
No test may depend on file order for that: `group_demo_items` (called from tests/conftest.py at
collection) runs every test that uses the demo as one contiguous group, where the first of them
was collected, with the `stops_demo` tests last. So the browser test gets a live demo whether
its file comes before or after tests/test_demo.py.

It starts at collection (`prestart`, called from tests/conftest.py) when a selected test uses it,
so its minutes of synth/embed/train/serve overlap the tests that run before its group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import free_port, start_with_own_ray

REPO = Path(__file__).resolve().parents[1]
# Small enough for the suite (< 4 minutes on 2 busy cores), big enough that every class has a
# train and a val clip (26 classes) and a stream has several events.
SIZES = {"clips": 60, "streams": 1, "steps": 12, "decoder-steps": 100}
READY_LINE = "serving for"  # printed once the stream is done and the demo keeps serving
# An idle 2-core machine needs ~4 minutes; a machine shared with other jobs can need far more.
START_TIMEOUT_S = float(os.environ.get("VLJEPA_DEMO_TIMEOUT_S", "900"))
STOPS_DEMO = "stops_demo"
STOPS_DEMO_MARKER = f"{STOPS_DEMO}: ends the shared demo run; runs after every other demo test"
FIXTURE = "demo_run"


def group_demo_items(items: list[pytest.Item]) -> None:
    """Reorder in place: the demo's users as one group at the first one's place, stoppers last.

    The order inside each part is pytest's own (file order); everything else keeps its order.
    """
    uses = [FIXTURE in getattr(item, "fixturenames", ()) for item in items]
    if not any(uses):
        return
    first = uses.index(True)
    group = [item for item, u in zip(items, uses, strict=True) if u]
    group.sort(key=lambda item: item.get_closest_marker(STOPS_DEMO) is not None)  # stable
    others = [item for item, u in zip(items, uses, strict=True) if not u]
    items[:] = others[:first] + group + others[first:]


@dataclass
class DemoRun:
    out: Path
    port: int
    tracking_uri: str
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    returncode: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)  # serving, or exited
    started: float = field(default_factory=time.monotonic)
    _reader: threading.Thread | None = None

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 120) -> int:
        """SIGTERM (like Ctrl-C) and wait for the demo to tear Serve down and exit."""
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.returncode = self.proc.wait(timeout=30)
            if self._reader is not None:
                self._reader.join(timeout=10)
        return self.returncode


_RUN: DemoRun | None = None
_FAILED: str | None = None
_PRESTARTED: Future | None = None  # the demo launched at collection (prestart)


def _launch(root: Path, tracking_uri: str) -> DemoRun:
    """Start `vljepa demo` and its stdout reader; `_wait` waits for it to serve."""
    port = free_port()
    out = root / "demo"
    script = Path(sys.executable).parent / "vljepa"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cluster.cli"]
    cmd += ["demo", "--out", str(out), "--port", str(port), "--tracking-uri", tracking_uri]
    for k, v in SIZES.items():
        cmd += [f"--{k}", str(v)]
    cmd += ["--serve-seconds", "1800", "--no-progress"]
    # The README's first command: its own local Ray, not the session's cluster (whose Serve the
    # tests in tests/serve restart while the demo serves); our SIGTERM goes to the demo only.
    proc = start_with_own_ray(cmd, root, REPO)
    run = DemoRun(out=out, port=port, tracking_uri=tracking_uri, proc=proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            run.lines.append(line)
            if READY_LINE in line:
                run.ready.set()
        run.ready.set()  # the process ended

    run._reader = threading.Thread(target=read, daemon=True, name="demo-stdout")
    run._reader.start()
    return run


def _wait(run: DemoRun) -> DemoRun:
    """Block until the demo serves (its stream done), or fail with its last lines."""
    while not run.ready.wait(timeout=1):
        if time.monotonic() > run.started + START_TIMEOUT_S:
            run.stop(timeout_s=60)
            raise AssertionError(
                f"the demo did not finish its stream in {START_TIMEOUT_S}s:\n{_tail(run)}"
            )
    if run.proc.poll() is not None:
        run.returncode = run.proc.returncode
        raise AssertionError(f"the demo exited {run.proc.returncode} early:\n{_tail(run)}")
    run.summary = json.loads((run.out / "demo_summary.json").read_text())
    return run


def prestart(items: list[pytest.Item], root: Path, tracking_uri: Callable[[], str]) -> None:
    """At collection: if a selected test uses the demo, launch it now, in the background.

    The demo needs minutes of its own before its first test can look at it; started with the
    session, it runs beside the tests that come before its group instead of in front of them.
    `tracking_uri` blocks until the session's MLflow server is up.
    """
    global _PRESTARTED
    if _PRESTARTED is None and any(FIXTURE in getattr(i, "fixturenames", ()) for i in items):
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo")
        _PRESTARTED = pool.submit(lambda: _launch(root, tracking_uri()))
        pool.shutdown(wait=False)


def shutdown() -> None:
    """At session end: stop a demo launched early whose fixture never ran (e.g. after -x)."""
    if _PRESTARTED is not None and _PRESTARTED.done() and _PRESTARTED.exception() is None:
        _PRESTARTED.result().stop(timeout_s=60)


def _tail(run: DemoRun, n: int = 80) -> str:
    return "\n".join(run.lines[-n:])


@pytest.fixture(scope="session")
def demo_run(mlflow_server, session_dir) -> DemoRun:
    """A finished small demo that is still serving (see the module docstring)."""
    global _RUN, _FAILED
    if _FAILED:
        pytest.fail(f"the shared demo run failed earlier: {_FAILED}")
    if _RUN is None:
        try:
            launched = _PRESTARTED.result() if _PRESTARTED is not None else None
            _RUN = _wait(launched or _launch(Path(session_dir), mlflow_server.url))
        except AssertionError as e:
            _FAILED = str(e).splitlines()[0]
            raise
    elif _RUN.returncode is not None:
        # Only reachable if the grouping above was bypassed (e.g. a plugin reordered tests).
        pytest.fail(
            f"the shared demo was already stopped (exit {_RUN.returncode}); "
            f"tests marked {STOPS_DEMO} must run after every other demo test"
        )
    yield _RUN
    _RUN.stop()
