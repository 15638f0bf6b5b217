"""`vljepa synth`: every mp4 decodes with decord, and the captioned event is visible in the pixels.

The corpus is real: H.264 files written by the CLI in a subprocess, decoded back with decord, and
checked with simple pixel measurements (centroid, area, hue of the saturated object; scene
brightness) that would fail if a caption described something the video does not show.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest

from pipelines import storage
from pipelines.synth import BY_LABEL, CLASSES, OutputError, SynthConfig, generate, plan_clips
from pipelines.synth.events import COLOURS

SIZE = 128
FPS = 8
FRAMES = 16
STOP = {"the", "a", "an", "one", "to", "from", "of", "into", "its", "over", "across", "out"}


# ------------------------------------------------------------------ helpers


def decode(path: str | Path) -> np.ndarray:
    vr = decord.VideoReader(str(path), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def object_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels of the coloured ball: strongly saturated (the room, lamp and square are near-grey)."""
    f = frame.astype(np.int16)
    return (f.max(axis=-1) - f.min(axis=-1)) > 90


def area(frame: np.ndarray) -> float:
    return float(object_mask(frame).mean())


def centroid_x(frame: np.ndarray) -> float:
    return float(np.nonzero(object_mask(frame))[1].mean())


def colour_of(frame: np.ndarray) -> str:
    rgb = frame[object_mask(frame)].astype(np.float32).mean(axis=0)
    return min(COLOURS, key=lambda c: float(np.sum((rgb - np.array(COLOURS[c])) ** 2)))


def check_event(label: str, frames: np.ndarray) -> None:
    """Assert that the event of class `label` happens in `frames` (one clip's worth)."""
    cls = BY_LABEL[label]
    first, last = frames[0], frames[-1]
    kind = cls.kind
    if kind == "moves_left":
        assert centroid_x(first) - centroid_x(last) > 0.3 * SIZE, label
    elif kind == "moves_right":
        assert centroid_x(last) - centroid_x(first) > 0.3 * SIZE, label
    elif kind == "grows":
        assert area(last) > 3 * area(first), label
    elif kind == "vanishes":
        assert area(first) > 0.04 and area(last) < 0.002, label
    elif kind == "appears":
        assert area(first) < 0.002 and area(last) > 0.04, label
    elif kind == "colour_change":
        assert (colour_of(first), colour_of(last)) == (cls.colour, cls.colour_to), label
    elif kind == "lamp_off":
        assert last.mean() < 0.6 * first.mean(), label
    elif kind == "lamp_on":
        assert first.mean() < 0.6 * last.mean(), label
    else:
        raise AssertionError(f"no pixel check for {kind}")
    if cls.colour and kind != "colour_change":
        visible = first if area(first) > area(last) else last
        assert colour_of(visible) == cls.colour, label


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ the CLI corpus (acceptance 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Exactly the acceptance command (plus --webdataset), as a real subprocess."""
    out = tmp_path_factory.mktemp("synth") / "corpus"
    proc = _vljepa("synth", "--out", str(out), "--clips", "200", "--streams", "5", "--webdataset")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 200 clips" in proc.stdout
    return out


def _cmd() -> list[str]:
    """The installed `vljepa` script (`python -m cluster.cli` as a fallback)."""
    script = Path(sys.executable).parent / "vljepa"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cluster.cli"]


def _vljepa(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        **kw,
    )


def test_every_clip_decodes_and_shows_its_event(corpus: Path) -> None:
    records = read_jsonl(corpus / "manifest.jsonl")
    assert len(records) == 200
    assert sorted(p.name for p in (corpus / "videos").iterdir()) == sorted(
        Path(r["video"]).name for r in records
    )
    for r in records:
        assert not os.path.isabs(r["video"]) and r["video"].startswith("videos/")
        frames = decode(corpus / r["video"])
        assert frames.shape == (FRAMES, SIZE, SIZE, 3), r["id"]
        assert r["end"] - r["start"] == pytest.approx(FRAMES / FPS)
        assert r["event"] == r["label"] and r["caption"] == BY_LABEL[r["label"]].caption
        check_event(r["label"], frames)


def test_classes_balanced_and_val_has_every_class(corpus: Path) -> None:
    records = read_jsonl(corpus / "manifest.jsonl")
    labels = json.loads((corpus / "labels.json").read_text())
    assert [x["label"] for x in labels] == [c.label for c in CLASSES]
    assert len({x["caption"] for x in labels}) == len(labels) >= 20
    counts = Counter(r["label"] for r in records)
    assert set(counts) == set(BY_LABEL) and max(counts.values()) - min(counts.values()) <= 1
    for split in ("train", "val"):
        per = Counter(r["label"] for r in records if r["split"] == split)
        assert set(per) == set(BY_LABEL), split
        assert max(per.values()) - min(per.values()) <= 1, split
    n_val = sum(r["split"] == "val" for r in records)
    assert 0.15 * len(records) <= n_val <= 0.3 * len(records)
    success = json.loads((corpus / "_SUCCESS").read_text())
    assert success["clips"] == 200 and success["streams"] == 5 and success["val"] == n_val


def test_paraphrases_share_meaning_not_words(corpus: Path) -> None:
    for r in read_jsonl(corpus / "manifest.jsonl")[:40]:
        paras = r["paraphrases"]
        assert len(paras) >= 3 and len(set(paras)) == len(paras)
        caption_words = set(r["caption"].split()) - STOP
        for p in paras:
            assert p != r["caption"]
            assert not (set(p.split()) & caption_words), (r["caption"], p)


def _progress(label: str, frames: np.ndarray) -> np.ndarray:
    """How far an event's one change has gone, per frame (rising from start to end): the
    ball's position, size, saturation or colour, or the room's brightness."""
    kind = BY_LABEL[label].kind
    if kind in ("moves_left", "moves_right"):
        x = np.array([centroid_x(f) for f in frames])
        return -x if kind == "moves_left" else x
    if kind == "grows":
        return np.array([area(f) for f in frames])
    if kind in ("vanishes", "appears"):  # a fade: the ball's saturation over the whole frame
        f = frames.astype(np.int16)
        sat = (f.max(axis=-1) - f.min(axis=-1)).reshape(len(frames), -1)
        level = np.where(sat > 60, sat, 0).mean(axis=1)
        return -level if kind == "vanishes" else level
    if kind == "colour_change":  # a blend, on the pixels of the (still) ball
        cls = BY_LABEL[label]
        a, b = np.array(COLOURS[cls.colour], float), np.array(COLOURS[cls.colour_to], float)
        ball = object_mask(frames[0])
        rgb = np.array([f[ball].astype(float).mean(axis=0) for f in frames])
        return (rgb - a) @ (b - a) / float((b - a) @ (b - a))
    brightness = frames.reshape(len(frames), -1).mean(axis=1)  # the lamp: a dimmer
    return -brightness if kind == "lamp_off" else brightness


def test_streams_have_exact_ground_truth_visible_in_pixels(corpus: Path) -> None:
    """Events of varied length with pauses between some of them; events and pauses tile the
    stream exactly (to the frame) and the stream is a whole number of 2 s clips."""
    streams = read_jsonl(corpus / "streams.jsonl")
    assert len(streams) == 5
    for s in streams:
        frames = decode(corpus / s["video"])
        assert frames.shape == (s["frames"], SIZE, SIZE, 3)
        assert s["duration"] == pytest.approx(len(frames) / s["fps"])
        assert s["frames"] % FRAMES == 0  # cut into 2 s clips, no frame is left over
        events, pauses = s["events"], s["pauses"]
        assert 6 <= len(events) <= 10
        spans = sorted([("event", e) for e in events] + [("pause", p) for p in pauses],
                       key=lambda x: x[1]["start"])  # fmt: skip
        assert spans[0][0] == spans[-1][0] == "event"  # pauses only between events
        assert spans[0][1]["start"] == 0 and spans[-1][1]["end"] == pytest.approx(s["duration"])
        for (ka, a), (kb, b) in zip(spans, spans[1:], strict=False):
            assert a["end"] == b["start"] and not (ka == kb == "pause")
        for a, b in zip(events, events[1:], strict=False):
            assert a["label"] != b["label"]
        for i, e in enumerate(events):
            length = e["end"] - e["start"]
            longest = 12 + (2 if i == len(events) - 1 else 0)  # the last ends on a whole clip
            assert 3 <= length < longest + 1e-9 and len(e["paraphrases"]) >= 3
            assert (e["start"] * FPS).is_integer() and (e["end"] * FPS).is_integer()
            lo, hi = round(e["start"] * FPS), round(e["end"] * FPS)
            check_event(e["label"], frames[lo:hi])  # its first and last frames show the change
        for p in pauses:  # no caption: nothing happens
            assert set(p) == {"start", "end"} and 2 <= p["end"] - p["start"] <= 6
            lo, hi = round(p["start"] * FPS), round(p["end"] * FPS)
            light = frames[lo:hi].reshape(hi - lo, -1).mean(axis=1)
            assert np.ptp(light) < 1.5, p  # the room's light holds (noise, the grey square)
            assert np.ptp([area(f) for f in frames[lo:hi]]) < 0.003, p  # the ball holds
            before = frames[lo - 1]  # the scene holds the state the event before ended in
            assert abs(area(before) - area(frames[lo])) < 0.003, p


def test_stream_events_vary_in_length_and_never_repeat_inside(corpus: Path) -> None:
    """The paper's protocol: no event is a 2 s action repeated. Lengths vary and mostly do not
    fall on the 2 s clip grid; inside an event its change runs once, from the first frame to
    the last (monotonic progress sampled every 0.5 s), so no window repeats an earlier one."""
    streams = read_jsonl(corpus / "streams.jsonl")
    lengths = [e["end"] - e["start"] for s in streams for e in s["events"]]
    assert len(set(lengths)) >= 0.6 * len(lengths), lengths
    off_grid = [x for x in lengths if not (x / 2).is_integer()]
    assert len(off_grid) >= 0.5 * len(lengths), lengths
    assert max(lengths) - min(lengths) >= 5, lengths
    assert sum(len(s["pauses"]) for s in streams) >= 3  # pauses present
    for s in streams:
        frames = decode(corpus / s["video"])
        for e in s["events"]:
            lo, hi = round(e["start"] * FPS), round(e["end"] * FPS)
            idx = np.unique(np.r_[np.arange(lo, hi, FPS // 2), hi - 1])
            prog = _progress(e["label"], frames[idx])
            span = prog[-1] - prog[0]
            assert span > 0, (e["label"], prog)
            steps = np.diff(prog)
            assert (steps >= -0.05 * span).all(), (e["label"], prog.round(3))
            # spread over the whole event: no 2 s stretch carries the whole change
            assert steps.max() < 0.9 * span, (e["label"], prog.round(3))


def test_webdataset_shards_in_video2dataset_layout(corpus: Path) -> None:
    records = read_jsonl(corpus / "manifest.jsonl")
    shards = sorted((corpus / "shards").iterdir())
    assert [p.name for p in shards] == ["shard-00000.tar", "shard-00001.tar"]
    seen = 0
    for shard_id, path in enumerate(shards):
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len(names) % 3 == 0
            for i in range(0, len(names), 3):
                key = f"{shard_id:05d}{i // 3:04d}"
                assert names[i : i + 3] == [f"{key}.mp4", f"{key}.txt", f"{key}.json"]
                meta = json.loads(tar.extractfile(names[i + 2]).read())
                rec = records[seen]
                assert meta["key"] == key and meta["id"] == rec["id"]
                assert tar.extractfile(names[i + 1]).read().decode() == rec["caption"]
                mp4 = tar.extractfile(names[i]).read()
                assert mp4 == (corpus / rec["video"]).read_bytes()
                seen += 1
    assert seen == len(records)
    # and one member decodes straight from the tar bytes
    with tarfile.open(shards[1]) as tar:
        vr = decord.VideoReader(
            io.BytesIO(tar.extractfile(tar.getnames()[0]).read()), num_threads=1
        )
        assert len(vr) == FRAMES


# ------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_any_worker_count(synth_corpus: Path, tmp_path: Path) -> None:
    """The session corpus (2 workers) regenerated in one process is identical, pixels included."""
    again = tmp_path / "again"
    generate(SynthConfig(out=str(again), clips=40, streams=2, seed=0, workers=1))
    for name in ("manifest.jsonl", "streams.jsonl", "labels.json"):
        assert (again / name).read_bytes() == (synth_corpus / name).read_bytes(), name
    for r in read_jsonl(again / "manifest.jsonl")[:10] + read_jsonl(again / "streams.jsonl"):
        assert np.array_equal(decode(again / r["video"]), decode(synth_corpus / r["video"]))
    other = plan_clips(SynthConfig(out=str(tmp_path / "x"), clips=40, seed=1))
    assert [r["label"] for r in other] != [r["label"] for r in read_jsonl(again / "manifest.jsonl")]


# ------------------------------------------------------------------ bad input (acceptance 4)


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--clips", "-5"], "clips"),
        (["--streams", "-1"], "streams"),
        (["--size", "100"], "multiple of 16"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], reason: str) -> None:
    out = tmp_path / "corpus"
    proc = _vljepa("synth", "--out", str(out), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], proc.stderr
    assert not out.exists()


def test_unwritable_output_exit_2_and_nothing_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = _vljepa("synth", "--out", str(blocker / "corpus"), "--clips", "4")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0], proc.stderr
    assert blocker.read_text() == "not a directory"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_overwrite_leaves_no_success(tmp_path: Path) -> None:
    """An existing corpus is refused without --overwrite; an interrupted overwrite never looks
    complete, and a rerun then reports the corpus as incomplete."""
    out = tmp_path / "corpus"
    generate(SynthConfig(out=str(out), clips=4, streams=0, workers=1))
    assert (out / "_SUCCESS").exists()
    refused = _vljepa("synth", "--out", str(out), "--clips", "4", "--streams", "0")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert (out / "_SUCCESS").exists()

    proc = subprocess.Popen(
        [*_cmd(), "synth", "--out", str(out), "--clips", "3000",
         "--streams", "0", "--workers", "1", "--overwrite"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        # Ctrl-C as at a terminal: a suite started in the background (`make test &`) ignores
        # SIGINT, and its children would inherit that and never see the signal.
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "videos" / "clip-000010.mp4").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        assert not (out / "_SUCCESS").exists()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, err
    assert not (out / "_SUCCESS").exists()
    rerun = _vljepa("synth", "--out", str(out), "--clips", "4")
    assert rerun.returncode == 2 and "incomplete" in rerun.stderr


# ------------------------------------------------------------------ S3


def test_s3_output_round_trip(s3) -> None:
    out = s3.uri(f"synth-{uuid.uuid4().hex[:8]}")
    cfg = SynthConfig(
        out=out, clips=6, streams=1, workers=1, webdataset=True, shard_size=4,
        stream_events_min=2, stream_events_max=2, event_seconds_min=2, event_seconds_max=2,
        pause_probability=0,
    )  # fmt: skip
    summary = generate(cfg)
    assert summary.clips == 6 and summary.out == out
    assert storage.exists(storage.join(out, "_SUCCESS"))
    records = [
        json.loads(x) for x in storage.read_text(storage.join(out, "manifest.jsonl")).splitlines()
    ]
    for r in records:
        data = storage.read_bytes(storage.resolve(out, r["video"]))
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        check_event(r["label"], frames)
    prefix = out[len(f"s3://{s3.bucket}/") :]
    listed = storage.s3_client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix + "/")
    keys = {o["Key"][len(prefix) + 1 :] for o in listed.get("Contents", [])}
    assert {"_SUCCESS", "manifest.jsonl", "streams.jsonl", "labels.json"} <= keys
    assert {"shards/shard-00000.tar", "shards/shard-00001.tar", "streams/stream-0000.mp4"} <= keys
    with pytest.raises(OutputError, match="--overwrite"):
        generate(cfg)
