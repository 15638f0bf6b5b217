"""Bytes out: H.264 mp4 in memory (PyAV/libx264) and WebDataset tars in video2dataset's layout.

Encoding happens in memory so a worker process hands back finished bytes and the parent alone
touches the output (local or s3://). x264 runs single-threaded: the parallelism is one process per
core, and a fixed thread count keeps the encoded bytes identical whatever the number of workers.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable

import av
import numpy as np


def encode_mp4(frames: np.ndarray, fps: int, gop: int | None = None) -> bytes:
    """(T, H, W, 3) uint8 RGB -> H.264 yuv420p mp4 bytes. `gop`: keyframe interval in frames
    (streams use one keyframe per clip length so readers can seek cheaply)."""
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(gop or t), "threads": "1"}
        stream.codec_context.thread_count = 1
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def webdataset_key(shard: int, index: int) -> str:
    """video2dataset's key: 5-digit shard id followed by the 4-digit position inside the shard."""
    return f"{shard:05d}{index:04d}"


def build_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar with fixed metadata (mtime 0, uid 0, mode 0644) so the same corpus gives the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_members(shard: int, records: list[dict], videos: list[bytes]) -> list[tuple[str, bytes]]:
    """`<key>.mp4`, `<key>.txt` (the caption), `<key>.json` (the manifest record + key)."""
    out: list[tuple[str, bytes]] = []
    for i, (rec, data) in enumerate(zip(records, videos, strict=True)):
        key = webdataset_key(shard, i)
        meta = {"key": key, **rec}
        out.append((f"{key}.mp4", data))
        out.append((f"{key}.txt", rec["caption"].encode("utf-8")))
        out.append((f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")))
    return out
