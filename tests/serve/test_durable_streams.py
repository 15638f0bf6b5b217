"""Durable streams (issue 14, acceptance 3): the stream store writes through to storage.

Over real HTTP against the package app (its store writes to the default folder, in the Ray
session): a stream is appended until it emitted events, then its store actor is killed twice,
once so that Ray restarts it (max_restarts=-1) and once for good (the ingress recreates it).
After each kill every event listed before is listed again, unchanged, the stream goes on with
the next seq, a retried seq replays its stored outcome, and the events over the whole stream are
exactly what one detector fed every clip once emits (no clip applied twice or lost).

In process, on the real S3 server: a second store restores what the first wrote (detector state,
events, a pending event's embedding, the replay window); a clip whose write fails is refused
with nothing changed; deleting a stream deletes it in storage.
"""

from __future__ import annotations

import base64
import time
import uuid

import numpy as np
import pytest

from tests.serve import _app
from tests.serve._app import DETECTOR

SID = "durable-1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _store_actor():
    import ray

    from serve.streams import NAMESPACE, store_name

    return ray.get_actor(store_name(_app.APP), namespace=NAMESPACE)


def _wait(cond, what: str, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while True:
        out = cond()
        if out:
            return out
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _actor_state(actor_id: str):
    from ray.util.state import get_actor

    return get_actor(actor_id)


def test_stream_survives_its_store_being_killed(app, synth_corpus):
    import ray

    from jepa.selective import OnlineDetector, OnlineDetectorConfig

    c = app["client"]
    clips = _app.stream_clips(synth_corpus)[0]["clips"]
    c.delete(f"/v1/streams/{SID}")  # a stream of this id from an earlier run: start afresh
    answers: list[dict] = []

    def append(seq: int) -> dict:
        r = c.post(f"/v1/streams/{SID}/clips", json={"clip_b64": _b64(clips[seq]), "seq": seq})
        assert r.status_code == 200, r.text
        return r.json()

    while sum(len(a["events"]) for a in answers) < 2:
        assert len(answers) < len(clips) - 4, "the stream emitted fewer than 2 events"
        answers.append(append(len(answers)))
    before = c.get(f"/v1/streams/{SID}/events").json()
    assert before["clips"] == len(answers) and len(before["events"]) >= 2
    assert all(e["status"] == "decoded" for e in before["events"]), before

    # 1. killed, restarted by Ray: a new process with nothing in memory
    store = _store_actor()
    actor_id = store._actor_id.hex()
    restarts = _actor_state(actor_id).num_restarts
    ray.kill(store, no_restart=False)
    _wait(
        lambda: (s := _actor_state(actor_id)).num_restarts > restarts and s.state == "ALIVE",
        "the store's restart",
    )
    assert ray.get(_store_actor().stats.remote())["streams"] == 0  # memory empty: restored below
    assert c.get(f"/v1/streams/{SID}/events").json() == before
    k = len(answers) - 1
    again = append(k)  # a retried clip: the stored outcome, not a second detector step
    assert again["replayed"] is True and again["clip_index"] == k
    assert [e["event_id"] for e in again["events"]] == [e["event_id"] for e in answers[k]["events"]]
    answers.append(append(len(answers)))
    assert answers[-1]["replayed"] is False and answers[-1]["clip_index"] == len(answers) - 1

    # 2. killed for good: the ingress recreates the store, which restores the stream
    listed = c.get(f"/v1/streams/{SID}/events").json()
    ray.kill(_store_actor(), no_restart=True)
    _wait(lambda: _actor_state(actor_id).state == "DEAD", "the store's death")
    assert c.get(f"/v1/streams/{SID}/events").json() == listed
    assert _store_actor()._actor_id.hex() != actor_id  # a new actor
    for _ in range(2):
        answers.append(append(len(answers)))
    again = append(0)
    assert again["replayed"] is True and again["clip_index"] == 0
    assert [e["event_id"] for e in again["events"]] == [0]

    # every clip counted once: the events are exactly one detector's over the whole stream
    def all_decoded():
        ev = c.get(f"/v1/streams/{SID}/events").json()
        return ev if all(e["status"] == "decoded" for e in ev["events"]) else None

    final = _wait(all_decoded, "every caption")
    n = len(answers)
    assert final["clips"] == n
    assert [e for e in final["events"] if e["event_id"] < len(listed["events"])] == listed["events"]
    det = OnlineDetector(OnlineDetectorConfig(**DETECTOR))
    expected = []
    for i in range(n):
        r = c.post("/v1/embed", json={"clip_b64": _b64(clips[i])})
        assert r.status_code == 200, r.text
        if det.update(np.asarray(r.json()["embedding"], np.float32), 2 * i + 1):
            expected.append(i)
    assert [e["clip_index"] for e in final["events"]] == expected
    assert [e["clip_index"] for a in answers for e in a["events"]] == expected
    assert c.delete(f"/v1/streams/{SID}").status_code == 200


# ------------------------------------------------------------------------------- in process

DET = {"threshold": 0.5, "min_gap": 0.0, "smoothing": 0.0}


def _embeddings(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    base = rng.standard_normal(64).astype(np.float32)
    # pairs of near-equal clips, each pair far from the last: an event every other clip
    out = []
    for i in range(n):
        if i % 2 == 0:
            base = rng.standard_normal(64).astype(np.float32)
        out.append(base + 0.01 * rng.standard_normal(64).astype(np.float32))
    return out


def test_store_restores_from_s3(s3):
    from pipelines import storage
    from serve.streams import StreamStore

    make = StreamStore.__ray_actor_class__
    root = s3.uri("stream-store", uuid.uuid4().hex)
    embs = _embeddings(8)
    a = make(DET, path=root, name="st")
    outs = [a.advance("s", i, embs[i], 2.0) for i in range(6)]
    assert [o["event_ids"] for o in outs] == [[0], [], [1], [], [2], []]
    a.set_caption("s", 0, "first")
    a.set_caption("s", 2, "third")

    b = make(DET, path=root, name="st")  # as a restarted or recreated store starts
    assert b.stats()["streams"] == 0
    assert b.events("s") == a.events("s")
    assert [e["caption"] for e in b.events("s")["events"]] == ["first", None, "third"]
    (pending,) = b.claim_pending("s")  # the pending event kept its embedding for its decode
    assert pending["event_id"] == 1
    np.testing.assert_array_equal(pending["embedding"], a.streams["s"]["events"][1]["embedding"])
    replay = b.advance("s", 2, embs[7], 2.0)  # not a second detector step, whatever is sent
    assert replay["replayed"] and replay["event_ids"] == [1] and replay["time_s"] == 5.0
    assert b.events("s")["clips"] == 6
    assert b.advance("s", 7, embs[6], 2.0)["status"] == 409  # a gap stays a gap
    for i in (6, 7):  # the restored detector goes on exactly as the original
        got, want = b.advance("s", i, embs[i], 2.0), a.advance("s", i, embs[i], 2.0)
        assert (got["event_ids"], got["time_s"]) == (want["event_ids"], want["time_s"])
    assert b.streams["s"]["det"] == a.streams["s"]["det"]
    assert b.events("s") == a.events("s")
    assert b.delete("s") is True
    assert make(DET, path=root, name="st").events("s") is None
    assert not storage.exists(storage.join(root, "st", "s", "state.json"))


def test_a_clip_storage_refuses_changes_nothing(tmp_path):
    from serve.streams import StreamStore

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # the store's folder would have to live under a regular file
    store = StreamStore.__ray_actor_class__(DET, path=str(blocker), name="st")
    out = store.advance("s", 0, _embeddings(1)[0], 2.0)
    assert out["status"] == 503 and out["error"] == "stream store unavailable", out
    assert store.stats()["streams"] == 0


def test_default_folder_is_the_ray_session_of_the_store(ray_session):
    import ray

    from serve.streams import NAMESPACE, StreamStore

    name = f"st-{uuid.uuid4().hex[:8]}"
    actor = StreamStore.options(name=name, namespace=NAMESPACE).remote(DET, path="", name=name)
    try:
        ctx = ray.get_runtime_context()
        root = f"{ctx.get_temp_dir()}/{ctx.get_session_name()}/vljepa-streams/{name}"
        assert ray.get(actor.location.remote()) == {"path": "", "root": root}
    finally:
        ray.kill(actor)


def _assert_name_released(name: str) -> None:
    """Dropped means gone: the name no longer resolves to the killed store (ray.kill alone
    returns before the GCS has freed it, and get_if_exists then handed out the dying store)."""
    import ray

    from serve.streams import NAMESPACE

    with pytest.raises(ValueError):
        ray.get_actor(name, namespace=NAMESPACE)


def test_a_stopped_service_keeps_its_streams_unless_wiped(ray_session, tmp_path):
    """`vljepa serve` stopped (drop_store without wipe) leaves the streams in storage and the
    next store on that path goes on with them; tests and the demo wipe them."""
    import ray

    from pipelines import storage
    from serve.streams import drop_store, get_or_create_store

    name, path = f"st-{uuid.uuid4().hex[:8]}", str(tmp_path / "streams")
    store = get_or_create_store(name, DET, path)
    ray.get([store.advance.remote("s", i, e, 2.0) for i, e in enumerate(_embeddings(4))])
    kept = ray.get(store.events.remote("s"))
    assert kept["clips"] == 4
    assert drop_store(name, wipe=False)
    _assert_name_released(name)
    again = get_or_create_store(name, DET, path)
    assert ray.get(again.events.remote("s")) == kept
    assert drop_store(name)
    _assert_name_released(name)
    assert not storage.exists(storage.join(path, name, "s", "state.json"))
    assert ray.get(get_or_create_store(name, DET, path).events.remote("s")) is None
    assert drop_store(name)
