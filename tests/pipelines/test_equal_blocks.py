"""The train split's layout for Ray Train's sharding (`pipelines.train.data.equal_blocks`).

Ray Train shards the train split with `streaming_split(workers, equal=True)` and runs that split
again every epoch; a block the even split has to cut is cut by a Ray task, which on a small
machine costs a fresh worker process every epoch. These tests run the real split on the session's
cluster and look at the block references each shard receives: a reference that is not one of the
materialised dataset's own blocks is a block cut for that epoch. (`_to_ref_bundle_iterator` is
Ray's internal iterator of block references, the one `iter_batches` reads.)
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipelines.train.data import equal_blocks


def _rows(n: int, blocks: int):
    import ray.data

    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    return ray.data.from_numpy(x).repartition(blocks).materialize()


def _block_sizes(ds) -> list[int]:
    return [m.num_rows for bundle in ds.iter_internal_ref_bundles() for m in bundle.metadata]


def _shards_over_epochs(ds, workers: int, epochs: int = 2) -> list[list[tuple[object, int]]]:
    """(block ref, rows) of every block each shard received, over `epochs` epochs, read the way
    Ray Train's workers read their shards: all shards at once, one thread each."""
    iterators = ds.streaming_split(workers, equal=True)
    got: list[list[tuple[object, int]]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def read(i: int) -> None:
        try:
            for _ in range(epochs):
                bundles, _, _ = iterators[i]._to_ref_bundle_iterator()
                for bundle in bundles:
                    got[i].extend((e.ref, e.metadata.num_rows) for e in bundle.blocks)
        except BaseException as e:  # surfaced in the test's thread below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return got


@pytest.mark.parametrize(
    ("rows", "source_blocks", "workers", "max_block_bytes"),
    [
        (417, 3, 2, 1 << 30),  # odd rows: one row cannot be shared out
        (416, 1, 2, 1 << 30),  # one source block: the split would cut it
        (35, 2, 3, 1 << 30),
        (1000, 7, 2, 1000),  # a byte cap that forces several blocks a worker
    ],
)
def test_no_epoch_cuts_a_block(ray_session, rows, source_blocks, workers, max_block_bytes):
    raw = _rows(rows, source_blocks)
    out = equal_blocks(raw, workers, max_block_bytes=max_block_bytes)

    sizes = _block_sizes(out)
    assert len(set(sizes)) == 1 and len(sizes) % workers == 0, sizes
    row_bytes = out.size_bytes() // out.count()
    assert sizes[0] * row_bytes <= max(max_block_bytes, row_bytes), (sizes[0], row_bytes)
    # Fewer than a block a worker is left out, and the rows kept are the first ones, in order.
    assert rows - len(sizes) * sizes[0] < sizes[0] * workers + workers
    kept = np.concatenate([b["data"] for b in out.iter_batches(batch_size=None)])
    assert np.array_equal(kept[:, 0], np.arange(out.count()) * 4)

    own = {ref for bundle in out.iter_internal_ref_bundles() for ref in bundle.block_refs}
    shards = _shards_over_epochs(out, workers)
    per_shard = [sum(n for _, n in shard) for shard in shards]
    assert len(set(per_shard)) == 1 and sum(per_shard) == 2 * out.count(), per_shard
    cut = [n for shard in shards for ref, n in shard if ref not in own]
    assert cut == [], f"blocks cut by the split: {cut}"


def test_the_check_sees_a_cut_block(ray_session):
    """The same check on a layout the even split must cut (one block of 417 rows for 2 shards)
    finds the cut blocks, so the test above can fail."""
    raw = _rows(417, 1)
    own = {ref for bundle in raw.iter_internal_ref_bundles() for ref in bundle.block_refs}
    shards = _shards_over_epochs(raw, 2)
    assert [n for shard in shards for ref, n in shard if ref not in own]


def test_a_layout_already_equal_is_kept(ray_session):
    raw = _rows(64, 4)
    assert equal_blocks(raw, 2) is raw


def test_one_worker_keeps_the_layout(ray_session):
    """A single shard is dealt every block whole: nothing to re-lay (a repartition would only
    cost a task and merge the blocks)."""
    raw = _rows(417, 3)
    assert equal_blocks(raw, 1) is raw
