"""Bytes of one video -> the clip's sampled frames, or a named reason why not.

Decoding happens inside the embedding worker and only the frames the X-encoder will see are
materialised (already resized by FFmpeg to the encoder's input size), so memory per clip is
`frames x size x size x 3` bytes whatever the source resolution — never one row per frame.
decord runs with ONE thread: on a 2-core box decord's default threads fight the other workers'
and were measured slower (docs/FACTS.md).

Every failure is turned into a `DecodeError` with a short, stable `reason` (the error table's
key) so a bad file is counted and reported, never a crash of the job.
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass

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
    final step exactly as it does for the server, so pre-embedded and live tokens agree.
    """
    if dims is None:
        return -1, -1
    w, h = dims
    short = min(w, h)
    if short <= 2 * size:
        return -1, -1
    scale = 2 * size / short
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def frame_indices(
    num_available: int, video_fps: float, start_s: float | None, end_s: float | None, s: Sampling
) -> list[int]:
    """Frame indices of the clip's samples; raises DecodeError(TOO_SHORT) unless padding.

    fps=None spreads the frames evenly over [start, end) (a 2 s, 8 fps clip -> its 16 frames);
    with fps set, samples are 1/fps apart from `start`. With `pad`, a clip with too few frames
    repeats them (an image becomes a still clip, as the paper does).
    """
    vfps = video_fps if video_fps and video_fps > 0 and math.isfinite(video_fps) else 25.0
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


def decode_clip(
    data: bytes, sampling: Sampling, start_s: float | None = None, end_s: float | None = None
) -> np.ndarray:
    """mp4/webm/... bytes -> uint8 (frames, H, W, 3) RGB, short side <= 2 x size (see decode_size)."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's chatter; our reasons say enough
    if len(data) == 0:
        raise DecodeError(EMPTY, "the file has zero bytes")
    container = sniff_container(data)
    if container is None:
        raise DecodeError(NOT_VIDEO, f"no known video container signature (starts {data[:8]!r})")
    width, height = decode_size(mp4_dimensions(data) if container == "mp4" else None, sampling.size)
    try:
        vr = decord.VideoReader(
            io.BytesIO(data), ctx=decord.cpu(0), width=width, height=height, num_threads=1
        )
    except Exception as e:  # decord raises RuntimeError/DECORDError alike
        if container == "mp4" and mp4_is_truncated(data):
            raise DecodeError(TRUNCATED, f"{len(data)} bytes, mp4 boxes incomplete") from e
        raise DecodeError(UNDECODABLE, _first_line(e)) from e
    try:
        n = len(vr)
        if n == 0:
            raise DecodeError(UNDECODABLE, "no video frames")
        idx = frame_indices(n, float(vr.get_avg_fps()), start_s, end_s, sampling)
        frames = vr.get_batch(idx).asnumpy()
    except DecodeError:
        raise
    except Exception as e:
        if container == "mp4" and mp4_is_truncated(data):
            raise DecodeError(TRUNCATED, _first_line(e)) from e
        raise DecodeError(UNDECODABLE, _first_line(e)) from e
    finally:
        del vr
    if frames.ndim != 4 or frames.shape[0] != sampling.frames or frames.shape[-1] != 3:
        raise DecodeError(UNDECODABLE, f"decoder returned shape {frames.shape}")
    return frames


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _first_line(e: BaseException) -> str:
    # decord prefixes its messages with "[time] file:line:" (often twice); keep what failed.
    text = _DECORD_PREFIX.sub("", str(e)).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line[:300]
