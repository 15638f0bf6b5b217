"""Commands print their own progress and results, not Ray's (issue 14, acceptance 9).

At default verbosity no line of Ray's internals reaches the terminal: no `(Actor pid=...)` line
forwarded from a worker or one of Ray's actors, no line from Ray's Python loggers
(`file.py:123 -- ...`), no native `[... E pid tid] file.cc:123:` line, no `TrainingReport(...)`.
Our own lines written inside workers (the training steps) still come through. `-v` shows Ray's
output again.

Two real runs: `vljepa embed` on a local Ray it starts itself (the default a user gets), and the
shared small `vljepa demo` (tests/demo_fixture.py: embed, train, decoder, eval, Serve on the
session's cluster), whose captured output is checked here rather than paying for a second demo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import demo_fixture
from tests.cluster.ray_output import ray_internal_lines

demo_run = demo_fixture.demo_run  # the shared session fixture

REPO = Path(__file__).resolve().parents[2]


def test_the_patterns_catch_what_ray_prints():
    """The detector is only worth something if it flags Ray's real output formats."""
    samples = [
        "\x1b[36m(PlacementGroupCleaner pid=16968)\x1b[0m State API may be temporarily unavailable",
        "(RayTrainWorker pid=17476, ip=10.0.0.2) Reporting training result 1: ...",
        "(MapWorker(MapBatches(EmbedClipsStage)) pid=14965) Loading weights: 100%",
        "2026-12-01 20:26:54,812\tINFO streaming_executor.py:215 -- Starting execution of Dataset",
        "[2026-12-01 20:26:54,840 E 14491 14491] core_worker.cc:2465: Actor with class name",
        'INFO 2026-12-01 21:29:22,461 serve 18491 -- Started Serve in namespace "serve".',
        "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are",
        "metrics: TrainingReport(checkpoint=None, metrics={})",
    ]
    assert all(ray_internal_lines(s) for s in samples)
    ours = [
        "embed: 40 clips written to ./f in 1 file(s)",
        "=== [3/8] train done in 41.0 s (total 90.1 s)",
        "2026-12-01 20:27:29,264 INFO pipelines.train.trainer: features: 1 file(s)",
        "step 6 loss 2.5070 2.7 samples/s",
    ]
    assert not any(ray_internal_lines(s) for s in ours)


def _local_ray_env(tmp: str) -> dict[str, str]:
    """The session env minus the shared cluster: `vljepa` starts its own Ray under `tmp`."""
    env = {**os.environ, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _vljepa(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "vljepa"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cluster.cli"]
    return cmd + list(args)


def test_embed_on_a_local_ray_prints_only_its_own_lines(synth_corpus: Path, tmp_path: Path):
    """The default path: no --address, so `vljepa embed` starts (and stops) a local Ray; its
    Ray Data pipeline, actor pool and workers say nothing of their own at default verbosity."""
    ray_tmp = tempfile.mkdtemp(prefix="vjq-", dir="/tmp")  # short: Ray's socket paths
    try:
        res = subprocess.run(
            _vljepa(
                "embed",
                "--manifest",
                str(synth_corpus / "manifest.jsonl"),
                "--out",
                str(tmp_path / "f"),
                "--limit",
                "8",
                "--no-progress",
            ),
            capture_output=True,
            text=True,
            timeout=300,
            env=_local_ray_env(ray_tmp),
            cwd=tmp_path,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "embed: 8 clips written" in res.stdout
    assert "shard 00000 done: 8 clips" in res.stderr  # our own log lines are all there
    assert "[vljepa] " not in out  # the worker-side tag never shows
    found = ray_internal_lines(out)
    assert not found, "\n".join(found[:20])


@pytest.mark.timeout(demo_fixture.START_TIMEOUT_S + 300)
def test_demo_prints_no_ray_internals(demo_run: demo_fixture.DemoRun):
    """Embed, train (2 Ray Train workers), decoder, eval and Serve on the session's cluster:
    every line the demo printed up to now is its own or its stages'. (Its stop belongs to the
    SIGTERM test in tests/test_demo.py; `vljepa serve`'s stop output is checked in
    test_serve_signals.py.)"""
    found = ray_internal_lines(demo_run.stdout)
    assert not found, f"{len(found)} lines from Ray's internals, e.g.:\n" + "\n".join(found[:20])
    # and its own progress is all there: a banner per stage, and the training steps that our
    # code logs inside a Ray Train worker (forwarded, without Ray's prefix or our tag)
    assert "] train done in " in demo_run.stdout
    assert re.search(r"^step \d+ loss ", demo_run.stdout, re.M), demo_run.stdout[-3000:]
    assert "[vljepa] " not in demo_run.stdout
