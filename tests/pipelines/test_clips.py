"""The one clip sampler (`pipelines.clips`): frame choice, window decoding, FFmpeg shrink, error
reasons, and that nothing else in the packages opens a decord VideoReader. No Ray needed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipelines import clips
from pipelines.clips import TOO_SHORT, DecodeError, Sampling, frame_indices

REPO = Path(__file__).resolve().parents[2]


def moving_clip(width: int, height: int, frames: int, fps: int) -> bytes:
    """H.264 mp4 bytes of a drifting colour gradient with a box crossing it: every frame and
    every region differs, so a wrong frame or a wrong resize shows in the pixels."""
    from pipelines.synth.writer import encode_mp4

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        out[t, ..., 0] = ((xx + 7 * t) * 255 / width) % 256
        out[t, ..., 1] = ((2 * yy + 5 * t) * 255 / height) % 256
        out[t, ..., 2] = ((xx + yy) * 0.5 + 11 * t) % 256
        bx, by = int(t * width / (frames + 4)), int(height / 4 + t * height / (3 * frames))
        out[t, by : by + height // 4, bx : bx + width // 5] = (250, 250, 30)
    return encode_mp4(out, fps)


@pytest.fixture(scope="module")
def cif() -> bytes:
    """176x144, 15 fps, 3 s (45 frames)."""
    return moving_clip(176, 144, 45, 15)


@pytest.fixture(scope="module")
def hd() -> bytes:
    """1280x720, 12 fps, 2.5 s (30 frames)."""
    return moving_clip(1280, 720, 30, 12)


def test_spread_and_fps_sampling_pick_different_frames():
    spread = Sampling(frames=8, size=64)
    assert frame_indices(30, 12.0, None, None, spread) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert frame_indices(16, 8.0, None, None, Sampling(16, 64)) == list(range(16))
    # a window [1 s, 2 s) of a 12 fps video is frames 12..23
    assert frame_indices(30, 12.0, 1.0, 2.0, spread) == [12, 14, 15, 17, 18, 20, 21, 23]
    at4 = Sampling(frames=8, size=64, fps=4.0)  # every 3rd frame of a 12 fps video
    assert frame_indices(30, 12.0, None, None, at4) == [0, 3, 6, 9, 12, 15, 18, 21]
    assert frame_indices(30, 12.0, 0.5, None, at4) == [6, 9, 12, 15, 18, 21, 24, 27]
    assert frame_indices(45, 15.0, None, None, at4) == [0, 3, 7, 11, 15, 18, 22, 26]
    with pytest.raises(DecodeError) as e:  # 8 frames at 4 fps need 1.83 s; 1.5 s left
        frame_indices(30, 12.0, 1.0, None, at4)
    assert e.value.reason == TOO_SHORT
    padded = frame_indices(30, 12.0, 1.0, None, Sampling(8, 64, fps=4.0, pad=True))
    assert padded == [12, 15, 18, 21, 24, 27, 29, 29]


@pytest.mark.parametrize("n,fps", [(16, 8.0), (30, 12.0), (45, 15.0), (60, 29.97), (48, 23.976)])
@pytest.mark.parametrize(
    "sampling", [Sampling(16, 64), Sampling(8, 64, fps=4.0)], ids=["spread", "fps4"]
)
def test_whole_file_clip_from_a_manifest_equals_the_whole_upload(n, fps, sampling):
    """Pre-embedding reads a whole-file clip with the manifest's start=0, end=duration (what
    `vljepa synth` writes: end = frames / fps); Serve samples the upload with no start/end.
    Both must pick the same frames, also when the manifest's end was rounded on the way."""
    whole = frame_indices(n, fps, None, None, sampling)
    duration = n / fps
    for end in (duration, float(np.float32(duration)), round(duration, 3), round(duration, 2)):
        assert frame_indices(n, fps, 0.0, end, sampling) == whole, end


def test_window_decode_equals_single_clip_decode(cif, hd):
    for data in (cif, hd):
        for s in (Sampling(16, 64), Sampling(8, 64, fps=4.0)):
            windows = [(0.0, 2.0), (0.5, 2.5), (None, None), (0.25, None)]
            got = clips.decode_windows(data, s, windows)
            assert len(got) == len(windows)
            for (start, end), frames in zip(windows, got, strict=True):
                alone = clips.decode_clip(data, s, start, end)
                assert frames.shape == alone.shape and frames.shape[0] == s.frames
                assert np.array_equal(frames, alone), (s, start, end)
            assert not np.array_equal(got[0], got[1])  # the windows really differ


def test_stream_windows_slide_and_match_clip_decodes(cif):
    s = Sampling(8, 64)
    windows, mids = clips.stream_windows(cif, s, 1.0, 0.5)  # 3 s video: starts 0, .5, ... 2
    assert windows.shape[:2] == (5, 8) and windows.dtype == np.uint8
    np.testing.assert_allclose(mids, [0.5, 1.0, 1.5, 2.0, 2.5])
    for k, start in enumerate([0.0, 0.5, 1.0, 1.5, 2.0]):
        assert np.array_equal(windows[k], clips.decode_clip(cif, s, start, start + 1.0))


def test_big_source_is_shrunk_by_ffmpeg_to_twice_the_size(hd, cif):
    frames = clips.decode_clip(hd, Sampling(8, 64))
    t, h, w, c = frames.shape
    assert (t, c) == (8, 3) and min(h, w) <= 128, frames.shape
    assert abs(w / h - 1280 / 720) < 0.05  # aspect kept: the X-encoder centre-crops later
    # a source whose short side is within 2 x size keeps its pixels
    assert clips.decode_clip(cif, Sampling(8, 96)).shape == (8, 144, 176, 3)
    assert clips.decode_size((1280, 720), 64) == (228, 128)
    assert clips.decode_size((176, 144), 96) == (-1, -1)
    # the demo's reader gives native frames
    assert clips.read_frames(hd, [0, 29]).shape == (2, 720, 1280, 3)
    info = clips.video_info(hd)
    assert (info.num_frames, info.fps) == (30, 12.0) and info.duration_s == pytest.approx(2.5)


def test_too_short_and_bad_bytes_have_stable_reasons(cif):
    short = moving_clip(64, 64, 4, 8)  # 4 frames
    with pytest.raises(DecodeError) as e:
        clips.decode_clip(short, Sampling(16, 64))
    assert e.value.reason == TOO_SHORT
    with pytest.raises(DecodeError) as e:  # a window past the end of the video
        clips.decode_windows(cif, Sampling(8, 64), [(0.0, 1.0), (5.0, 6.0)])
    assert e.value.reason == TOO_SHORT
    with pytest.raises(DecodeError) as e:
        clips.decode_clip_info(short, Sampling(2, 64), min_source_frames=5)
    assert e.value.reason == TOO_SHORT
    assert clips.decode_clip(short, Sampling(16, 64, pad=True)).shape[0] == 16
    for data, reason in (
        (b"", clips.EMPTY),
        (b"caption text, not a video\n" * 20, clips.NOT_VIDEO),
        (cif[: len(cif) // 2], clips.TRUNCATED),
    ):
        with pytest.raises(DecodeError) as e:
            clips.decode_clip(data, Sampling(8, 64))
        assert e.value.reason == reason


def test_sampling_is_the_x_encoder_configs():
    from jepa.config import VLJEPAConfig
    from pipelines.embed import EmbedConfig

    cfg = EmbedConfig(manifest="m.jsonl", out="o", frames=8, fps=4.0)
    x = cfg.model().x_encoder
    assert (x.num_frames, x.fps, x.pad) == (8, 4.0, False)
    assert cfg.sampling() == Sampling.of(x) == Sampling(frames=8, size=64, fps=4.0, pad=False)
    assert Sampling.of(VLJEPAConfig.preset("tiny").x_encoder) == Sampling(16, 64, None, False)
    padded = EmbedConfig(manifest="m.jsonl", out="o", pad=True)
    assert padded.model().hash() != EmbedConfig(manifest="m.jsonl", out="o").model().hash()


def test_only_pipelines_clips_opens_a_video_reader():
    pattern = re.compile(r"VideoReader")
    hits = [
        str(p.relative_to(REPO))
        for pkg in ("jepa", "pipelines", "serve", "cluster")
        for p in sorted((REPO / pkg).rglob("*.py"))
        if pattern.search(p.read_text())
    ]
    assert hits == ["pipelines/clips.py"], hits
    assert not (REPO / "pipelines" / "embed" / "decode.py").exists()
