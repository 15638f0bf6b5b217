"""The corpus job: plan clips and streams, render+encode them in a process pool, write the layout.

Layout under `out` (local directory or s3://bucket/prefix):
    videos/<id>.mp4, streams/<id>.mp4, manifest.jsonl, streams.jsonl, labels.json,
    shards/shard-NNNNN.tar (with --webdataset), and `_SUCCESS` written last.
A reader must treat a corpus without `_SUCCESS` as incomplete: it is removed first on --overwrite
and only written after every other object, so a failed or interrupted run never looks finished.
Every clip is a pure function of (seed, id), so any number of workers gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines import storage

from .events import CLASSES
from .render import event_params, event_track, make_scene, render
from .writer import build_tar, encode_mp4, shard_members

logger = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
# Every name the job writes; an `out` holding any of them already has a (maybe partial) corpus.
OWNED = (SUCCESS, "manifest.jsonl", "streams.jsonl", "labels.json", "videos", "streams", "shards")


class OutputError(Exception):
    """The output location cannot be used (unwritable, or holds a corpus and no --overwrite)."""


class SynthConfig(BaseModel):
    """Everything that decides the corpus; the same config (minus out/workers) gives the same bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: str = Field(min_length=1, description="local directory or s3://bucket/prefix")
    clips: int = Field(200, ge=1, description="short captioned clips")
    streams: int = Field(5, ge=0, description="long videos of consecutive events")
    seed: int = Field(0, ge=0)
    size: int = Field(128, ge=32, le=1024, description="frame side in px (multiple of 16)")
    fps: int = Field(8, ge=1, le=60)
    clip_seconds: float = Field(2.0, gt=0, le=60)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    webdataset: bool = False
    shard_size: int = Field(100, ge=1, le=9999, description="clips per WebDataset tar")
    overwrite: bool = False
    workers: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=1, le=256)
    stream_events_min: int = Field(6, ge=1)
    stream_events_max: int = Field(10, ge=1)
    event_clips_min: int = Field(3, ge=1, description="an event in a stream lasts this many clips")
    event_clips_max: int = Field(6, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> SynthConfig:
        if self.size % 16:
            raise ValueError(f"size must be a multiple of 16, got {self.size}")
        frames = self.fps * self.clip_seconds
        if abs(frames - round(frames)) > 1e-6 or round(frames) < 2:
            raise ValueError(
                f"fps * clip_seconds must be a whole number of frames >= 2, got {frames:g}"
            )
        if self.stream_events_min > self.stream_events_max:
            raise ValueError("stream_events_min must be <= stream_events_max")
        if self.event_clips_min > self.event_clips_max:
            raise ValueError("event_clips_min must be <= event_clips_max")
        return self

    @property
    def frames(self) -> int:
        return round(self.fps * self.clip_seconds)


@dataclass(frozen=True)
class SynthSummary:
    clips: int
    streams: int
    seconds: float
    clips_per_s: float
    out: str
    train: int = 0
    val: int = 0
    classes: int = 0
    stream_events: int = 0
    bytes: int = 0

    def line(self) -> str:
        return (
            f"wrote {self.clips} clips ({self.train} train / {self.val} val, {self.classes} classes)"
            f" and {self.streams} streams ({self.stream_events} events) to {self.out}"
            f" in {self.seconds:.1f} s ({self.clips_per_s:.1f} clips/s, {self.bytes / 1e6:.1f} MB)"
        )


# ---------------------------------------------------------------- planning (parent process)


def plan_clips(cfg: SynthConfig) -> list[dict]:
    """Manifest records: classes balanced (rounds of a fresh permutation), split per class."""
    rng = np.random.default_rng([cfg.seed, 2])
    n_cls = len(CLASSES)
    rounds = math.ceil(cfg.clips / n_cls)
    labels = np.concatenate([rng.permutation(n_cls) for _ in range(rounds)])[: cfg.clips]
    val = np.zeros(cfg.clips, bool)
    for c in range(n_cls):
        idx = np.flatnonzero(labels == c)
        n_val = round(len(idx) * cfg.val_fraction)
        if cfg.val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val[rng.permutation(idx)[:n_val]] = True
    records = []
    for i, c in enumerate(labels.tolist()):
        cls = CLASSES[c]
        cid = f"clip-{i:06d}"
        records.append(
            {
                "id": cid,
                "video": f"videos/{cid}.mp4",
                "start": 0.0,
                "end": cfg.frames / cfg.fps,
                "caption": cls.caption,
                "paraphrases": list(cls.paraphrases),
                "label": cls.label,
                "event": cls.label,
                "class_index": cls.index,
                "split": "val" if val[i] else "train",
                "frames": cfg.frames,
                "fps": cfg.fps,
                "size": cfg.size,
            }
        )
    return records


# ---------------------------------------------------------------- work (worker processes)


@dataclass(frozen=True)
class _Task:
    kind: str  # "clip" | "stream"
    seed: int
    index: int
    size: int
    fps: int
    frames: int
    class_index: int = -1
    events: tuple[int, int] = (6, 10)
    event_clips: tuple[int, int] = (3, 6)


def _render_clip(t: _Task) -> tuple[bytes, None]:
    rng = np.random.default_rng([t.seed, 0, t.index])
    cls = CLASSES[t.class_index]
    scene = make_scene(rng, t.size)
    track = event_track(cls, event_params(cls, rng, t.size), rng, t.size, t.frames)
    return encode_mp4(render(scene, track, rng), t.fps), None


def _render_stream(t: _Task) -> tuple[bytes, dict]:
    """One room, events back to back; each event repeats its clip-length action 3-6 times, so
    every clip-aligned window inside an event looks like a training clip of that class."""
    rng = np.random.default_rng([t.seed, 1, t.index])
    scene = make_scene(rng, t.size)
    n_events = int(rng.integers(t.events[0], t.events[1] + 1))
    chunks: list[np.ndarray] = []
    events: list[dict] = []
    prev = -1
    offset = 0
    for _ in range(n_events):
        if prev < 0:
            c = int(rng.integers(len(CLASSES)))
        else:  # never the same class twice in a row
            c = int(rng.integers(len(CLASSES) - 1))
            c = c + 1 if c >= prev else c
        prev = c
        cls = CLASSES[c]
        params = event_params(cls, rng, t.size)
        repeats = int(rng.integers(t.event_clips[0], t.event_clips[1] + 1))
        start = offset
        for _ in range(repeats):
            track = event_track(cls, params, rng, t.size, t.frames)
            chunks.append(render(scene, track, rng, frame_offset=offset))
            offset += t.frames
        events.append(
            {
                "start": start / t.fps,
                "end": offset / t.fps,
                "caption": cls.caption,
                "paraphrases": list(cls.paraphrases),
                "label": cls.label,
                "class_index": cls.index,
            }
        )
    sid = f"stream-{t.index:04d}"
    record = {
        "id": sid,
        "video": f"streams/{sid}.mp4",
        "duration": offset / t.fps,
        "fps": t.fps,
        "frames": offset,
        "size": t.size,
        "events": events,
    }
    return encode_mp4(np.concatenate(chunks), t.fps, gop=t.frames), record


def run_task(t: _Task) -> tuple[bytes, dict | None]:
    return _render_stream(t) if t.kind == "stream" else _render_clip(t)


def _results(tasks: list[_Task], workers: int) -> Iterator[tuple[bytes, dict | None]]:
    if workers <= 1:
        yield from map(run_task, tasks)
        return
    # spawn, not fork: the caller may hold Ray/torch threads, which fork copies in a broken state.
    ctx = multiprocessing.get_context("spawn")
    streams = [t for t in tasks if t.kind == "stream"]
    clips = [t for t in tasks if t.kind != "stream"]
    if tasks != streams + clips:
        raise ValueError("streams must come before clips")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        try:
            # Both maps submit at once; long streams go one per task, clips in small batches to
            # keep the parent's pickling/IPC per clip low.
            first = pool.map(run_task, streams, chunksize=1)
            rest = pool.map(run_task, clips, chunksize=8)
            yield from first
            yield from rest
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# ---------------------------------------------------------------- output


def prepare_output(cfg: SynthConfig) -> None:
    """Fail before any work if `out` is unusable; on --overwrite drop `_SUCCESS` first."""
    try:
        present = [name for name in OWNED if storage.exists(storage.join(cfg.out, name))]
    except OSError as e:
        raise OutputError(f"cannot read {cfg.out}: {_first_line(e)}") from e
    if present and not cfg.overwrite:
        state = "a complete" if SUCCESS in present else "an incomplete"
        raise OutputError(f"{cfg.out} already holds {state} corpus; pass --overwrite to replace it")
    try:
        storage.check_writable(cfg.out)
        for name in present:  # _SUCCESS is first in OWNED: never a stale marker over new files
            storage.delete(storage.join(cfg.out, name))
    except OSError as e:
        raise OutputError(f"cannot write to {cfg.out}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")


def generate(cfg: SynthConfig, progress: bool = False) -> SynthSummary:
    """Write the corpus described by `cfg`; returns counts and throughput."""
    t_start = time.perf_counter()
    prepare_output(cfg)
    clips = plan_clips(cfg)
    common = {"seed": cfg.seed, "size": cfg.size, "fps": cfg.fps, "frames": cfg.frames}
    spans = {
        "events": (cfg.stream_events_min, cfg.stream_events_max),
        "event_clips": (cfg.event_clips_min, cfg.event_clips_max),
    }
    # Streams first: they are the longest tasks, so the pool does not end on a straggler.
    tasks = [_Task("stream", index=i, **common, **spans) for i in range(cfg.streams)]
    tasks += [
        _Task("clip", index=i, class_index=r["class_index"], **common) for i, r in enumerate(clips)
    ]
    logger.info(
        "synth: %d clips, %d streams, %d classes, %dpx @ %d fps, %d workers -> %s",
        cfg.clips, cfg.streams, len(CLASSES), cfg.size, cfg.fps, cfg.workers, cfg.out,
    )  # fmt: skip

    streams: list[dict] = []
    videos: list[bytes] = []  # kept only for the WebDataset shards
    total_bytes = 0
    bar = _progress(len(tasks), progress)
    with ThreadPoolExecutor(max_workers=4) as io_pool:
        pending: list[Future] = []

        def put(rel: str, data: bytes) -> None:
            nonlocal total_bytes
            total_bytes += len(data)
            pending.append(io_pool.submit(storage.write_bytes, storage.join(cfg.out, rel), data))
            if len(pending) > 64:
                _drain(pending, keep=32)

        for task, (data, record) in zip(tasks, _results(tasks, cfg.workers), strict=True):
            if task.kind == "stream":
                streams.append(record)
                put(record["video"], data)
            else:
                put(clips[task.index]["video"], data)
                if cfg.webdataset:
                    videos.append(data)
            bar(1)
        _drain(pending, keep=0)

        put("manifest.jsonl", _jsonl(clips))
        put("streams.jsonl", _jsonl(streams))
        labels = [c.to_json() for c in CLASSES]
        put("labels.json", (json.dumps(labels, indent=1, sort_keys=True) + "\n").encode())
        n_shards = 0
        if cfg.webdataset:
            for n_shards, lo in enumerate(range(0, len(clips), cfg.shard_size), start=1):
                hi = lo + cfg.shard_size
                members = shard_members(n_shards - 1, clips[lo:hi], videos[lo:hi])
                put(f"shards/shard-{n_shards - 1:05d}.tar", build_tar(members))
        _drain(pending, keep=0)
    bar(0, close=True)

    n_val = sum(r["split"] == "val" for r in clips)
    n_events = sum(len(s["events"]) for s in streams)
    success = {
        "clips": len(clips),
        "train": len(clips) - n_val,
        "val": n_val,
        "streams": len(streams),
        "stream_events": n_events,
        "classes": len(CLASSES),
        "shards": n_shards,
        "config": cfg.model_dump(),
    }
    storage.write_bytes(  # last: the marker that the corpus is complete
        storage.join(cfg.out, SUCCESS),
        (json.dumps(success, indent=1, sort_keys=True) + "\n").encode(),
    )
    seconds = time.perf_counter() - t_start
    summary = SynthSummary(
        clips=len(clips),
        streams=len(streams),
        seconds=round(seconds, 3),
        clips_per_s=round(len(clips) / seconds, 2),
        out=cfg.out,
        train=len(clips) - n_val,
        val=n_val,
        classes=len(CLASSES),
        stream_events=n_events,
        bytes=total_bytes,
    )
    logger.info("synth: %s", summary.line())
    return summary


def _drain(pending: list[Future], keep: int) -> None:
    """Wait for the oldest writes (raising their errors) until at most `keep` are in flight."""
    while len(pending) > keep:
        pending.pop(0).result()


def _progress(total: int, enabled: bool) -> Callable[..., None]:
    if not enabled:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="video", desc="synth", dynamic_ncols=True)

    def update(n: int, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()

    return update
