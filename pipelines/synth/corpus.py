"""The corpus job: plan clips and streams, render+encode them in a process pool, write the layout.

Layout under `out` (local directory or s3://bucket/prefix):
    videos/<id>.mp4, streams/<id>.mp4, manifest.jsonl, streams.jsonl, labels.json,
    questions.jsonl (questions.py), worldprediction.jsonl + worldprediction/*.png
    (worldprediction.py), shards/shard-NNNNN.tar (with --webdataset; the question and
    WorldPrediction files stay at the top, keyed by clip id), and `_SUCCESS` written last.
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

from . import worldprediction as wp
from .events import CLASSES
from .questions import build_questions
from .render import event_params, event_track, make_scene, render, still_track, stream_track
from .writer import build_tar, encode_mp4, shard_members

logger = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
# Every name the job writes; an `out` holding any of them already has a (maybe partial) corpus.
OWNED = (
    SUCCESS, "manifest.jsonl", "streams.jsonl", "labels.json", "videos", "streams", "shards",
    "questions.jsonl", "worldprediction.jsonl", "worldprediction",
)  # fmt: skip


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
    event_seconds_min: float = Field(3.0, gt=0, description="a stream event lasts at least this")
    event_seconds_max: float = Field(12.0, gt=0, description="and at most this (drawn uniformly)")
    pause_probability: float = Field(
        0.5, ge=0, le=1, description="chance of a pause (a still scene) between two events"
    )
    pause_seconds_min: float = Field(2.0, gt=0)
    pause_seconds_max: float = Field(6.0, gt=0)
    worldprediction: int = Field(
        200, ge=0, description="WorldPrediction-style items (one per val clip, at most this many)"
    )

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
        if self.event_seconds_min > self.event_seconds_max:
            raise ValueError("event_seconds_min must be <= event_seconds_max")
        if round(self.event_seconds_min * self.fps) < 2:
            raise ValueError("fps * event_seconds_min must be >= 2 frames")
        if self.pause_seconds_min > self.pause_seconds_max:
            raise ValueError("pause_seconds_min must be <= pause_seconds_max")
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
    stream_pauses: int = 0
    bytes: int = 0
    questions: int = 0
    worldprediction: int = 0

    def line(self) -> str:
        return (
            f"wrote {self.clips} clips ({self.train} train / {self.val} val, {self.classes} classes)"
            f" and {self.streams} streams ({self.stream_events} events, {self.stream_pauses} pauses)"
            f", {self.questions} questions, {self.worldprediction} WorldPrediction items"
            f" to {self.out}"
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
    event_frames: tuple[int, int] = (24, 96)
    pause_probability: float = 0.5
    pause_frames: tuple[int, int] = (16, 48)
    stills: bool = False  # also return the first and last frame as PNG (WorldPrediction)


def _render_clip(t: _Task) -> tuple[bytes, dict | None]:
    rng = np.random.default_rng([t.seed, 0, t.index])
    cls = CLASSES[t.class_index]
    scene = make_scene(rng, t.size)
    track = event_track(cls, event_params(cls, rng, t.size), rng, t.size, t.frames)
    frames = render(scene, track, rng)
    stills = {"initial": wp.png(frames[0]), "final": wp.png(frames[-1])} if t.stills else None
    return encode_mp4(frames, t.fps), stills


def _render_stream(t: _Task) -> tuple[bytes, dict]:
    """One room, events of varied length (a whole number of frames drawn from `event_frames`),
    each one action spread over its own duration (`render.stream_track`: nothing inside an
    event repeats), and between some of them a pause: the scene held still in the state the
    event left it, with no event and no caption. Boundaries are exact to the frame; events go
    in `events`, pauses in `pauses`, and together they tile the stream. The last event is
    lengthened by less than a clip so the stream lasts a whole number of clips."""
    rng = np.random.default_rng([t.seed, 1, t.index])
    scene = make_scene(rng, t.size)
    n_events = int(rng.integers(t.events[0], t.events[1] + 1))
    chunks: list[np.ndarray] = []
    events: list[dict] = []
    pauses: list[dict] = []
    prev = -1
    offset = 0
    for k in range(n_events):
        if prev < 0:
            c = int(rng.integers(len(CLASSES)))
        else:  # never the same class twice in a row
            c = int(rng.integers(len(CLASSES) - 1))
            c = c + 1 if c >= prev else c
        prev = c
        cls = CLASSES[c]
        params = event_params(cls, rng, t.size)
        n = int(rng.integers(t.event_frames[0], t.event_frames[1] + 1))
        if k + 1 == n_events:  # end on a whole clip, so a stream cut into clips loses no frame
            n += -(offset + n) % t.frames
        track = stream_track(cls, params, rng, t.size, n)
        chunks.append(render(scene, track, rng, frame_offset=offset))
        events.append(
            {
                "start": offset / t.fps,
                "end": (offset + n) / t.fps,
                "caption": cls.caption,
                "paraphrases": list(cls.paraphrases),
                "label": cls.label,
                "class_index": cls.index,
            }
        )
        offset += n
        if k + 1 < n_events and rng.random() < t.pause_probability:
            m = int(rng.integers(t.pause_frames[0], t.pause_frames[1] + 1))
            chunks.append(render(scene, still_track(track, m), rng, frame_offset=offset))
            pauses.append({"start": offset / t.fps, "end": (offset + m) / t.fps})
            offset += m
    sid = f"stream-{t.index:04d}"
    record = {
        "id": sid,
        "video": f"streams/{sid}.mp4",
        "duration": offset / t.fps,
        "fps": t.fps,
        "frames": offset,
        "size": t.size,
        "events": events,
        "pauses": pauses,
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
    questions = build_questions(clips, cfg.seed)
    wp_index = wp.selected(clips, cfg.worldprediction)
    wp_items = wp.build_items(clips, wp_index, cfg.seed)
    stills = {r["clip_id"] for r in wp_items}
    common = {"seed": cfg.seed, "size": cfg.size, "fps": cfg.fps, "frames": cfg.frames}
    spans = {
        "events": (cfg.stream_events_min, cfg.stream_events_max),
        "event_frames": (
            round(cfg.event_seconds_min * cfg.fps),
            round(cfg.event_seconds_max * cfg.fps),
        ),
        "pause_probability": cfg.pause_probability,
        "pause_frames": (
            max(1, round(cfg.pause_seconds_min * cfg.fps)),
            max(1, round(cfg.pause_seconds_max * cfg.fps)),
        ),
    }
    # Streams first: they are the longest tasks, so the pool does not end on a straggler.
    tasks = [_Task("stream", index=i, **common, **spans) for i in range(cfg.streams)]
    tasks += [
        _Task("clip", index=i, class_index=r["class_index"], stills=r["id"] in stills, **common)
        for i, r in enumerate(clips)
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
                clip_id = clips[task.index]["id"]
                put(clips[task.index]["video"], data)
                if record is not None:
                    initial, final = wp.image_paths(clip_id)
                    put(initial, record["initial"])
                    put(final, record["final"])
                if cfg.webdataset:
                    videos.append(data)
            bar(1)
        _drain(pending, keep=0)

        put("manifest.jsonl", _jsonl(clips))
        put("streams.jsonl", _jsonl(streams))
        put("questions.jsonl", _jsonl(questions))
        put("worldprediction.jsonl", _jsonl(wp_items))
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
    n_pauses = sum(len(s["pauses"]) for s in streams)
    success = {
        "clips": len(clips),
        "train": len(clips) - n_val,
        "val": n_val,
        "streams": len(streams),
        "stream_events": n_events,
        "stream_pauses": n_pauses,
        "classes": len(CLASSES),
        "shards": n_shards,
        "questions": len(questions),
        "worldprediction": len(wp_items),
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
        stream_pauses=n_pauses,
        bytes=total_bytes,
        questions=len(questions),
        worldprediction=len(wp_items),
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
