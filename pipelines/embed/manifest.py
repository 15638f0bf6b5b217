"""Inputs -> input shards: the unit of work that is embedded, written and recorded as done.

Two input layouts:
- a manifest (JSONL, CSV or Parquet) with one clip per row: id, video (URI; relative paths are
  taken from the manifest's folder), caption (or `captions`, first = caption), paraphrases,
  start/end seconds, label, split. Rows are cut into shards of `rows_per_shard` by position, so
  the same manifest always gives the same shards (the basis of resuming).
- WebDataset tars in video2dataset's layout (`<key>.mp4`, `<key>.txt`, `<key>.json`): one tar is
  one shard. Only the tar headers and the small text members are read here; workers fetch each
  video with one ranged read (offset, size), so the driver never holds video bytes.

Records that are unusable before any video is touched (no video reference, bad caption, bad
times) become error rows of their shard right here, so every manifest row is accounted for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipelines import storage
from pipelines.clips import BAD_CAPTION, BAD_RECORD, MISSING

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")

# The item schema handed to workers (one row per clip still to embed).
ITEM_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("seq", pa.int32()),  # position inside the shard: output order
        ("clip_id", pa.string()),
        ("video", pa.string()),  # URI (for tars: the tar's URI + "#" + member)
        ("source", pa.string()),  # what to read: a file URI, or the tar's URI
        ("offset", pa.int64()),  # byte range inside `source`; -1 = whole file
        ("size", pa.int64()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("caption", pa.string()),
        ("paraphrases", pa.list_(pa.string())),
        ("label", pa.string()),
        ("split", pa.string()),
    ]
)


@dataclass
class InputShard:
    """One shard's clips to embed (`items`) and the records already rejected (`errors`)."""

    shard: str
    items: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.items) + len(self.errors)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.items, schema=ITEM_SCHEMA)


def error_row(
    shard: str, clip_id: str, video: str, stage: str, reason: str, detail: str, seq: int
) -> dict:
    return {
        "shard": shard,
        "seq": seq,
        "clip_id": clip_id,
        "video": video,
        "stage": stage,
        "reason": reason,
        "detail": detail[:500],
    }


def _first(rec: dict, *names: str) -> Any:
    for n in names:
        if n in rec and rec[n] is not None and rec[n] != "":
            return rec[n]
    return None


def _seconds(v: Any, name: str) -> float | None:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number: {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return f


def _string_list(v: Any) -> list[str]:
    if v is None or v == "":
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            try:
                v = json.loads(s)
            except json.JSONDecodeError:
                return [s]
        else:
            return [p.strip() for p in s.split("|") if p.strip()]
    if isinstance(v, (list, tuple)):
        return [str(x).strip() for x in v if isinstance(x, str) and x.strip()]
    return []


def normalise(
    rec: Any, base: str, shard: str, seq: int, fallback_id: str
) -> tuple[dict | None, dict | None]:
    """A raw manifest record -> (item, None) or (None, error row)."""
    if not isinstance(rec, dict):
        return None, error_row(
            shard, fallback_id, "", "manifest", BAD_RECORD, f"not a record: {rec!r}"[:200], seq
        )
    clip_id = str(_first(rec, "id", "clip_id", "key", "__key__") or fallback_id)
    video = _first(rec, "video", "path", "video_path", "url", "mp4", "file")
    if not isinstance(video, str):
        return None, error_row(
            shard, clip_id, "", "manifest", BAD_RECORD, "no video reference", seq
        )
    uri = storage.resolve(base, video)
    captions = rec.get("captions")
    caption = rec.get("caption", rec.get("text"))
    paraphrases = _string_list(rec.get("paraphrases"))
    if caption is None and isinstance(captions, (list, tuple)) and captions:
        caption, paraphrases = captions[0], paraphrases or _string_list(list(captions[1:]))
    if not isinstance(caption, str) or not caption.strip():
        return None, error_row(
            shard,
            clip_id,
            uri,
            "manifest",
            BAD_CAPTION,
            f"caption missing or empty: {caption!r}"[:200],
            seq,
        )
    try:
        start = _seconds(_first(rec, "start", "start_s", "clip_start"), "start")
        end = _seconds(_first(rec, "end", "end_s", "clip_end"), "end")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"end ({end}) <= start ({start})")
    except ValueError as e:
        return None, error_row(shard, clip_id, uri, "manifest", BAD_RECORD, str(e), seq)
    item = {
        "shard": shard,
        "seq": seq,
        "clip_id": clip_id,
        "video": uri,
        "source": uri,
        "offset": -1,
        "size": -1,
        "start_s": start,
        "end_s": end,
        "caption": caption.strip(),
        "paraphrases": paraphrases,
        "label": str(rec.get("label") or ""),
        "split": str(rec.get("split") or "train"),
    }
    return item, None


def _manifest_records(uri: str) -> Iterator[Any]:
    """Raw records of a manifest file; a JSONL line that does not parse yields an exception."""
    ext = os.path.splitext(uri)[1].lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(uri)
        yield from pq.read_table(path, filesystem=fs).to_pylist()
        return
    text = storage.read_text(uri)
    if ext in (".csv", ".tsv"):
        yield from csv.DictReader(io.StringIO(text), delimiter="\t" if ext == ".tsv" else ",")
        return
    if ext == ".json" and text.lstrip().startswith("["):
        yield from json.loads(text)
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            yield ValueError(f"line {n}: {e}")


def shard_name(index: int) -> str:
    return f"{index:05d}"


def read_manifest(uri: str, rows_per_shard: int, limit: int | None = None) -> list[InputShard]:
    """The manifest cut into shards of `rows_per_shard` rows (by position)."""
    base = storage.parent(uri)
    stem = posixpath.basename(uri).split(".")[0]
    shards: list[InputShard] = []
    for n, rec in enumerate(_manifest_records(uri)):
        if limit is not None and n >= limit:
            break
        index, seq = divmod(n, rows_per_shard)
        if index == len(shards):
            shards.append(InputShard(shard_name(index)))
        shard = shards[index]
        if isinstance(rec, Exception):
            shard.errors.append(
                error_row(shard.shard, f"{stem}-{n}", "", "manifest", BAD_RECORD, str(rec), seq)
            )
            continue
        item, err = normalise(rec, base, shard.shard, seq, f"{stem}-{n}")
        if item is not None:
            shard.items.append(item)
        else:
            shard.errors.append(err)
    return shards


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def list_tars(uri: str) -> list[str]:
    if uri.rstrip("/").endswith(".tar"):
        return [uri]
    return storage.list_files(uri, suffix=".tar")


def read_tar_index(tar_uri: str, shard: str, limit: int | None = None) -> InputShard:
    """Scan one WebDataset tar's headers (+ its small .txt/.json members) into a shard."""
    fs, path = storage.filesystem(tar_uri)
    groups: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    with fs.open_input_file(path) as raw:
        buffered = io.BufferedReader(raw, buffer_size=1 << 20)  # headers are 512 B: batch the reads
        with tarfile.open(fileobj=buffered, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)
                if base.startswith("."):
                    continue
                key, _, ext = base.partition(".")
                key = posixpath.join(posixpath.dirname(m.name), key)
                ext = "." + ext.lower()
                g = groups.get(key)
                if g is None:
                    g = groups[key] = {}
                    order.append(key)
                if ext in VIDEO_EXTENSIONS:
                    g["video"] = (m.name, m.offset_data, m.size)
                elif ext in (".txt", ".json"):
                    f = tar.extractfile(m)
                    g[ext] = f.read() if f is not None else None
    out = InputShard(shard)
    for seq, key in enumerate(order[:limit] if limit else order):
        g = groups[key]
        meta: dict[str, Any] = {}
        if g.get(".json") is not None:
            try:
                parsed = json.loads(g[".json"].decode("utf-8"))
                meta = parsed if isinstance(parsed, dict) else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
        clip_id = str(meta.get("id") or meta.get("clip_id") or posixpath.basename(key))
        if "video" not in g:
            out.errors.append(
                error_row(
                    shard,
                    clip_id,
                    f"{tar_uri}#{key}",
                    "read",
                    MISSING,
                    "no video member in the tar",
                    seq,
                )
            )
            continue
        name, offset, size = g["video"]
        video = f"{tar_uri}#{name}"
        caption: Any = None
        if g.get(".txt") is not None:
            try:
                caption = g[".txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                out.errors.append(
                    error_row(
                        shard,
                        clip_id,
                        video,
                        "manifest",
                        BAD_CAPTION,
                        f"caption is not UTF-8: {e}",
                        seq,
                    )
                )
                continue
        if caption is None or not str(caption).strip():
            caption = meta.get("caption")
        rec = dict(meta)
        rec.update({"id": clip_id, "video": video, "caption": caption})
        item, err = normalise(rec, storage.parent(tar_uri), shard, seq, clip_id)
        if item is None:
            out.errors.append(err)
            continue
        item.update(video=video, source=tar_uri, offset=int(offset), size=int(size))
        out.items.append(item)
    return out


def read_inputs(
    uri: str, webdataset: bool, rows_per_shard: int, limit: int | None = None
) -> list[InputShard]:
    """All input shards of a manifest or a set of WebDataset tars, in a stable order."""
    if not webdataset:
        return read_manifest(uri, rows_per_shard, limit)
    tars = list_tars(uri)
    if not tars:
        raise FileNotFoundError(f"no .tar shards under {uri}")
    shards, seen, left = [], set(), limit
    for t in tars:
        name = _SAFE.sub("_", posixpath.basename(t)[: -len(".tar")]) or "shard"
        while name in seen:
            name += "_"
        seen.add(name)
        s = read_tar_index(t, name, left)
        shards.append(s)
        if left is not None:
            left -= s.total
            if left <= 0:
                break
    return shards
