"""The session's trained models, made in the background at low CPU priority.

`embedded_corpus` -> `trained_model` -> `decoded_model` (tests/trained_models.py) are one chain
of ~5 CPU-bound minutes on 2 cores, while the rest of the
suite leaves about a fifth of those cores idle (tests waiting on subprocesses, servers, HTTP).
So at collection (`prestart`, from tests/conftest.py), when a selected test needs any of them,
the chain starts as a subprocess at idle CPU priority (SCHED_IDLE): it runs on the cycles the
tests leave, not on theirs, and the tests that use its results run last (`order_items`), which gives it the most
time. A fixture then `wait`s for its stage, which is usually done; while a fixture waits, the
machine is the chain's.

The subprocess (`python -m tests.session_models`) runs the same functions the fixtures run in the
test process when nothing was prestarted (VLJEPA_TEST_PRESTART=0, or a stage no selected test
needed), with the same configs: on its own embedded local Ray (an idle-priority cluster cannot be
the session's, whose workers its raylet starts at normal priority), tracking into the session's
MLflow server. Each stage's result comes back as JSON on disk, announced by a line on its
stdout; its whole output is logs/session-models.log.

Stage 2 (`stage2_model`, tests/stage2_models.py) is not in the chain: made there, it missed the
VQA bar in both full runs that did so (0.901 and 0.883 overall) where runs in the test process
pass, so it is made in the test process, on the session's cluster, until that is understood.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.services import start_with_own_ray

REPO = Path(__file__).resolve().parents[1]
STAGES = ("embedded_corpus", "trained_model", "decoded_model")  # each made from those before
# SCHED_IDLE: a task that runs only on a core nothing else wants, preempted by any waking test;
# every process the chain starts (its Ray, the workers) inherits the policy. Its session's
# autogroup is lowered too (`_lowest_autogroup`): without that, the chain in its own session
# slowed the in-process multi-threaded torch test (tests/jepa/test_learning.py) from 36 s to
# 267 s, niced or not.
PRIORITY = ["chrt", "--idle", "0"] if shutil.which("chrt") else ["nice", "-n", "19"]
EVENT = "VLJEPA_CHAIN "
TIMEOUT_S = float(os.environ.get("VLJEPA_CHAIN_TIMEOUT_S", "3600"))
# An idle-priority cluster starts its workers more slowly while the tests are busy: give Ray Train longer
# than its 60 s default to bring a worker group up.
_PATIENT_RAY = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600"}


# --------------------------------------------------------------------------- results as JSON


def _dump(name: str, obj) -> dict:
    if name == "decoded_model":
        return obj
    d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if name == "embedded_corpus":
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
    return {**d, "cfg": obj.cfg.model_dump(mode="json"), "result": dataclasses.asdict(obj.result)}


def _load(name: str, d: dict):
    from pipelines.train import TrainConfig
    from pipelines.train.trainer import TrainResult
    from tests.trained_models import EmbeddedCorpus, TrainedModel

    if name == "decoded_model":
        return d
    if name == "embedded_corpus":
        return EmbeddedCorpus(**{**d, "corpus": Path(d["corpus"]), "features": Path(d["features"])})
    return TrainedModel(
        **{**d, "cfg": TrainConfig.model_validate(d["cfg"]), "result": TrainResult(**d["result"])}
    )


# --------------------------------------------------------------------------- the test side


@dataclasses.dataclass
class _Chain:
    proc: subprocess.Popen
    stages: tuple[str, ...]
    out: Path
    log: Path
    started: float = dataclasses.field(default_factory=time.monotonic)
    tail: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=120)
    )
    events: dict[str, threading.Event] = dataclasses.field(default_factory=dict)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip("\n"))
                if line.startswith(EVENT):
                    name = line[len(EVENT) :].strip()
                    if name in self.events:
                        self.events[name].set()
        self.proc.wait()
        for ev in self.events.values():  # wake every waiter; they tell done from ended
            ev.set()


_LAUNCH: Future | None = None
log = logging.getLogger(__name__)


def _wanted(items: list[pytest.Item]) -> tuple[str, ...]:
    """The chain's stages some selected, not skipped, test needs (in chain order)."""
    deepest = max(
        (
            STAGES.index(name)
            for item in items
            if not item.get_closest_marker("skip")
            for name in set(getattr(item, "fixturenames", ())) & set(STAGES)
        ),
        default=-1,
    )
    return STAGES[: deepest + 1]


def order_items(items: list[pytest.Item]) -> None:
    """Reorder in place: modules that use the chain's models run last, by the deepest stage any
    of their tests use (so the chain has the whole session before its first consumer); each
    module stays whole and in its place relative to the others of its kind."""

    def depth(item: pytest.Item) -> int:
        names = set(getattr(item, "fixturenames", ()))
        return max((STAGES.index(n) + 1 for n in names & set(STAGES)), default=0)

    module_depth: dict[str, int] = {}
    for item in items:
        key = item.nodeid.split("::", 1)[0]
        module_depth[key] = max(module_depth.get(key, 0), depth(item))
    items.sort(key=lambda item: module_depth[item.nodeid.split("::", 1)[0]])  # stable


def prestart(items: list[pytest.Item], root: Path, tracking_uri: Callable[[], str]) -> None:
    """At collection: start the chain for the stages the selected tests need, in the background.

    `tracking_uri` blocks until the session's MLflow server is up."""
    global _LAUNCH
    stages = _wanted(items)
    if _LAUNCH is not None or not stages:
        return

    def launch() -> _Chain:
        out = root / "session-models"
        out.mkdir(exist_ok=True)
        cmd = [*PRIORITY, sys.executable, "-m", "tests.session_models"]
        cmd += ["--dir", str(root), "--tracking-uri", tracking_uri(), "--stages", ",".join(stages)]
        # its own local Ray (see the module docstring), stopped as a group with it
        proc = start_with_own_ray(cmd, out, REPO, _PATIENT_RAY)
        _lowest_autogroup(proc.pid)
        chain = _Chain(proc, stages, out, root / "logs" / "session-models.log")
        chain.events = {s: threading.Event() for s in stages}
        chain.reader = threading.Thread(target=chain.read, daemon=True, name="session-models")
        chain.reader.start()
        return chain

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-models")
    _LAUNCH = pool.submit(launch)
    pool.shutdown(wait=False)


def _lowest_autogroup(pid: int) -> None:
    """With the kernel's autogroups (CONFIG_SCHED_AUTOGROUP, on in most distributions' kernels and
    on this machine's), CPU is shared between sessions first and only then by priority within
    one: the chain's own session, as a group, took half a core that the tests wanted whatever
    its tasks' policy. Its group gets the lowest weight too (nice 19: 15 against the tests'
    1024). Without autogroups there is nothing to do: SCHED_IDLE alone holds."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text("19")
    except OSError as e:
        log.info("session models: autogroup of %d left as is (%s)", pid, e)


def wait(name: str):
    """The stage's result from the background chain; None when the chain does not make it: it
    was not started for this stage, or it failed or timed out (its last lines are logged), and
    the fixture then makes the stage itself, in the test process, where a real failure shows."""
    if _LAUNCH is None:
        return None
    chain = _LAUNCH.result()
    if name not in chain.stages:
        return None
    remaining = chain.started + TIMEOUT_S - time.monotonic()
    done = chain.events[name].wait(timeout=max(0.0, remaining))
    result = chain.out / f"{name}.json"
    if done and result.exists():
        return _load(name, json.loads(result.read_text()))
    if not done:
        stop()
        why = f"was not done after {TIMEOUT_S:.0f} s"
    else:
        why = f"was not made: the chain exited {chain.proc.returncode}"
    tail = "\n".join(chain.tail)
    log.warning(
        "session models: %s %s (%s); making it here. Its last lines:\n%s",
        name,
        why,
        chain.log,
        tail,
    )
    return None


def stop(timeout_s: float = 60) -> None:
    """Stop the chain (and its Ray) if it still runs: at the session's end, or on a timeout."""
    if _LAUNCH is None or not _LAUNCH.done() or _LAUNCH.exception() is not None:
        return
    chain = _LAUNCH.result()
    if chain.proc.poll() is None:
        os.killpg(chain.proc.pid, signal.SIGTERM)
        try:
            chain.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(chain.proc.pid, signal.SIGKILL)
            chain.proc.wait(timeout=30)
    if chain.reader is not None:
        chain.reader.join(timeout=10)


# --------------------------------------------------------------------------- the chain itself


def _emit(out: Path, name: str, obj) -> None:
    tmp = out / f".{name}.json"
    tmp.write_text(json.dumps(_dump(name, obj)))
    tmp.rename(out / f"{name}.json")
    print(f"{EVENT}{name}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="Make the session's trained models (see docstring).")
    ap.add_argument("--dir", type=Path, required=True, help="the pytest session's directory")
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--stages", required=True, help=f"comma-separated, of {', '.join(STAGES)}")
    args = ap.parse_args()
    stages = args.stages.split(",")
    out = args.dir / "session-models"

    from tests.trained_models import embed_corpus, train_decoder, train_stage1

    embedded = embed_corpus(args.dir)
    _emit(out, "embedded_corpus", embedded)
    if "trained_model" not in stages:
        return
    trained = train_stage1(embedded, args.tracking_uri, args.dir)
    _emit(out, "trained_model", trained)
    if "decoded_model" in stages:
        _emit(out, "decoded_model", train_decoder(trained, embedded, args.dir / "train-decoder"))


if __name__ == "__main__":
    main()
