"""Ray Data stages: callable classes for `map_batches`, one job each.

The contract is NeMo Curator's, without its machinery: each stage declares `name`, `resources`
and `batch_size` as plain class attributes; `__init__` is the per-worker setup (models built
once per actor); `__call__` maps a pyarrow batch to a pyarrow batch. A bad input never raises:
it comes back as a row with `reason` set, `transient=False` for permanent failures (bad bytes:
done, never retried) and `transient=True` for ones worth retrying (a read that kept failing),
which leave their shard unfinished so a rerun tries it again.

Tensors travel as raw little-endian bytes (`binary` columns) between workers and the driver, so
no Ray tensor-extension conversion sits between the encoder and the Parquet writer; the writer
turns them into `fixed_shape_tensor` columns.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipelines import storage
from pipelines.clips import (
    MISSING,
    READ_FAILED,
    TRUNCATED,
    DecodeError,
    Sampling,
    decode_clip,
)
from pipelines.embed.manifest import ITEM_SCHEMA

log = logging.getLogger(__name__)

# Item columns every result row carries through unchanged (everything but where to read).
PASSTHROUGH = tuple(n for n in ITEM_SCHEMA.names if n not in ("source", "offset", "size"))

# What a stage returns for every input row (good or bad).
RESULT_SCHEMA = pa.schema(
    [
        *(ITEM_SCHEMA.field(n) for n in PASSTHROUGH),
        ("x_tokens", pa.binary()),
        ("y_embedding", pa.binary()),
        ("caption_ids", pa.list_(pa.int32())),
        ("paraphrase_ids", pa.list_(pa.list_(pa.int32()))),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("transient", pa.bool_()),
        ("decode_s", pa.float32()),  # wall seconds reading + decoding this clip
        ("decode_cpu_s", pa.float32()),  # CPU seconds of the same (immune to a busy machine)
        ("encode_s", pa.float32()),  # this clip's share of its encoder batch
    ]
)


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0


def read_source(row: dict, retries: int = 3, backoff_s: float = 0.2) -> bytes:
    """The video's bytes (a whole file, or a byte range of a tar). Missing -> permanent error;
    other I/O errors are retried, then reported as transient."""
    source, offset, size = row["source"], int(row["offset"]), int(row["size"])
    for attempt in range(retries):
        try:
            if offset < 0:
                return storage.read_bytes(source)
            fs, path = storage.filesystem(source)
            with fs.open_input_file(path) as f:
                data = f.read_at(size, offset)
            if len(data) != size:
                raise DecodeError(TRUNCATED, f"tar member has {len(data)} of {size} bytes")
            return data
        except FileNotFoundError as e:
            raise DecodeError(MISSING, f"{source}: not found") from e
        except DecodeError:
            raise
        except OSError as e:
            if "does not exist" in str(e) or "NoSuchKey" in str(e) or "Not Found" in str(e):
                raise DecodeError(MISSING, f"{source}: {e}") from e
            if attempt == retries - 1:
                raise _Transient(READ_FAILED, f"{type(e).__name__}: {e}") from e
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


class _Transient(DecodeError):
    """A failure that may succeed on a rerun (I/O), unlike a bad file."""


class ReadDecodeStage:
    """Bytes -> the clip's sampled frames (decord, one thread). CPU only; stateless apart from
    the sampling, so it also runs as plain tasks ahead of a GPU encoder pool."""

    name: ClassVar[str] = "read_decode"
    resources: ClassVar[Resources] = Resources(cpus=1.0)
    batch_size: ClassVar[int] = 8

    def __init__(self, sampling: dict[str, Any]) -> None:
        self.sampling = Sampling(**sampling)

    def decode_rows(
        self, rows: list[dict]
    ) -> list[tuple[np.ndarray | None, DecodeError | None, tuple[float, float]]]:
        """Per row: (frames or None, error or None, (wall s, CPU s))."""
        out = []
        for row in rows:
            t0, c0 = time.perf_counter(), time.process_time()
            stage = "read"
            frames, err = None, None
            try:
                data = read_source(row)
                stage = "decode"
                frames = decode_clip(data, self.sampling, row.get("start_s"), row.get("end_s"))
            except DecodeError as e:
                err = e
            except Exception as e:  # noqa: BLE001 - a bad input must never stop the job
                err = DecodeError("undecodable", f"{type(e).__name__}: {e}")
            if err is not None:
                err.stage = stage  # type: ignore[attr-defined]
            out.append((frames, err, (time.perf_counter() - t0, time.process_time() - c0)))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        """GPU layout: pass frames on as bytes + shape to the encoder stage."""
        rows = batch.to_pylist()
        frames_col, shape_col, reason, detail, stage, transient, dec, cpu = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for frames, err, (secs, cpu_s) in self.decode_rows(rows):
            frames_col.append(b"" if frames is None else frames.tobytes())
            shape_col.append([] if frames is None else list(frames.shape))
            reason.append("" if err is None else err.reason)
            detail.append("" if err is None else err.detail[:500])
            stage.append("" if err is None else err.stage)  # type: ignore[attr-defined]
            transient.append(isinstance(err, _Transient))
            dec.append(secs)
            cpu.append(cpu_s)
        return (
            batch.append_column("frames", pa.array(frames_col, pa.binary()))
            .append_column("frames_shape", pa.array(shape_col, pa.list_(pa.int32())))
            .append_column("reason", pa.array(reason, pa.string()))
            .append_column("detail", pa.array(detail, pa.string()))
            .append_column("stage", pa.array(stage, pa.string()))
            .append_column("transient", pa.array(transient, pa.bool_()))
            .append_column("decode_s", pa.array(dec, pa.float32()))
            .append_column("decode_cpu_s", pa.array(cpu, pa.float32()))
        )


class Encoders:
    """The frozen X-encoder and the Y-encoder's backbone + tokenizer, built once per worker."""

    def __init__(
        self, model_config: dict[str, Any], device: str, torch_threads: int, dtype: str
    ) -> None:
        import torch

        from jepa.config import VLJEPAConfig
        from jepa.x_encoder import XEncoder
        from jepa.y_encoder import YEncoder

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if device == "cpu":
            torch.set_num_threads(torch_threads)
        self.torch = torch
        cfg = VLJEPAConfig.from_dict(model_config)
        self.device = torch.device(device)
        self.x = XEncoder.from_config(cfg.x_encoder).to(self.device)
        self.y = YEncoder.from_config(cfg.y_encoder, cfg.shared_dim).to(self.device).eval()
        self.out_dtype = np.float16 if dtype == "float16" else np.float32
        self.y.tokenizer  # noqa: B018 - load the tokenizer now, not inside the first batch

    def encode_frames(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Clips (T,H,W,3) -> tokens (N,D), batched by picture shape."""
        out: list[np.ndarray | None] = [None] * len(clips)
        by_shape: dict[tuple, list[int]] = {}
        for i, c in enumerate(clips):
            by_shape.setdefault(c.shape, []).append(i)
        for idx in by_shape.values():
            stacked = np.stack([clips[i] for i in idx])
            tokens = (
                self.x.forward(self.torch.from_numpy(stacked)).to(self.torch.float32).cpu().numpy()
            )
            for j, i in enumerate(idx):
                out[i] = tokens[j].astype(self.out_dtype)
        return out  # type: ignore[return-value]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        enc = self.y.tokenize(texts)
        ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy().astype(bool)
        return [ids[i][mask[i]].astype(np.int32).tolist() for i in range(len(texts))]

    def encode_text(self, captions: list[str], paraphrases: list[list[str]]):
        emb = self.y.backbone_embed(captions).float().cpu().numpy().astype(np.float32)
        cap_ids = self.token_ids(captions)
        flat = [p for ps in paraphrases for p in ps]
        flat_ids = self.token_ids(flat)
        para_ids, k = [], 0
        for ps in paraphrases:
            para_ids.append(flat_ids[k : k + len(ps)])
            k += len(ps)
        return emb, cap_ids, para_ids


def _results(rows: list[dict], decoded, enc: Encoders | None, debug_delay_s: float) -> pa.Table:
    """Assemble RESULT_SCHEMA rows from decode outcomes, encoding the good ones."""
    good = [i for i, (frames, err, _) in enumerate(decoded) if err is None]
    t0 = time.perf_counter()
    tokens: dict[int, np.ndarray] = {}
    text: dict[int, tuple] = {}
    if good and enc is not None:
        toks = enc.encode_frames([decoded[i][0] for i in good])
        emb, cap_ids, para_ids = enc.encode_text(
            [rows[i]["caption"] for i in good], [list(rows[i]["paraphrases"] or []) for i in good]
        )
        for j, i in enumerate(good):
            tokens[i] = toks[j]
            text[i] = (emb[j], cap_ids[j], para_ids[j])
    if debug_delay_s:
        time.sleep(debug_delay_s)
    encode_s = (time.perf_counter() - t0) / max(1, len(good))
    cols: dict[str, list] = {name: [] for name in RESULT_SCHEMA.names}
    for i, row in enumerate(rows):
        for k in PASSTHROUGH:
            cols[k].append(row.get(k))
        frames, err, secs = decoded[i]
        ok = i in tokens
        cols["x_tokens"].append(tokens[i].tobytes() if ok else b"")
        cols["y_embedding"].append(text[i][0].tobytes() if ok else b"")
        cols["caption_ids"].append(text[i][1] if ok else [])
        cols["paraphrase_ids"].append(text[i][2] if ok else [])
        cols["stage"].append("" if err is None else getattr(err, "stage", "decode"))
        cols["reason"].append("" if err is None else err.reason)
        cols["detail"].append("" if err is None else err.detail[:500])
        cols["transient"].append(isinstance(err, _Transient))
        cols["decode_s"].append(secs[0])
        cols["decode_cpu_s"].append(secs[1])
        cols["encode_s"].append(encode_s if ok else 0.0)
    return pa.table(cols, schema=RESULT_SCHEMA)


class EmbedClipsStage:
    """Fused read -> decode -> X-encode -> caption encode, one actor per core (CPU layout).

    Fusing keeps the decoded frames inside the process that consumes them: nothing frame-sized
    ever enters the object store, and on a small CPU box no core waits on a separate decode pool.
    """

    name: ClassVar[str] = "embed_clips"
    resources: ClassVar[Resources] = Resources(cpus=1.0)
    batch_size: ClassVar[int] = 8

    def __init__(
        self,
        sampling: dict[str, Any],
        model_config: dict[str, Any],
        device: str = "cpu",
        torch_threads: int = 1,
        dtype: str = "float16",
        debug_delay_s: float = 0.0,
    ) -> None:
        self.decoder = ReadDecodeStage(sampling)
        self.enc = Encoders(model_config, device, torch_threads, dtype)
        self.debug_delay_s = debug_delay_s

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        return _results(rows, self.decoder.decode_rows(rows), self.enc, self.debug_delay_s)


class EncodeClipsStage:
    """Frames (from ReadDecodeStage) -> tokens + caption encodings, on a GPU (GPU layout)."""

    name: ClassVar[str] = "encode_clips"
    resources: ClassVar[Resources] = Resources(cpus=1.0, gpus=1.0)
    batch_size: ClassVar[int] = 32

    def __init__(
        self,
        model_config: dict[str, Any],
        device: str = "cuda",
        torch_threads: int = 1,
        dtype: str = "float16",
        debug_delay_s: float = 0.0,
    ) -> None:
        self.enc = Encoders(model_config, device, torch_threads, dtype)
        self.debug_delay_s = debug_delay_s

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        decoded = []
        for r in rows:
            if r["reason"]:
                err = (_Transient if r["transient"] else DecodeError)(r["reason"], r["detail"])
                err.stage = r["stage"]  # type: ignore[attr-defined]
                decoded.append((None, err, (r["decode_s"], r["decode_cpu_s"])))
            else:
                frames = np.frombuffer(r["frames"], np.uint8).reshape(r["frames_shape"])
                decoded.append((frames, None, (r["decode_s"], r["decode_cpu_s"])))
        return _results(rows, decoded, self.enc, self.debug_delay_s)
