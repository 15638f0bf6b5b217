"""The one clip sampler: which frames of a video the X-encoder sees, decoded with decord.

Pre-embedding, evaluation's sliding windows, the Serve Encoder and the demo all read video
through this module, so the same clip gives the model the same pixels everywhere:
`frame_indices` picks the frames (`Sampling`: spread evenly over the clip, or `fps` apart from
its start), `decode_size` lets FFmpeg shrink a big source to a short side of 2 x size, and the
X-encoder's own preprocessing (resize short side + centre crop) does the rest. The sampling is
part of the X-encoder's config (`Sampling.of(cfg.x_encoder)`), so it travels with the features'
metadata and with every saved model.

Only the frames the X-encoder will see are materialised, so memory per clip is
`frames x H x W x 3` bytes with a short side of at most 2 x size, whatever the source resolution.
decord runs with ONE thread: on a 2-core box decord's default threads fight the other workers'
and were measured slower (docs/FACTS.md).

Every failure is turned into a `DecodeError` with a short, stable `reason` (the error table's
key) so a bad file is counted and reported, never a crash of the job.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Stable reason names: they are the keys of the run summary's "errors by reason".
MISSING = "missing_file"
EMPTY = "zero_bytes"
TRUNCATED = "truncated"
NOT_VIDEO = "not_a_video"
TOO_SHORT = "too_short"
UNDECODABLE = "undecodable"
BAD_CAPTION = "bad_caption"
BAD_RECORD = "bad_record"
READ_FAILED = "read_failed"

REASONS = (MISSING, EMPTY, TRUNCATED, NOT_VIDEO, TOO_SHORT, UNDECODABLE, BAD_CAPTION, BAD_RECORD)

# What a video with no usable rate is read at.
DEFAULT_FPS = 25.0


class DecodeError(Exception):
    """A permanent failure of one input: retrying it will fail the same way."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Sampling:
    """Which frames a clip contributes: `frames` at `size` px, at `fps` (None = evenly spread)."""

    frames: int
    size: int
    fps: float | None = None
    pad: bool = False

    @classmethod
    def of(cls, x_encoder: Any) -> Sampling:
        """The sampling an X-encoder config (`jepa.config.XEncoderConfig`) asks for."""
        return cls(
            frames=int(x_encoder.num_frames),
            size=int(x_encoder.image_size),
            fps=None if x_encoder.fps is None else float(x_encoder.fps),
            pad=bool(x_encoder.pad),
        )


@dataclass(frozen=True)
class VideoInfo:
    """What one open VideoReader says about a video (no frame is decoded to learn it)."""

    num_frames: int
    fps: float  # the container's average rate; 0.0 if it gives none

    @property
    def rate(self) -> float:
        """The rate frame times are computed with (DEFAULT_FPS when the container has none)."""
        return _usable_fps(self.fps)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.rate


def sniff_container(data: bytes) -> str | None:
    """Container family from the magic bytes, or None if these bytes are no known video format.

    Lets "this was never a video" be told apart from "a video cut short", which decord reports
    with the same RuntimeError.
    """
    head = data[:16]
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:1] == b"\x47" and len(data) > 188 and data[188:189] == b"\x47":
        return "mpegts"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpeg-ps"
    return None


def mp4_is_truncated(data: bytes) -> bool:
    """True if the top-level ISO-BMFF boxes run past the end of the bytes, or `moov` is absent."""
    pos, n, seen_moov = 0, len(data), False
    while pos + 8 <= n:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            if pos + 16 > n:
                return True
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:  # box runs to the end of the file
            size = n - pos
        if size < 8:
            return True
        if kind == b"moov":
            seen_moov = True
        if pos + size > n:
            return True
        pos += size
    return pos != n or not seen_moov


def mp4_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first video track from its `tkhd` box, or None if not found.

    Read from the bytes (no decoding) so decord can be asked for a smaller picture up front.
    """
    pos = 0
    while True:
        pos = data.find(b"tkhd", pos)
        if pos < 4:
            return None
        version = data[pos + 4] if pos + 4 < len(data) else 0
        off = pos + 4 + (88 if version == 1 else 76)
        if off + 8 > len(data):
            return None
        w, h = struct.unpack(">II", data[off : off + 8])
        w, h = w >> 16, h >> 16
        if w > 0 and h > 0:
            return w, h
        pos += 4  # an audio track (0 x 0): look for the next one


def decode_size(dims: tuple[int, int] | None, size: int) -> tuple[int, int]:
    """(width, height) for decord: native (-1, -1) unless the short side exceeds 2 x size.

    Big sources are shrunk by FFmpeg to a short side of 2 x size (aspect kept) so a 1080p clip
    never materialises full-size frames; the X-encoder's own resize + centre crop then does the
    final step, the same on every path, so pre-embedded and live tokens agree.
    """
    if dims is None:
        return -1, -1
    w, h = dims
    short = min(w, h)
    if short <= 2 * size:
        return -1, -1
    scale = 2 * size / short
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def _usable_fps(video_fps: float) -> float:
    return video_fps if video_fps and video_fps > 0 and math.isfinite(video_fps) else DEFAULT_FPS


def frame_indices(
    num_available: int, video_fps: float, start_s: float | None, end_s: float | None, s: Sampling
) -> list[int]:
    """Frame indices of the clip's samples; raises DecodeError(TOO_SHORT) unless padding.

    The clip is the frames of [start, end) (None: the video's first / last frame, so a whole-file
    clip with start=0, end=duration picks what start=end=None picks). fps=None spreads the frames
    evenly over it (a 2 s, 8 fps clip -> its 16 frames); with fps set, samples are 1/fps apart
    from `start`. With `pad`, a clip with too few frames repeats them (an image becomes a still
    clip, as the paper does).
    """
    vfps = _usable_fps(video_fps)
    first = max(0, int(round((start_s or 0.0) * vfps)))
    last = num_available - 1
    if end_s is not None and end_s > 0:
        last = min(last, int(math.ceil(end_s * vfps - 1e-6)) - 1)
    if last < first:
        if s.pad and first <= num_available - 1:
            last = first
        elif s.pad and num_available > 0:
            first = last = num_available - 1
        else:
            raise DecodeError(TOO_SHORT, f"clip window has no frames ({num_available} in video)")
    if s.fps is None:
        window = last - first + 1
        if window < s.frames and not s.pad:
            raise DecodeError(TOO_SHORT, f"{window} frames in the clip, {s.frames} needed")
        idx = np.linspace(first, last, s.frames)
        return [int(round(i)) for i in idx]
    step = vfps / s.fps
    idx = [first + int(math.floor(i * step + 1e-6)) for i in range(s.frames)]
    if idx[-1] > last:
        if not s.pad:
            raise DecodeError(
                TOO_SHORT,
                f"{(last - first + 1) / vfps:.2f}s in the clip, "
                f"{s.frames} frames at {s.fps:g} fps need {(s.frames - 1) / s.fps + 1 / vfps:.2f}s",
            )
        idx = [min(i, last) for i in idx]
    return idx


class Video:
    """One opened video: ONE decord VideoReader, one thread, errors as `DecodeError`s.

    `size`: shrink big sources for a sampling of that size (`decode_size`); None = native
    pixels. Use as a context manager (the reader holds FFmpeg's decoder state).
    """

    def __init__(self, data: bytes, size: int | None = None) -> None:
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's chatter; our reasons say enough
        if len(data) == 0:
            raise DecodeError(EMPTY, "the file has zero bytes")
        self.container = sniff_container(data)
        if self.container is None:
            raise DecodeError(
                NOT_VIDEO, f"no known video container signature (starts {data[:8]!r})"
            )
        self._data = data
        dims = mp4_dimensions(data) if self.container == "mp4" and size is not None else None
        width, height = decode_size(dims, size or 0)
        try:
            self._vr = decord.VideoReader(
                io.BytesIO(data), ctx=decord.cpu(0), width=width, height=height, num_threads=1
            )
            n = len(self._vr)
            self.info = VideoInfo(n, float(self._vr.get_avg_fps() or 0.0))
        except Exception as e:  # decord raises RuntimeError/DECORDError alike
            self.close()
            raise self._failure(e) from e
        if n == 0:
            self.close()
            raise DecodeError(UNDECODABLE, "no video frames")

    def _failure(self, e: BaseException) -> DecodeError:
        if self.container == "mp4" and mp4_is_truncated(self._data):
            return DecodeError(TRUNCATED, f"{len(self._data)} bytes, mp4 boxes incomplete")
        return DecodeError(UNDECODABLE, _first_line(e))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) RGB; each distinct frame is decoded once."""
        want = [int(i) for i in indices]
        if not want:
            raise ValueError("no frame indices given")
        uniq = sorted(set(want))
        if uniq[0] < 0 or uniq[-1] >= self.info.num_frames:
            raise DecodeError(
                UNDECODABLE, f"frames {uniq[0]}..{uniq[-1]} asked of {self.info.num_frames}"
            )
        try:
            frames = self._vr.get_batch(uniq).asnumpy()
        except Exception as e:
            raise self._failure(e) from e
        if frames.ndim != 4 or frames.shape[0] != len(uniq) or frames.shape[-1] != 3:
            raise DecodeError(UNDECODABLE, f"decoder returned shape {frames.shape}")
        if uniq == want:
            return frames
        pos = {f: k for k, f in enumerate(uniq)}
        return frames[[pos[i] for i in want]]

    def indices(self, sampling: Sampling, start_s: float | None, end_s: float | None) -> list[int]:
        return frame_indices(self.info.num_frames, self.info.fps, start_s, end_s, sampling)

    def windows(
        self, sampling: Sampling, windows: Sequence[tuple[float | None, float | None]]
    ) -> list[np.ndarray]:
        """Each (start_s, end_s) window sampled as `decode_clip` samples that clip; the union
        of their frames is decoded once."""
        idx = [self.indices(sampling, s, e) for s, e in windows]
        if not idx:
            return []
        flat = sorted({i for row in idx for i in row})
        frames = self.read(flat)
        pos = {f: k for k, f in enumerate(flat)}
        return [np.ascontiguousarray(frames[[pos[i] for i in row]]) for row in idx]

    def close(self) -> None:
        self.__dict__.pop("_vr", None)

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bytes(src: bytes | str | os.PathLike) -> bytes:
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src)
    from pipelines import storage

    try:
        return storage.read_bytes(os.fspath(src))
    except FileNotFoundError as e:
        raise DecodeError(MISSING, f"{os.fspath(src)}: not found") from e


def open_video(src: bytes | str | os.PathLike, size: int | None = None) -> Video:
    """A `Video` from bytes or a path/URI (read whole: decord then never touches the disk)."""
    return Video(_bytes(src), size)


def video_info(src: bytes | str | os.PathLike) -> VideoInfo:
    """Frame count and rate of a video (no frame is read)."""
    with open_video(src) as v:
        return v.info


def read_frames(src: bytes | str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """These frames of a video at native resolution, uint8 (len(indices), H, W, 3) RGB."""
    with open_video(src) as v:
        return v.read(indices)


def decode_windows(
    data: bytes, sampling: Sampling, windows: Sequence[tuple[float | None, float | None]]
) -> list[np.ndarray]:
    """Several (start_s, end_s) windows of one video with ONE VideoReader: each exactly what
    `decode_clip(data, sampling, start_s, end_s)` returns."""
    with Video(data, sampling.size) as v:
        return v.windows(sampling, windows)


def decode_clip_info(
    data: bytes,
    sampling: Sampling,
    start_s: float | None = None,
    end_s: float | None = None,
    min_source_frames: int = 0,
) -> tuple[np.ndarray, VideoInfo]:
    """`decode_clip` plus what the same reader says about the whole video. A video with fewer
    than `min_source_frames` frames is TOO_SHORT before anything is decoded."""
    with Video(data, sampling.size) as v:
        if v.info.num_frames < min_source_frames:
            raise DecodeError(
                TOO_SHORT, f"{v.info.num_frames} frames < minimum {min_source_frames}"
            )
        return v.windows(sampling, [(start_s, end_s)])[0], v.info


def decode_clip(
    data: bytes, sampling: Sampling, start_s: float | None = None, end_s: float | None = None
) -> np.ndarray:
    """mp4/webm/... bytes -> uint8 (frames, H, W, 3) RGB, short side <= 2 x size (see decode_size)."""
    return decode_clip_info(data, sampling, start_s, end_s)[0]


def stream_windows(
    data: bytes, sampling: Sampling, window_s: float, stride_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows over a whole video: (frames (W, frames, H, W, 3) uint8, window mid
    times). Windows of `window_s` start every `stride_s` while they fit in the video (at least
    one); each is sampled as a clip with that start/end would be."""
    with Video(data, sampling.size) as v:
        duration = v.info.duration_s
        starts = np.arange(0.0, max(0.0, duration - window_s) + 1e-6, stride_s)
        frames = v.windows(sampling, [(float(s), float(s) + window_s) for s in starts])
    return np.stack(frames), starts + window_s / 2


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _first_line(e: BaseException) -> str:
    # decord prefixes its messages with "[time] file:line:" (often twice); keep what failed.
    text = _DECORD_PREFIX.sub("", str(e)).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line[:300]


def state_pair(initial: np.ndarray, final: np.ndarray, num_frames: int) -> np.ndarray:
    """Two single-frame states (H,W,3) -> the clip the X-encoder sees for them (T,H,W,3): the
    initial state held for the first half of the frames, the final state for the rest (the
    WorldPrediction-style input: before and after, with the action itself left out)."""
    if initial.shape != final.shape:
        raise ValueError(f"state images differ in shape: {initial.shape} vs {final.shape}")
    first = num_frames // 2
    return np.stack([initial] * first + [final] * (num_frames - first))
