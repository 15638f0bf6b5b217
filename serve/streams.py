"""Per-stream state for selective decoding, kept OUTSIDE the ingress replicas.

Serve routes requests without sticky sessions, so consecutive clips of one stream land on any
ingress replica, and a replica may die between two clips. The state therefore lives in one
detached, named Ray actor per app (`StreamStore`): the online detector's state dict, the clip
counter, stream time and the emitted events of every stream. The actor runs one call at a time,
so "update the detector with this clip" is atomic per stream; a client-supplied `seq` gives
strict per-stream ordering (409 on a gap) and makes a retried clip idempotent (the stored
outcome is replayed, the detector is not advanced twice).

The store is in memory: it survives ingress and Decoder replica deaths, not the loss of the node
holding it (a restarted store starts empty; documented limitation).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import ray

NAMESPACE = "vljepa"
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_REPLAY_KEEP = 256  # outcomes remembered per stream for idempotent retries


def store_name(app_name: str, explicit: str = "") -> str:
    return explicit or f"vljepa-streams-{app_name}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StreamStore:
    def __init__(self, detector: dict[str, Any], max_streams: int = 10000):
        self.detector = dict(detector)
        self.max_streams = max_streams
        self.streams: dict[str, dict[str, Any]] = {}

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
        {"error": ..., "status": 409/429, "detail": ...}. New events come back claimed by the
        caller (it decodes them); see `claim_pending` for events whose decode failed.
        """
        if detector is not None and detector != self.detector:
            self.configure(detector)
        st = self.streams.get(stream_id)
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
            self.streams[stream_id] = st
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
        start = st["t"]
        t_mid = float(time_s) if time_s is not None else start + duration_s / 2
        st["t"] = max(start + duration_s, t_mid + duration_s / 2)
        det = self._detector(st["det"])
        point = det.update(np.asarray(embedding, dtype=np.float32), t_mid)
        st["det"] = det.state_dict()
        new = []
        if point is not None:
            ev = {
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
            st["events"].append(ev)
            new.append(dict(ev))
        st["clips"] = nxt + 1
        outcome = {"clip_index": nxt, "time_s": t_mid, "event_ids": [e["event_id"] for e in new]}
        st["outcomes"][nxt] = outcome
        st["outcomes"].pop(nxt - _REPLAY_KEEP, None)
        return {**outcome, "new": new, "replayed": False}

    def claim_pending(self, stream_id: str, lease_s: float = 30.0) -> list[dict]:
        """Events still without a caption whose last claim is older than `lease_s` (a decode
        that failed or whose ingress died); they are handed to the caller to decode."""
        st = self.streams.get(stream_id)
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
        st = self.streams.get(stream_id)
        if st is not None and 0 <= event_id < len(st["events"]):
            st["events"][event_id]["claimed_at"] = float("-inf")

    def set_caption(self, stream_id: str, event_id: int, caption: str) -> dict | None:
        st = self.streams.get(stream_id)
        if st is None or not 0 <= event_id < len(st["events"]):
            return None
        ev = st["events"][event_id]
        ev["caption"] = caption
        ev["status"] = "decoded"
        ev.pop("embedding", None)
        return self._public(ev)

    def events(self, stream_id: str) -> dict | None:
        st = self.streams.get(stream_id)
        if st is None:
            return None
        return {
            "stream_id": stream_id,
            "clips": st["clips"],
            "duration_s": st["t"],
            "events": [self._public(e) for e in st["events"]],
        }

    def delete(self, stream_id: str) -> bool:
        return self.streams.pop(stream_id, None) is not None

    def stats(self) -> dict[str, int]:
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


def get_or_create_store(name: str, detector: dict[str, Any]):
    """The app's store actor (created on first use by whichever ingress replica comes first)."""
    return StreamStore.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(detector)


def drop_store(name: str) -> bool:
    """Kill the app's store (after `serve.delete`), so a new deployment starts with no streams."""
    try:
        actor = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.kill(actor, no_restart=True)
    return True
