"""Per-stream state for selective decoding, kept OUTSIDE the ingress replicas and written
through to storage.

Serve routes requests without sticky sessions, so consecutive clips of one stream land on any
ingress replica, and a replica may die between two clips. The state therefore lives in one
detached, named Ray actor per app (`StreamStore`): the online detector's state dict, the clip
counter, stream time and the emitted events of every stream. The actor runs one call at a time,
so "update the detector with this clip" is atomic per stream; a client-supplied `seq` gives
strict per-stream ordering (409 on a gap) and makes a retried clip idempotent (the stored
outcome is replayed, the detector is not advanced twice).

Durability: every change is written through to the store's folder (`stream_store_path`: a
local folder or s3://, through `pipelines.storage`) before the call returns, so nothing a client
was told is only in the actor's memory:

- `<root>/<stream>/events/<event_id>.json`: one event, with its embedding while it is pending
  and its caption once decoded; written when emitted and again when captioned;
- `<root>/<stream>/state.json`: the detector's state, the clip counter, stream time, how many
  events exist and the recent outcomes (for `seq` replay); written after the clip's event, so it
  is the clip's commit point (an event file past its count belongs to a clip that never
  committed, and the client's retry of that clip writes it again).

Each is one whole-object write (temp + rename locally, one PUT on S3): a reader never sees half
a file. Per clip that is one state write of a few KB (the detector's vectors in base64) plus one
event write when the clip emits one. A write that fails fails the clip (503) and leaves the
stream as it was.

The actor restarts itself when killed (max_restarts=-1) and the ingress recreates it when it is
gone for good; either way a stream is restored from storage the first time it is asked about
(lazily), so killing the store loses no emitted event and no clip's effect, and a `seq` applied
before the restore is replayed after it. Claims on pending decodes are not stored: after a
restore every pending event may be claimed at once (a decode then in flight may run twice; a
caption set twice is harmless). The default folder lives on the store's node; only a shared
location (s3://, a shared mount) also survives the loss of that node.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from typing import Any

import numpy as np
import ray

from pipelines import storage

log = logging.getLogger(__name__)

NAMESPACE = "vljepa"
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_REPLAY_KEEP = 256  # outcomes remembered per stream for idempotent retries
_STATE_VERSION = 1


def store_name(app_name: str, explicit: str = "") -> str:
    return explicit or f"vljepa-streams-{app_name}"


def session_folder() -> str:
    """The default `stream_store_path`: vljepa-streams/ in the Ray session folder of this node
    (a new Ray cluster is a new session: it starts with no streams)."""
    ctx = ray.get_runtime_context()
    return os.path.join(ctx.get_temp_dir(), ctx.get_session_name(), "vljepa-streams")


# ---------------------------------------------------------------- encoding


def _pack(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The detector's state dict with its float vectors as base64 float64 (exact, and about half
    the size of JSON numbers); other values stay as they are."""
    if state is None:
        return None
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, list) and v:
            a = np.asarray(v, dtype=np.float64)
            out[k] = {"f8": base64.b64encode(a.tobytes()).decode(), "shape": list(a.shape)}
        else:
            out[k] = v
    return out


def _unpack(packed: dict[str, Any] | None) -> dict[str, Any] | None:
    if packed is None:
        return None
    out: dict[str, Any] = {}
    for k, v in packed.items():
        if isinstance(v, dict) and "f8" in v:
            a = np.frombuffer(base64.b64decode(v["f8"]), dtype=np.float64)
            out[k] = a.reshape(v["shape"]).tolist()
        else:
            out[k] = v
    return out


def _event_record(ev: dict[str, Any]) -> dict[str, Any]:
    rec = {k: v for k, v in ev.items() if k not in ("embedding", "claimed_at")}
    emb = ev.get("embedding")
    if emb is not None:
        rec["embedding"] = base64.b64encode(np.asarray(emb, np.float32).tobytes()).decode()
    return rec


def _event_from_record(rec: dict[str, Any]) -> dict[str, Any]:
    ev = dict(rec)
    if ev.get("embedding") is not None:
        ev["embedding"] = np.frombuffer(base64.b64decode(ev["embedding"]), dtype=np.float32)
    else:
        ev.pop("embedding", None)
    ev["claimed_at"] = float("-inf")  # claims are not stored: claimable at once
    return ev


# ---------------------------------------------------------------- the store


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StreamStore:
    def __init__(
        self,
        detector: dict[str, Any],
        max_streams: int = 10000,
        path: str | None = None,
        name: str = "",
    ):
        """`path`: the configured `stream_store_path` ('' = `session_folder()`); None keeps the
        streams in memory only. The store's folder is `<path>/<name>`."""
        self.detector = dict(detector)
        self.max_streams = max_streams
        self.streams: dict[str, dict[str, Any]] = {}
        self.path = path
        self.root = None if path is None else storage.join(path or session_folder(), name)

    # -- persistence
    def _dir(self, stream_id: str) -> str:
        assert self.root is not None
        return storage.join(self.root, stream_id)

    def _event_uri(self, stream_id: str, event_id: int) -> str:
        return storage.join(self._dir(stream_id), "events", f"{event_id:09d}.json")

    def _write_event(self, stream_id: str, ev: dict[str, Any]) -> None:
        if self.root is not None:
            uri = self._event_uri(stream_id, ev["event_id"])
            storage.write_text(uri, json.dumps(_event_record(ev)))

    def _write_state(self, stream_id: str, st: dict[str, Any]) -> None:
        if self.root is None:
            return
        rec = {
            "version": _STATE_VERSION,
            "clips": st["clips"],
            "t": st["t"],
            "created": st["created"],
            "events": len(st["events"]),
            "det": _pack(st["det"]),
            "outcomes": [
                [k, o["time_s"], o["event_ids"]] for k, o in sorted(st["outcomes"].items())
            ],
        }
        storage.write_text(storage.join(self._dir(stream_id), "state.json"), json.dumps(rec))

    def _load(self, stream_id: str) -> dict[str, Any] | None:
        """The stream as its last committed clip left it, or None if storage has none."""
        state_uri = storage.join(self._dir(stream_id), "state.json")
        if not storage.exists(state_uri):
            return None
        rec = json.loads(storage.read_text(state_uri))
        events = [
            _event_from_record(json.loads(storage.read_text(self._event_uri(stream_id, i))))
            for i in range(int(rec["events"]))
        ]
        log.info("stream %s restored: %d clips, %d events", stream_id, rec["clips"], len(events))
        return {
            "det": _unpack(rec["det"]),
            "clips": int(rec["clips"]),
            "t": float(rec["t"]),
            "events": events,
            "outcomes": {
                int(k): {"clip_index": int(k), "time_s": float(t), "event_ids": list(ids)}
                for k, t, ids in rec["outcomes"]
            },
            "created": float(rec["created"]),
        }

    def _stream(self, stream_id: str) -> dict[str, Any] | None:
        """The stream from memory, else restored from storage (kept in memory from then on)."""
        st = self.streams.get(stream_id)
        if st is None and self.root is not None:
            st = self._load(stream_id)
            if st is not None:
                self.streams[stream_id] = st
        return st

    # -- helpers
    def _detector(self, state: dict | None):
        from jepa.selective import OnlineDetector, OnlineDetectorConfig

        cfg = OnlineDetectorConfig(**self.detector)
        return OnlineDetector.from_state(cfg, state) if state else OnlineDetector(cfg)

    @staticmethod
    def _public(ev: dict) -> dict:
        return {k: v for k, v in ev.items() if k not in ("embedding", "claimed_at")}

    # -- API
    def advance(
        self,
        stream_id: str,
        seq: int | None,
        embedding: np.ndarray,
        duration_s: float,
        time_s: float | None = None,
        lease_s: float = 30.0,
        detector: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Feed one clip's predicted embedding to the stream's detector.

        `detector`: the settings the calling app serves (as `configure`; carried with each clip
        so a store restarted from its creation arguments still runs the served detector).
        Returns {"clip_index", "time_s", "new": [events with "embedding"], "replayed"} or
        {"error": ..., "status": 409/429/503, "detail": ...}. New events come back claimed by
        the caller (it decodes them); see `claim_pending` for events whose decode failed. The
        clip counts only once written through (503 and no change if storage refuses).
        """
        if detector is not None and detector != self.detector:
            self.configure(detector)
        st = self._stream(stream_id)
        if st is None:
            if len(self.streams) >= self.max_streams:
                return {
                    "status": 429,
                    "error": "too many streams",
                    "detail": f"limit {self.max_streams}",
                }
            st = {
                "det": None,
                "clips": 0,
                "t": 0.0,
                "events": [],
                "outcomes": {},
                "created": time.time(),
            }
        nxt = st["clips"]
        if seq is not None and seq < nxt:
            done = st["outcomes"].get(seq)
            if done is None:
                return {
                    "status": 409,
                    "error": "clip already applied",
                    "detail": f"seq {seq} is too old to replay",
                }
            return {
                **done,
                "new": [],
                "replayed": True,
                "events": [self._public(st["events"][i]) for i in done["event_ids"]],
            }
        if seq is not None and seq > nxt:
            return {
                "status": 409,
                "error": "out of order",
                "detail": f"expected seq {nxt}, got {seq}",
            }
        # The clip's effect is computed on copies and committed only once written through.
        start = st["t"]
        t_mid = float(time_s) if time_s is not None else start + duration_s / 2
        det = self._detector(st["det"])
        point = det.update(np.asarray(embedding, dtype=np.float32), t_mid)
        new = []
        if point is not None:
            new.append(
                {
                    "event_id": len(st["events"]),
                    "clip_index": nxt,
                    "time_s": float(point.time_s),
                    "start": _num(getattr(point, "start", nxt)),
                    "end": _num(getattr(point, "end", nxt + 1)),
                    "caption": None,
                    "status": "pending",
                    "embedding": np.asarray(point.embedding, dtype=np.float32),
                    "claimed_at": time.monotonic(),
                }
            )
        outcome = {"clip_index": nxt, "time_s": t_mid, "event_ids": [e["event_id"] for e in new]}
        outcomes = {k: v for k, v in st["outcomes"].items() if k > nxt - _REPLAY_KEEP}
        outcomes[nxt] = outcome
        after = {
            **st,
            "det": det.state_dict(),
            "clips": nxt + 1,
            "t": max(start + duration_s, t_mid + duration_s / 2),
            "events": st["events"] + new,
            "outcomes": outcomes,
        }
        try:
            for ev in new:
                self._write_event(stream_id, ev)
            self._write_state(stream_id, after)
        except OSError as e:
            log.warning("stream %s: clip %d not written through: %s", stream_id, nxt, e)
            return {
                "status": 503,
                "error": "stream store unavailable",
                "detail": f"cannot write the stream's state: {type(e).__name__}",
            }
        self.streams[stream_id] = after
        return {**outcome, "new": [dict(e) for e in new], "replayed": False}

    def claim_pending(self, stream_id: str, lease_s: float = 30.0) -> list[dict]:
        """Events still without a caption whose last claim is older than `lease_s` (a decode
        that failed or whose ingress died); they are handed to the caller to decode."""
        st = self._stream(stream_id)
        if st is None:
            return []
        now = time.monotonic()
        out = []
        for ev in st["events"]:
            if ev["caption"] is None and now - ev["claimed_at"] >= lease_s:
                ev["claimed_at"] = now
                out.append(dict(ev))
        return out

    def release(self, stream_id: str, event_id: int) -> None:
        """A claim given up (decode failed): the next request may retry at once."""
        st = self._stream(stream_id)
        if st is not None and 0 <= event_id < len(st["events"]):
            st["events"][event_id]["claimed_at"] = float("-inf")

    def set_caption(self, stream_id: str, event_id: int, caption: str) -> dict | None:
        st = self._stream(stream_id)
        if st is None or not 0 <= event_id < len(st["events"]):
            return None
        ev = {**st["events"][event_id], "caption": caption, "status": "decoded"}
        ev.pop("embedding", None)
        try:
            self._write_event(stream_id, ev)
        except OSError as e:
            # Served from memory; a restored store finds the event pending and decodes it again.
            log.warning("stream %s: caption of event %d not written: %s", stream_id, event_id, e)
        st["events"][event_id] = ev
        return self._public(ev)

    def events(self, stream_id: str) -> dict | None:
        st = self._stream(stream_id)
        if st is None:
            return None
        return {
            "stream_id": stream_id,
            "clips": st["clips"],
            "duration_s": st["t"],
            "events": [self._public(e) for e in st["events"]],
        }

    def delete(self, stream_id: str) -> bool:
        """Forget a stream, in memory and in storage (its state first: a half-deleted stream is
        never restored)."""
        known = self.streams.pop(stream_id, None) is not None
        if self.root is not None:
            state_uri = storage.join(self._dir(stream_id), "state.json")
            if storage.exists(state_uri):
                known = True
                storage.delete(state_uri)
            storage.delete(self._dir(stream_id))
        return known

    def wipe(self) -> None:
        """Forget every stream, in memory and in storage (the app is being taken down)."""
        self.streams.clear()
        if self.root is not None:
            storage.delete(self.root)

    def location(self) -> dict[str, str | None]:
        """The configured `stream_store_path` and the folder it resolved to."""
        return {"path": self.path, "root": self.root}

    def stats(self) -> dict[str, int]:
        """Counts over the streams in memory (a restored store loads streams as they are used)."""
        clips = sum(s["clips"] for s in self.streams.values())
        events = sum(len(s["events"]) for s in self.streams.values())
        return {"streams": len(self.streams), "clips": clips, "events": events}

    def configure(self, detector: dict[str, Any]) -> dict[str, Any]:
        """New detector settings (the served model's, or a redeploy with a retuned threshold);
        running streams keep their state and continue under the new settings. Idempotent: every
        ingress replica configures the store it shares with the others."""
        from jepa.selective import OnlineDetectorConfig

        OnlineDetectorConfig(**detector)  # reject bad settings here, not at the next clip
        self.detector = dict(detector)
        return dict(self.detector)

    def settings(self) -> dict[str, Any]:
        """The detector settings new clips are judged with."""
        return dict(self.detector)

    def ping(self) -> bool:
        return True


def _num(x):
    try:
        return float(x) if isinstance(x, float) else int(x)
    except (TypeError, ValueError):
        return None


def get_or_create_store(name: str, detector: dict[str, Any], path: str = ""):
    """The app's store actor (created on first use by whichever ingress replica comes first,
    and again by the next caller after it was killed for good), writing through to `path`."""
    return StreamStore.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(detector, path=path, name=name)


def drop_store(name: str, wipe: bool = True) -> bool:
    """Kill the app's store (after `serve.delete`). `wipe`: forget its streams, stored ones
    included, so a new deployment starts with none (tests, the demo); without it the streams
    stay in `stream_store_path` and the next store on that path goes on with them (a
    `vljepa serve` stopped and started again)."""
    try:
        actor = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    try:
        if wipe:
            ray.get(actor.wipe.remote(), timeout=60)
    except Exception as e:  # a store that cannot answer is still killed
        log.warning("stream store %s not wiped: %s", name, type(e).__name__)
    ray.kill(actor, no_restart=True)
    _wait_until_name_released(name, actor)
    return True


def _wait_until_name_released(name: str, actor) -> None:
    """`ray.kill` only asks the GCS to kill: until the GCS has done so, the name still resolves
    to the dying store, and `get_or_create_store` (get_if_exists) would hand it out to the next
    caller. A call on the handle fails once this process has heard of the store's death from
    the GCS, which frees a detached actor's name as it records the death: so call until one
    fails (a call that arrives before the kill is answered, and the next one is sent)."""
    while True:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            log.warning("stream store %s: still answering 60s after the kill", name)
            return
