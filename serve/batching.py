"""Dynamic batching that never makes a request wait for company it does not have.

Ray's `@serve.batch` closes a batch `batch_wait_timeout_s` after its first request arrived,
whether the model is free or not, and queues that batch behind the one running. So a lone
request always waits the full timeout, and under load a batch is cut short while the model is
still busy with the previous one: the requests arriving in the meantime go into the batch after,
and batch sizes alternate between large and small (benchmarks/serve.py measured batching on
costing 1.8x latency at concurrency 1 and 0.8x throughput at 8).

`Batcher` closes a batch when the model is free to run it: a request that finds the model idle
runs at once, alone; requests that arrive while a batch runs wait for it and then go together
(up to `max_batch_size`). The one deliberate wait is for requests the replica already holds and
is still preparing (an Encoder request decoding its clip, announced with `preparing()`): the
batch waits for them, at most `batch_wait_timeout_s`. That company is certain to come; the
timeout is never spent on a request that is not there.

The model runs in one dedicated thread, one batch at a time, so its torch threads are the only
ones it has (`serve.deployments._torch_threads`), and the event loop stays free to accept and
decode the next requests meanwhile. `Timings` keeps where each request's time went, for the
benchmark and the deployments' `timings()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Requests kept per stage for `Timings.summary` (a bounded window: a replica lives for days).
_KEEP = 4096


class Timings:
    """Recent per-request durations by stage (ms) and batch sizes; `summary` gives p50/p99."""

    def __init__(self, keep: int = _KEEP) -> None:
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        self.stages: dict[str, deque[float]] = {}
        self.batch_sizes: deque[int] = deque(maxlen=self.keep)

    def add(self, stage: str, ms: float) -> None:
        self.stages.setdefault(stage, deque(maxlen=self.keep)).append(ms)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage, xs in self.stages.items():
            s = sorted(xs)
            out[stage] = {
                "n": len(s),
                "p50_ms": round(statistics.median(s), 2),
                "p99_ms": round(s[min(len(s) - 1, round(0.99 * (len(s) - 1)))], 2),
                "mean_ms": round(statistics.fmean(s), 2),
            }
        sizes = list(self.batch_sizes)
        out["batches"] = {
            "n": len(sizes),
            "mean_size": round(statistics.fmean(sizes), 2) if sizes else None,
            "max_size": max(sizes) if sizes else None,
        }
        return out


class Batcher(Generic[T, R]):
    """`await batcher.submit(item)` -> `fn([..., item, ...])[i]`, with items batched as the
    module docstring says. `fn` is synchronous and runs in the batcher's own thread, one batch
    at a time."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.01,
        name: str = "model",
    ) -> None:
        self.fn = fn
        self.name = name
        self.configure(max_batch_size, batch_wait_timeout_s)
        self.timings = Timings()
        self._queue: deque[tuple[T, asyncio.Future, float]] = deque()
        self._preparing = 0
        self._changed: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"vljepa-{name}")

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if float(batch_wait_timeout_s) < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Around the preparation of an item that will be submitted next (no await between
        leaving this block and `submit`): a batch closing meanwhile waits for it."""
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1
            self._notify()

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue `item` now (call from the event loop); await the returned future for its
        result, or the batch's exception."""
        loop = asyncio.get_running_loop()
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        fut: asyncio.Future = loop.create_future()
        self._queue.append((item, fut, time.perf_counter()))
        self._notify()
        return fut

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait_changed(self, timeout_s: float | None) -> bool:
        assert self._changed is not None
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                await self._wait_changed(None)
            # Wait only for requests this replica holds and is preparing, never longer than the
            # timeout: a lone request, or a full queue, starts at once.
            deadline = loop.time() + self.batch_wait_timeout_s
            while len(self._queue) < self.max_batch_size and self._preparing > 0:
                left = deadline - loop.time()
                if left <= 0 or not await self._wait_changed(left):
                    break
            n = min(len(self._queue), self.max_batch_size)
            batch = [self._queue.popleft() for _ in range(n)]
            batch = [b for b in batch if not b[1].done()]  # callers that gave up
            if not batch:
                continue
            t0 = time.perf_counter()
            for _, _, queued in batch:
                self.timings.add("queue", (t0 - queued) * 1000)
            try:
                out = await loop.run_in_executor(self._pool, self.fn, [b[0] for b in batch])
                if len(out) != len(batch):
                    raise RuntimeError(f"{self.name}: {len(out)} results for {len(batch)} items")
            except Exception as e:  # the batch's callers get the error; the batcher goes on
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(e)
            else:
                for (_, fut, _), res in zip(batch, out, strict=True):
                    if not fut.done():
                        fut.set_result(res)
            ms = (time.perf_counter() - t0) * 1000
            self.timings.batch_sizes.append(len(batch))
            for _ in batch:
                self.timings.add("model", ms)
