"""Clip bytes -> the X-encoder's sampled frames, decoded with decord inside the Encoder replica.

Only the `num_frames` sampled frames are decoded, already scaled so the short side is the
X-encoder's image size (its own preprocessing then centre-crops): a request never holds the
full-resolution video in memory (pain point 1). Every way a clip can be bad becomes a
`ClipError` with an HTTP status, never an exception that could take the replica down.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


class ClipError(Exception):
    def __init__(self, status: int, error: str, detail: str = ""):
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    def as_dict(self) -> dict:
        return {"status": self.status, "error": self.error, "detail": self.detail}


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 (T, H, W, 3), T = the X-encoder's num_frames
    duration_s: float  # of the whole clip
    source_frames: int
    fps: float


def _scaled_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    if min(h, w) <= short_side:
        return h, w
    scale = short_side / min(h, w)
    return max(short_side, round(h * scale)), max(short_side, round(w * scale))


def decode_clip(data: bytes, num_frames: int, image_size: int, min_frames: int = 2) -> DecodedClip:
    """Decode `num_frames` frames sampled uniformly over the clip (repeats if it is shorter)."""
    if not data:
        raise ClipError(400, "empty clip", "the clip has no bytes")
    import decord

    try:
        probe = decord.VideoReader(io.BytesIO(data), num_threads=1)
        n = len(probe)
        h, w = probe[0].shape[:2] if n else (0, 0)
        fps = float(probe.get_avg_fps() or 0.0)
        del probe
    except Exception as e:  # decord raises RuntimeError/DECORDError for non-video bytes
        raise ClipError(
            415, "not a video", f"decord could not open the clip ({type(e).__name__})"
        ) from e
    if n < min_frames:
        raise ClipError(422, "clip too short", f"{n} frames < minimum {min_frames}")
    sh, sw = _scaled_size(h, w, image_size)
    try:
        vr = decord.VideoReader(io.BytesIO(data), width=sw, height=sh, num_threads=1)
        idx = np.linspace(0, n - 1, num_frames).round().astype(np.int64)
        frames = vr.get_batch(idx.tolist()).asnumpy()
        del vr
    except Exception as e:
        raise ClipError(415, "not a video", f"decoding failed ({type(e).__name__})") from e
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ClipError(415, "not a video", f"unexpected frame shape {frames.shape}")
    duration = n / fps if fps > 0 else float(n)
    return DecodedClip(np.ascontiguousarray(frames, dtype=np.uint8), duration, n, fps)
