"""One way for every job (embed, train, serve, the demo) to reach Ray, and to keep Ray quiet.

`--address` (or RAY_ADDRESS) attaches to a running cluster; nothing at all starts a private
local cluster inside this process, sized to the machine, so every command works with no flags.

What a `vljepa` command prints is its own progress and results. Ray would also print, in the
driver's terminal, everything its workers and its own actors write (Ray Train's report dumps,
State API retries, other libraries' INFO lines), its loggers' INFO lines and its core worker's
native error lines. With `quiet_console()` (the CLI's default; `vljepa -v` or VLJEPA_VERBOSE=1
turns it off) `connect` keeps all of that in the Ray session's log files (named once at connect)
and lets through only what our own loggers wrote inside the workers (tagged there by
`setup_worker_logging`). Library use (tests, notebooks) is left as Ray makes it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)

# VLJEPA_VERBOSE=1 does what `vljepa -v` does.
VERBOSE_ENV = "VLJEPA_VERBOSE"
# The loggers whose worker-side lines are ours to show (the packages of this project).
OWN_LOGGERS = ("pipelines", "jepa", "serve", "cluster", "vljepa")
# Worker lines our loggers wrote start with this tag (in the worker's log file too), so the
# driver can tell them from everything else the worker printed.
WORKER_TAG = "[vljepa] "
# Ray's loggers in the driver process whose console output is trimmed to errors.
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


_quiet = False
_sigterm_interrupts = False


def verbose() -> bool:
    """Whether VLJEPA_VERBOSE asks for Ray's own output (as `vljepa -v` does)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet() -> bool:
    """Whether `connect` keeps Ray's own output off the terminal (see `quiet_console`)."""
    return _quiet


def quiet_console(on: bool = True) -> None:
    """Make `connect` keep Ray's own output off this terminal (called by the `vljepa` CLI)."""
    global _quiet
    _quiet = on


def interrupt_on_sigterm(on: bool = True) -> None:
    """Make `connect` turn SIGTERM into KeyboardInterrupt once Ray has started (called by the
    `vljepa` CLI). Why after: Ray's core worker puts a native handler on SIGTERM that dumps a
    stack and kills the process on the spot, leaving a local Ray's processes orphaned; as a
    KeyboardInterrupt, the command stops the way Ctrl-C stops it and Ray shuts down at exit."""
    global _sigterm_interrupts
    _sigterm_interrupts = on


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def resolve_address(address: str | None) -> str | None:
    """The cluster to attach to: the flag, else RAY_ADDRESS, else None (start a local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(
    address: str | None = None,
    *,
    runtime_env: dict[str, Any] | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    log_to_driver: bool = True,
    namespace: str | None = None,
):
    """`ray.init` for a job: attach to `address`/RAY_ADDRESS or start an embedded local cluster.

    Returns Ray's context. If Ray is already initialised in this process (tests, notebooks),
    that connection is reused and `runtime_env` must already be in place.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    target = resolve_address(address)
    quiet = _quiet
    if quiet:
        if log_to_driver:
            runtime_env = {**(runtime_env or {}), "worker_process_setup_hook": _HOOK}
        # "Token authentication is enabled for this Ray cluster ...", said on every start.
        logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
        _filter_native_stderr()
    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": log_to_driver,
        "namespace": namespace,
        "runtime_env": runtime_env,
    }
    if target is None:
        # A private cluster lives and dies with this process; no dashboard to start or serve.
        kwargs.update(include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus)
    for attempt in (1, 2):
        try:
            ctx = ray.init(address=target, **kwargs)
            break
        except Exception as e:  # Ray raises a bare Exception for this
            # Ray gives a new local node 30 s (hard-coded) to register; on an overloaded box it
            # can miss that once. Try one more time before giving up.
            if target is not None or attempt == 2 or "timed out during startup" not in str(e):
                raise
            log.warning("local Ray node was slow to start (%s); retrying once", e)
            ray.shutdown()
    if _sigterm_interrupts and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    if quiet:
        quiet_ray_console()
        if not _divert_raylet_notes():
            log.debug("Ray's raylet notes could not be diverted; they are shown as is")
        if log_to_driver and not _forward_only_own_lines():
            log.debug("Ray's log forwarding could not be filtered; worker output is shown as is")
    res = ray.cluster_resources()
    log.info(
        "Ray: %s (%g CPUs, %g GPUs); its logs: %s",
        f"attached to {target}" if target else "started a local cluster",
        res.get("CPU", 0),
        res.get("GPU", 0),
        session_log_dir() or "(unknown)",
    )
    return ctx


def session_log_dir() -> str | None:
    """The `logs/` folder of the Ray session this process is connected to (on this machine)."""
    try:
        from ray._private import worker as ray_worker

        node = ray_worker._global_node
        return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None
    except Exception:  # private API moved: the path is a hint, not a requirement
        return None


def quiet_ray_console() -> None:
    """Ray's loggers in this process print errors only to the terminal; the rest goes to
    `vljepa-driver-<pid>.log` in the session's logs (Ray Data keeps its own `ray-data.log`).
    Ray Data configures its loggers on import, so it is imported first; Ray Serve re-makes its
    console handler whenever it is imported, so its records are diverted by a filter on its
    logger, which that does not remove."""
    import ray.data  # noqa: F401  (configures the `ray.data` loggers now, not later at INFO)

    for name in _RAY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setLevel(max(handler.level, logging.ERROR))
    logs = session_log_dir()
    to_file = None
    if logs and os.path.isdir(logs):
        to_file = logging.FileHandler(os.path.join(logs, f"vljepa-driver-{os.getpid()}.log"))
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("ray").addHandler(to_file)  # and its children that propagate
    serve_logger = logging.getLogger("ray.serve")
    if not any(isinstance(f, _Divert) for f in serve_logger.filters):
        serve_logger.addFilter(_Divert(to_file))


class _Divert(logging.Filter):
    """Lets errors through; hands every other record to `to_file` (if any) instead."""

    def __init__(self, to_file: logging.Handler | None):
        super().__init__()
        self.to_file = to_file

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if self.to_file is not None:
            self.to_file.handle(record)
        return False


def _forward_only_own_lines() -> bool:
    """Replace Ray's driver-side printer of worker output with one that prints only the lines
    our loggers tagged (without the tag and without Ray's `(Actor pid=...)` prefix). Ray has no
    public hook for this; if its private one moved, returns False and changes nothing."""
    try:
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        printer = ray_worker.print_worker_logs
        names = [name for name, _ in dispatcher.handlers]
    except (ImportError, AttributeError):
        return False
    if "ray_print_logs" not in names:
        return False

    def forward(data: dict) -> None:
        lines = [
            line[len(WORKER_TAG) :]
            for line in data.get("lines") or ()
            if isinstance(line, str) and line.startswith(WORKER_TAG)
        ]
        if lines and data.get("pid") not in ("autoscaler", "raylet"):
            # Printed as they come: Ray's de-duplication would append its own
            # "[repeated 2x across cluster]" notes to the lines of identical workers.
            sink = sys.stderr if data.get("is_err") else sys.stdout
            printer({**data, "lines": lines}, sink, ignore_prefix=True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", forward)
    return True


def _divert_raylet_notes() -> bool:
    """Send the raylet's notes to this job (`Task ServeController.graceful_shutdown failed ...
    will be retried`, printed whether or not worker output is forwarded) to the driver's log
    file. Ray has no public hook for this; if its private one moved, returns False."""
    try:
        from ray._private import worker as ray_worker

        print_to_stdstream = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):
        return False
    if getattr(print_to_stdstream, "_vljepa", False):
        return True

    def raylet_notes_to_file(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            print_to_stdstream(data, ignore_prefix)
            return
        for line in data.get("lines") or ():  # the "ray" logger's console shows errors only
            logging.getLogger("ray").warning("(raylet) %s", line)

    raylet_notes_to_file._vljepa = True  # type: ignore[attr-defined]
    # the error listener looks this name up each time it prints a note
    ray_worker.print_to_stdstream = raylet_notes_to_file
    return True


class _TaggedHandler(logging.StreamHandler):
    """stderr with every line tagged as ours (see WORKER_TAG)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\n".join(WORKER_TAG + line for line in text.splitlines())


def setup_worker_logging() -> None:
    """Ray's `worker_process_setup_hook` for the jobs `connect` starts: our loggers write to the
    worker's stderr tagged, and not again through Ray's root handlers. Ray sends the worker's
    stderr to its log file and to the driver, which shows only tagged lines."""
    if any(isinstance(h, _TaggedHandler) for h in logging.getLogger(OWN_LOGGERS[0]).handlers):
        return
    handler = _TaggedHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)  # the level stays the worker's: INFO in Ray Train's
        logger.propagate = False  # workers, WARNING in plain actors and Serve replicas


_HOOK = f"{__name__}.setup_worker_logging"

# Ray's native log line: `[2026-12-01 20:26:54,840 E 14491 14491] core_worker.cc:2465: ...`
_NATIVE_LINE = rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] "
# Runs in a small child process: copies its stdin to its stdout (this process's real stderr)
# except complete native log lines. Partial lines (a progress bar redrawn with \r) go out at
# once. It ignores terminal signals and ends when every writer of the pipe has exited, so a
# crash report written as this process dies still gets through.
_FILTER_SRC = f"""# vljepa: stderr filter of a driver process (pipelines/connect.py)
import os, re, signal
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
native = re.compile({_NATIVE_LINE!r})
buf = b""
while True:
    chunk = os.read(0, 65536)
    buf += chunk
    keep, cut = [], 0
    while (end := buf.find(b"\\n", cut)) >= 0:
        if not native.match(buf, cut):
            keep.append(buf[cut : end + 1])
        cut = end + 1
    buf = buf[cut:]
    if buf and (not chunk or not buf.startswith(b"[")):
        keep.append(buf)
        buf = b""
    data = b"".join(keep)
    try:
        while data:
            data = data[os.write(1, data) :]
    except OSError:  # the terminal is gone: keep draining so writers never block
        pass
    if not chunk:
        break
"""
_stderr_filter = None


def _filter_native_stderr() -> None:
    """Route what native code writes to this process's fd 2 through `_FILTER_SRC`, and point
    Python's `sys.stderr` (and the logging handlers on it) at the real stderr, so our own lines
    stay in order with stdout. Why: Ray's core worker in the driver prints every native ERROR
    line (`core_worker.cc: Actor ... has constructor arguments in the object store ...`) to
    stderr, with no switch but one that also empties its log file; the same lines are in the
    driver's log file (`python-core-driver-*.log`), so dropping them from the terminal loses
    nothing."""
    global _stderr_filter
    if _stderr_filter is not None:
        return
    import subprocess

    old = sys.stderr
    old.flush()
    real_stderr = os.dup(2)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _FILTER_SRC],
            stdin=subprocess.PIPE,
            stdout=real_stderr,
            start_new_session=True,  # Ctrl-C on the terminal stops us, not our stderr
        )
    except OSError as e:  # no filter: the native lines show, nothing else changes
        os.close(real_stderr)
        log.debug("no stderr filter: %s", e)
        return
    assert proc.stdin is not None
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()  # fd 2 is the pipe's write end now
    _stderr_filter = proc
    new = open(  # noqa: SIM115 - lives as long as the process, like sys.stderr
        real_stderr,
        "w",
        buffering=1,
        encoding=getattr(old, "encoding", None) or "utf-8",
        errors=getattr(old, "errors", None) or "backslashreplace",
    )
    sys.stderr = new
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


def forwarded_env(prefixes: tuple[str, ...] = ("AWS_", "MLFLOW_", "HF_")) -> dict[str, str]:
    """Environment a job's workers need but a long-running cluster may not have (S3 credentials,
    tracking URI, offline hub): pass as `runtime_env={"env_vars": forwarded_env()}`."""
    return {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
