"""glibc malloc settings for the training workers' processes.

glibc serves every allocation above its mmap threshold (at most 32 MiB on 64-bit) with a fresh
`mmap` and returns it with `munmap` on free, so each such tensor's pages are faulted in, one
4 KiB page at a time, every time it is made. A CPU training step makes several: with FSDP2 the
all-gathered weights of a unit, its gradient and the reduce-scatter buffers; MiniLM's token
table alone is 30522 x 384 fp32 = 45 MiB. Measured on a stage-1 tiny-preset worker, ~57k page
faults a second and a quarter of its CPU time in the kernel (benchmarks/malloc_step.py).

`glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc ask for transparent huge pages
(`madvise(MADV_HUGEPAGE)`) on what it maps, so those buffers fault in 2 MiB at a time: 512x
fewer faults. It must be in the environment when the process starts (glibc reads its tunables
once, at start-up), which is why it travels in the workers' runtime_env rather than being set
from inside a worker. Other libcs ignore the variable; GPU memory is not malloc's. A
`glibc.malloc.hugetlb` the user set (`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns it off) wins.
"""

from __future__ import annotations

VAR = "GLIBC_TUNABLES"
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def worker_tunables(current: str | None) -> str:
    """`current` (the user's GLIBC_TUNABLES, colon-separated) with huge pages added unless it
    already says what glibc.malloc.hugetlb should be."""
    parts = [p for p in (current or "").split(":") if p]
    if any(p.split("=", 1)[0] == "glibc.malloc.hugetlb" for p in parts):
        return ":".join(parts)
    return ":".join([*parts, HUGE_PAGES])
