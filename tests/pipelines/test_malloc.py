"""The training workers start with glibc's huge pages (pipelines/train/malloc.py): the setting
composes with the user's own GLIBC_TUNABLES, reaches the workers' environment, and does what it
is there for in a process started with it (transparent huge pages in the kernel's default
`madvise` mode): a big tensor made and freed faults its memory in 2 MiB at a time, not 4 KiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipelines.train import malloc
from pipelines.train.trainer import _worker_env


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, "glibc.malloc.hugetlb=1"),
        ("", "glibc.malloc.hugetlb=1"),
        ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
        ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the user's choice wins
        ("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2", None),
    ],
)
def test_tunables_compose_with_the_users(user, expected):
    assert malloc.worker_tunables(user) == (expected if expected is not None else user)


def test_train_workers_environment_carries_it(monkeypatch):
    monkeypatch.delenv(malloc.VAR, raising=False)
    assert _worker_env("sqlite:///x.db")[malloc.VAR] == malloc.HUGE_PAGES
    monkeypatch.setenv(malloc.VAR, "glibc.malloc.hugetlb=0")
    assert _worker_env("sqlite:///x.db")[malloc.VAR] == "glibc.malloc.hugetlb=0"


_MAKE_AND_FREE = """
import json, resource, torch
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(12_000_000)
before = faults()
for _ in range(10):
    y = x + 1.0
    del y
print(json.dumps((faults() - before) / 10))
"""


def _faults_per_tensor(env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _MAKE_AND_FREE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_started_with_it_faults_in_huge_pages(monkeypatch):
    """48 MB a tensor: ~11.7k faults of 4 KiB under glibc's default, ~24 of 2 MiB with it."""
    monkeypatch.delenv(malloc.VAR, raising=False)
    base = {k: v for k, v in os.environ.items() if k != malloc.VAR}
    default = _faults_per_tensor({**base, malloc.VAR: "glibc.malloc.hugetlb=0"})
    worker = _faults_per_tensor({**base, **_worker_env("sqlite:///x.db")})
    assert default > 10_000, default  # every 4 KiB page of a fresh mmap, each time
    assert worker < default / 10, (worker, default)
