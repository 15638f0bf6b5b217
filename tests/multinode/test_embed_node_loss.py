"""`vljepa embed` loses a worker node mid-run and still writes every good clip exactly once.

Two encoder actors, one per worker node; once the first shard is committed to S3, the node of
one of them is killed like a lost machine, and a replacement node joins (what KubeRay does for
an evicted pod). Ray Data restarts the actor there and retries its in-flight batches, Ray
re-creates the lost result blocks; the driver (on the head) keeps one row per (shard, position)
and writes each shard once, so the Parquet output holds each good clip of the manifest once.
"""

from __future__ import annotations

import json
import time
import uuid

import pyarrow.parquet as pq
import pytest

from pipelines import storage

# 40 clips in 10 shards of 4, batches of 2, a pause after each batch: the run lasts long enough
# for the kill to land while most shards are still open (asserted, not assumed).
ARGS = [
    "--shard-size",
    "4",
    "--batch-size",
    "2",
    "--concurrency",
    "2,2",
    "--debug-batch-delay-s",
    "0.5",
    "--no-progress",
]
ENCODER_ACTOR = "MapWorker(MapBatches(EmbedClipsStage))"

# Waits are on conditions; a busy machine can stretch them past the suite's 600 s default.
pytestmark = pytest.mark.timeout(1800)


def _done_shards(out: str) -> list[str]:
    return [u for u in storage.list_files(storage.join(out, "_state"), ".json") if "/_run" not in u]


def test_embed_survives_worker_node_loss(cluster, vljepa, synth_corpus, s3):
    manifest = synth_corpus / "manifest.jsonl"
    ids = [json.loads(x)["id"] for x in manifest.read_text().splitlines() if x.strip()]
    n_shards = -(-len(ids) // 4)
    out = s3.uri("multinode", uuid.uuid4().hex[:8], "features")

    proc = vljepa("embed", "--manifest", manifest, "--out", out, *ARGS)
    deadline = time.monotonic() + 900
    victims: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        if _done_shards(out):
            victims = cluster.node_running(ENCODER_ACTOR)
            if victims:
                break
        time.sleep(0.2)
    running, done_at_kill = proc.poll() is None, len(_done_shards(out))
    assert victims and running, f"no kill happened:\n{proc.log.read_text()[-3000:]}"
    dead_after = cluster.kill(victims[0])
    assert done_at_kill < n_shards - 2, "the kill came too late to matter"
    cluster.add_worker()  # the lost node's capacity comes back; the run goes on meanwhile

    rc = proc.wait(timeout=900)
    log = proc.log.read_text()
    assert rc == 0, f"embed failed after the node loss:\n{log[-4000:]}\n{cluster.log_tails()}"
    summary = json.loads(next(x for x in log.splitlines() if x.startswith("EMBED_SUMMARY "))[14:])
    assert summary["clips_written"] == len(ids) and summary["errors"] == 0, summary

    files = storage.list_files(storage.join(out, "data"), ".parquet")
    got: list[str] = []
    for f in files:
        fs, path = storage.filesystem(f)
        got += pq.read_table(path, filesystem=fs, columns=["clip_id"]).column(0).to_pylist()
    assert len(got) == len(set(got)), "duplicate rows"
    assert sorted(got) == sorted(ids), "lost rows"
    print(
        f"node {victims[0].name} killed with {done_at_kill}/{n_shards} shards done "
        f"(dead in the GCS after {dead_after:.1f}s); {len(got)} clips in {len(files)} files"
    )
