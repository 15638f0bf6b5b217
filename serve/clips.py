"""Clip bytes -> the X-encoder's sampled frames, inside the Encoder replica.

A thin adapter over `pipelines.clips`, the one sampler pre-embedding and evaluation use too:
the whole uploaded clip is sampled as the model's X-encoder config says (`Sampling.of`), big
sources shrunk by FFmpeg to a short side of 2 x size, so live tokens are the pre-embedded ones
for the same clip. Only the sampled frames are decoded: a request never holds the
full-resolution video in memory (pain point 1). Every way a clip can be bad becomes a
`ClipError` with an HTTP status, never an exception that could take the replica down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines import clips
from pipelines.clips import Sampling

# DecodeError reason -> (HTTP status, error)
_STATUS = {
    clips.EMPTY: (400, "empty clip"),
    clips.TOO_SHORT: (422, "clip too short"),
    clips.NOT_VIDEO: (415, "not a video"),
    clips.UNDECODABLE: (415, "not a video"),
    clips.TRUNCATED: (415, "not a video"),
}


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


def decode_clip(data: bytes, sampling: Sampling, min_frames: int = 2) -> DecodedClip:
    """The whole clip's sampled frames, with its length read by the same (single) reader."""
    try:
        frames, info = clips.decode_clip_info(data, sampling, None, None, min_frames)
    except clips.DecodeError as e:
        status, error = _STATUS.get(e.reason, (415, "not a video"))
        raise ClipError(status, error, e.detail or e.reason) from e
    return DecodedClip(
        np.ascontiguousarray(frames, dtype=np.uint8), info.duration_s, info.num_frames, info.fps
    )


def predict(model, items: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
    """The Encoder's model step for a batch of (decoded frames, query) -> predicted embeddings
    (float32): X-encoder, then the predictor. The benchmark's in-process limit runs this same
    function, so Serve is measured against the code it serves."""
    import torch

    queries = [q for _, q in items]
    # Clips keep their decoded picture size (the X-encoder resizes them): batch by shape.
    by_shape: dict[tuple, list[int]] = {}
    for i, (f, _) in enumerate(items):
        by_shape.setdefault(f.shape, []).append(i)
    enc = model.x_encoder
    with torch.inference_mode():
        x = torch.empty(len(items), enc.num_tokens, enc.hidden_size, device=enc.device)
        for idx in by_shape.values():
            x[idx] = enc(np.stack([items[i][0] for i in idx]))
        pred = model.predict_queries(x, queries if any(queries) else None)
    return list(pred.float().cpu().numpy())
