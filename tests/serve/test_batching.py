"""serve.batching.Batcher, the Encoder's and Decoder's dynamic batching, on a real event loop
and a real model thread (a plain function stands in for the model: batching is the part under
test). The Serve path is covered by tests/serve/test_serve_http.py and benchmarks/serve.py."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve.batching import Batcher

LONG = 30.0  # a wait no test may spend: reaching it fails the test by its timeout


class Model:
    """Records each batch; `hold()` keeps the next batch running until `release()`."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def hold(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait(LONG)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [x * 10 for x in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, LONG / 2))


def test_a_lone_request_never_waits_for_the_timeout():
    model = Model()
    b = Batcher(model, max_batch_size=8, batch_wait_timeout_s=LONG)

    async def main():
        return [await b.submit(i) for i in range(3)]

    assert run(main()) == [0, 10, 20]  # would time out if each waited LONG
    assert model.batches == [[0], [1], [2]]


def test_requests_arriving_while_a_batch_runs_go_together_up_to_the_maximum():
    model = Model()
    b = Batcher(model, max_batch_size=4, batch_wait_timeout_s=LONG)

    async def main():
        model.hold()
        first = b.submit(0)
        await asyncio.to_thread(model.entered.wait, LONG)  # batch [0] is running
        rest = [b.submit(i) for i in range(1, 11)]  # queued as submitted
        model.release()
        return [await first] + list(await asyncio.gather(*rest))

    assert run(main()) == [10 * i for i in range(11)]  # each caller gets its own result
    assert model.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_a_batch_waits_for_requests_still_preparing_and_only_for_them():
    model = Model()
    b = Batcher(model, max_batch_size=8, batch_wait_timeout_s=LONG)

    async def main():
        decoded = asyncio.Event()

        async def prepared(i: int, ok: bool):
            with b.preparing():
                await decoded.wait()  # "decoding the clip"
                if not ok:
                    return None  # a bad clip: never submitted
            return await b.submit(i)

        slow = [asyncio.create_task(prepared(1, True)), asyncio.create_task(prepared(2, False))]
        await asyncio.sleep(0)  # one turn of the loop: both are preparing
        lone = b.submit(0)
        await asyncio.sleep(0)  # one turn: the batch of [0] would start here if it did not wait
        decoded.set()
        return await lone, await slow[0], await slow[1]

    assert run(main()) == (0, 10, None)
    # the one that failed to prepare released the batch at once (no LONG wait)
    assert model.batches == [[0, 1]]


def test_the_wait_for_a_preparing_request_is_bounded_by_the_timeout():
    model = Model()
    b = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.05)

    async def main():
        with b.preparing():  # a request that never finishes preparing while we wait
            return await asyncio.wait_for(b.submit(0), 10)

    assert run(main()) == 0
    assert model.batches == [[0]]


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    model = Model(fail_on=1)
    b = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.0)

    async def main():
        with pytest.raises(ValueError, match="bad item 1"):
            await b.submit(1)
        return await b.submit(2)

    assert run(main()) == 20


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(Model(), max_batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_timeout_s"):
        Batcher(Model(), batch_wait_timeout_s=-1)
