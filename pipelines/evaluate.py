"""`vljepa eval`: what a trained model can do, measured on held-out data and logged to MLflow.

- retrieval both ways and zero-shot classification on the val split of the pre-embedded features
  (a hit is an item carrying the query's event: several clips share one caption);
- captioning CIDEr-D through the Y-decoder (references: the caption and its paraphrases);
- selective decoding on the synthetic streams (the paper's §4.5 protocol): each stream is cut into
  sliding windows (decoded with decord, X-encoder, predictor), the embedding stream is decoded
  uniformly or adaptively (Ward segments) at a range of rates, each segment pooled to one decoder
  input the same way for both methods, each ground-truth event is matched to the decode nearest
  in time, and the corpus CIDEr is plotted against decodes per second.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import time

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jepa.selective import Pool
from pipelines import storage
from pipelines.train.config import absolute_tracking_uri, default_tracking_uri

log = logging.getLogger(__name__)

PAPER_RATIO = 2.85


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="DIR | runs:/<id>/model | models:/<name>/<version>")
    data: str | None = Field(None, description="features root (val split) for retrieval etc.")
    corpus: str | None = Field(None, description="synthetic corpus root (streams.jsonl)")
    split: str = "val"
    window_s: float = Field(2.0, gt=0, description="stream window length")
    stride_s: float = Field(1.0, gt=0, description="stream window stride (the finest decode rate)")
    rate_factors: list[float] = Field(
        default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 2.0, 2.85, 4.0, 6.0],
        description="decode rates as multiples of the streams' event rate",
    )
    max_streams: int | None = Field(None, ge=1)
    segment_pool: Pool = Field(
        "trimmed",
        description="how a segment's windows become one decoder input, for both methods: "
        "'mean' (the paper) or 'trimmed' (the mean of the windows closest to it)",
    )
    trim_keep: float = Field(0.5, gt=0, le=1, description="fraction of windows 'trimmed' keeps")
    num_beams: int = Field(1, ge=1)
    tracking_uri: str = Field(default_factory=default_tracking_uri)
    experiment: str = "vljepa"
    log_mlflow: bool = True

    @field_validator("tracking_uri")
    @classmethod
    def _abs(cls, v: str) -> str:
        return absolute_tracking_uri(v)


# ----------------------------------------------------------------------------- features


def load_split(data: str, split: str) -> dict:
    from pipelines.train.data import data_files

    cols = ["clip_id", "caption", "paraphrases", "label", "split", "x_tokens"]
    tables = []
    for f in data_files(data):
        fs, path = storage.filesystem(f)
        t = pq.read_table(path, filesystem=fs, columns=cols)
        tables.append(t.filter(t.column("split").to_numpy(zero_copy_only=False) == split))
    rows = sum(t.num_rows for t in tables)
    if rows == 0:
        raise ValueError(f"no rows with split={split!r} in {data}")
    x = np.concatenate(
        [t.column("x_tokens").combine_chunks().to_numpy_ndarray() for t in tables if t.num_rows]
    )
    get = lambda c: [v for t in tables for v in t.column(c).to_pylist()]  # noqa: E731
    return {
        "x_tokens": x,
        "captions": get("caption"),
        "paraphrases": get("paraphrases"),
        "labels": get("label"),
        "clip_ids": get("clip_id"),
    }


def embedding_metrics(model, val: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Retrieval both ways + zero-shot accuracy; returns (metrics, predicted embeddings, sim)."""
    import torch

    from jepa import metrics
    from pipelines.train.data import event_key

    with torch.no_grad():
        v = torch.cat(
            [
                model.predict_queries(torch.as_tensor(val["x_tokens"][i : i + 64]).float())
                for i in range(0, len(val["x_tokens"]), 64)
            ]
        )
        captions = val["captions"]
        uniq = sorted(set(captions))
        t = model.embed_text(uniq)
        labels = sorted(set(val["labels"]))
        lab = model.embed_text(labels)
    sim = (t @ v.T).numpy()
    clip_ev = [event_key(c) for c in captions]
    q_ev = [event_key(c) for c in uniq]
    out = {}
    for k, val_ in metrics.recall_at_k(sim, q_ev, clip_ev).items():
        out[f"t2v_{k.replace('@', '').lower()}"] = float(val_)
    for k, val_ in metrics.recall_at_k(sim.T.copy(), clip_ev, q_ev).items():
        out[f"v2t_{k.replace('@', '').lower()}"] = float(val_)
    out["zero_shot_acc"] = float(
        metrics.zero_shot_accuracy(v, lab, [labels.index(x) for x in val["labels"]])
    )
    out["clips"] = float(len(captions))
    return out, v.numpy(), sim


def captioning_cider(
    model, val: dict, pred: np.ndarray, num_beams: int = 1
) -> tuple[float, list[str]]:
    from jepa.metrics import cider

    texts = model.y_decoder.generate(pred, num_beams=num_beams)
    refs = [[c, *(p or [])] for c, p in zip(val["captions"], val["paraphrases"], strict=True)]
    return cider(texts, refs), texts


# ----------------------------------------------------------------------------- streams


def read_streams(corpus: str) -> list[dict]:
    text = storage.read_text(storage.join(corpus, "streams.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stream_windows(data: bytes, num_frames: int, window_s: float, stride_s: float):
    """(frames (W, num_frames, H, W, 3) uint8, window mid times) for sliding windows of a video."""
    import decord

    vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    fps = float(vr.get_avg_fps()) or 8.0
    n = len(vr)
    duration = n / fps
    starts = np.arange(0.0, max(0.0, duration - window_s) + 1e-6, stride_s)
    idx = [
        np.clip(
            np.linspace(s * fps, (s + window_s) * fps - 1, num_frames).round().astype(int), 0, n - 1
        )
        for s in starts
    ]
    flat = sorted({int(i) for row in idx for i in row})
    frames = vr.get_batch(flat).asnumpy()
    pos = {f: k for k, f in enumerate(flat)}
    windows = np.stack([frames[[pos[int(i)] for i in row]] for row in idx])
    return windows, starts + window_s / 2


def embed_stream(
    model, corpus: str, stream: dict, cfg: EvalConfig
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    data = storage.read_bytes(storage.resolve(corpus, stream["video"]))
    windows, times = stream_windows(data, model.x_encoder.num_frames, cfg.window_s, cfg.stride_s)
    embs = []
    with torch.no_grad():
        for i in range(0, len(windows), 16):
            embs.append(model.embed_video(windows[i : i + 16]).numpy())
    return np.concatenate(embs), times


def selective_curve(model, streams: list[dict], stream_embs: list, cfg: EvalConfig) -> dict:
    """CIDEr against decodes/s for uniform and adaptive decoding over all streams (§4.5)."""
    from jepa import selective
    from jepa.metrics import cider, match_events_to_decodes

    total_events = sum(len(s["events"]) for s in streams)
    total_dur = sum(float(s["duration"]) for s in streams)
    event_rate = total_events / total_dur
    max_rate = 1.0 / cfg.stride_s
    rows = []
    for factor in cfg.rate_factors:
        rate = min(event_rate * factor, max_rate)
        for method in ("uniform", "adaptive"):
            cands, refs, calls = [], [], 0
            for s, (emb, times) in zip(streams, stream_embs, strict=True):
                if method == "adaptive":
                    segs = selective.segments_for_rate(emb, times, rate)
                else:
                    segs = selective.uniform_segments(
                        len(emb), selective.stride_for_rate(times, rate)
                    )
                plan = selective.decode_plan(
                    emb, segs, times, pool=cfg.segment_pool, keep=cfg.trim_keep
                )
                calls += len(plan)
                texts = model.y_decoder.generate(
                    np.stack([p.embedding for p in plan]), num_beams=cfg.num_beams
                )
                ev_t = [(e["start"] + e["end"]) / 2 for e in s["events"]]
                match = match_events_to_decodes(ev_t, [p.time_s for p in plan])
                cands.extend(texts[j] for j in match)
                refs.extend([e["caption"], *e.get("paraphrases", [])] for e in s["events"])
            rows.append(
                {
                    "method": method,
                    "factor": factor,
                    "rate_hz": calls / total_dur,
                    "target_rate_hz": rate,
                    "calls": calls,
                    "cider": cider(cands, refs),
                }
            )
    return {
        "segment_pool": cfg.segment_pool,
        "event_rate_hz": event_rate,
        "events": total_events,
        "duration_s": total_dur,
        "rows": rows,
    }


def summarize_curve(curve: dict, ratio: float = PAPER_RATIO) -> dict:
    """The acceptance numbers: adaptive at the event rate against uniform at the same rate and at
    `ratio` x that rate, and the decode-call ratio at equal CIDEr read off the uniform curve (the
    fewest uniform calls that reach the adaptive CIDEr; on a few dozen events the uniform curve is
    not monotonic, so this reading moves by one rate step when one event decodes differently)."""
    rows = curve["rows"]
    ada = {r["factor"]: r for r in rows if r["method"] == "adaptive"}
    uni = sorted((r for r in rows if r["method"] == "uniform"), key=lambda r: r["calls"])
    a1 = ada.get(1.0)
    out: dict = {}
    if a1 is None:
        return out
    out["adaptive_cider_at_event_rate"] = a1["cider"]
    out["adaptive_calls_at_event_rate"] = a1["calls"]
    u1 = next((r for r in uni if r["factor"] == 1.0), None)
    if u1 is not None:  # the same budget, spent evenly
        out["uniform_cider_at_event_rate"] = u1["cider"]
        out["uniform_calls_at_event_rate"] = u1["calls"]
    u_at = next((r for r in uni if r["factor"] == ratio), None)
    if u_at is not None:
        out[f"uniform_cider_at_{ratio}x"] = u_at["cider"]
        out[f"uniform_calls_at_{ratio}x"] = u_at["calls"]
        out["adaptive_matches_uniform_at_ratio"] = float(a1["cider"] >= u_at["cider"] - 1e-9)
    # fewest uniform calls reaching the adaptive CIDEr (interpolated); inf if never reached
    needed = math.inf
    prev = None
    for r in uni:
        if r["cider"] >= a1["cider"] - 1e-9:
            if prev is None or prev["cider"] >= r["cider"]:
                needed = r["calls"]
            else:
                frac = (a1["cider"] - prev["cider"]) / (r["cider"] - prev["cider"])
                needed = prev["calls"] + frac * (r["calls"] - prev["calls"])
            break
        prev = r
    # When no tested uniform rate reaches it, the densest uniform rate gives a lower bound.
    bound = math.isinf(needed) and bool(uni)
    out["uniform_calls_to_match"] = uni[-1]["calls"] if bound else needed
    out["call_ratio_at_equal_cider"] = out["uniform_calls_to_match"] / max(1, a1["calls"])
    out["call_ratio_is_lower_bound"] = float(bound)
    return out


def curve_figure(curve: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("uniform", "o"), ("adaptive", "s")):
        pts = sorted((r["rate_hz"], r["cider"]) for r in curve["rows"] if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=method)
    ax.axvline(curve["event_rate_hz"], color="grey", linestyle=":", label="event rate")
    ax.set_xscale("log")
    ax.set_xlabel("decodes per second")
    ax.set_ylabel("CIDEr-D (events matched to nearest decode)")
    ax.set_title("selective decoding on synthetic streams")
    ax.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- job


def run_eval(cfg: EvalConfig) -> dict:
    from jepa.model import VLJEPA
    from pipelines.train import tracking

    t0 = time.perf_counter()
    model = VLJEPA.from_pretrained(tracking.resolve_model(cfg.model, cfg.tracking_uri))
    results: dict = {"model": cfg.model}
    figures = {}
    if cfg.data:
        val = load_split(cfg.data, cfg.split)
        m, pred, sim = embedding_metrics(model, val)
        results["retrieval"] = m
        order = np.argsort(val["captions"], kind="stable")
        figures["plots/eval_similarity.png"] = tracking.similarity_figure(sim[:, order])
        if model.y_decoder is not None:
            c, texts = captioning_cider(model, val, pred, cfg.num_beams)
            results["captioning"] = {
                "cider": c,
                "samples": list(zip(val["captions"], texts, strict=True))[:20],
            }
    if cfg.corpus:
        if model.y_decoder is None:
            raise ValueError(
                "selective decoding needs a model with a Y-decoder (vljepa train-decoder)"
            )
        streams = read_streams(cfg.corpus)[: cfg.max_streams]
        embs = [embed_stream(model, cfg.corpus, s, cfg) for s in streams]
        curve = selective_curve(model, streams, embs, cfg)
        results["selective"] = {**curve, "summary": summarize_curve(curve)}
        figures["plots/selective_decoding.png"] = curve_figure(curve)
    results["seconds"] = time.perf_counter() - t0
    if cfg.log_mlflow:
        results["run_id"] = _log(cfg, results, figures)
    return results


def _log(cfg: EvalConfig, results: dict, figures: dict) -> str:
    from mlflow import MlflowClient

    from pipelines.train import tracking

    name = dt.datetime.now(dt.timezone.utc).strftime("vljepa-eval-%Y%m%d-%H%M%S")
    run_id = tracking.start_run(
        cfg.tracking_uri,
        cfg.experiment,
        name,
        {f"eval.{k}": v for k, v in cfg.model_dump().items()},
        {"vljepa.job": "eval"},
    )
    logger = tracking.StepLogger(cfg.tracking_uri, run_id, system_metrics=False)
    flat = {f"eval/{k}": v for k, v in results.get("retrieval", {}).items()}
    if "captioning" in results:
        flat["eval/captioning_cider"] = results["captioning"]["cider"]
    sel = results.get("selective")
    if sel:
        flat.update(
            {
                f"selective/{k}": float(v)
                for k, v in sel["summary"].items()
                if math.isfinite(float(v))
            }
        )
        for r in sel["rows"]:
            logger.log(
                {
                    f"selective/{r['method']}_cider": r["cider"],
                    f"selective/{r['method']}_rate_hz": r["rate_hz"],
                },
                step=int(round(r["factor"] * 100)),
            )
    logger.log(flat, step=0)
    client = MlflowClient(cfg.tracking_uri)
    for path, fig in figures.items():
        client.log_figure(run_id, fig, path)
    client.log_text(run_id, json.dumps(results, indent=2, default=str), "eval_results.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
