"""`vljepa eval`: what a trained model can do, measured on held-out data and logged to MLflow.

- retrieval both ways and zero-shot classification on the val split of the pre-embedded features
  (a hit is an item carrying the query's event: several clips share one caption);
- captioning CIDEr-D through the Y-decoder (references: the caption and its paraphrases);
- selective decoding on the synthetic streams (the paper's §4.5 protocol, pipelines.selective_eval):
  each stream is cut into sliding windows (pipelines.clips sampling, X-encoder, predictor), the
  embedding stream is decoded uniformly and adaptively (Ward segments) at absolute rates and by
  the model's online detector, each decode from its segment's mean, each ground-truth event is
  matched to the decode nearest in time, the corpus CIDEr is plotted against decodes per second,
  and the call ratio at equal CIDEr is read with a bootstrap interval over streams.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jepa.selective import Pool
from pipelines import storage, tracking_store
from pipelines.selective_eval import (  # noqa: F401  (re-exported: the eval's selective part)
    DEFAULT_RATES_HZ,
    HEADLINE_RATE_HZ,
    PAPER_RATIO,
    curve_figure,
    selective_curve,
    selective_results,
    summarize_curve,
)

log = logging.getLogger(__name__)


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="DIR | runs:/<id>/model | models:/<name>/<version>")
    baseline: str | None = Field(
        None, description="a second model scored beside `model` on the same questions (VQA)"
    )
    data: str | None = Field(None, description="features root (val split) for retrieval etc.")
    worldprediction: str | None = Field(
        None,
        description="corpus root holding worldprediction.jsonl: WorldPrediction-style accuracy "
        "(which candidate clip turns the initial state into the final one; needs `data` for "
        "the candidates' tokens)",
    )
    corpus: str | None = Field(None, description="synthetic corpus root (streams.jsonl)")
    split: str = "val"
    window_s: float = Field(2.0, gt=0, description="stream window length")
    stride_s: float = Field(1.0, gt=0, description="stream window stride (the finest decode rate)")
    rates_hz: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RATES_HZ),
        min_length=1,
        description="decode rates (decodes per second of video) of the uniform and adaptive "
        "curves; a rate above 1/stride_s decodes every window",
    )
    headline_rate_hz: float = Field(
        HEADLINE_RATE_HZ, gt=0, description="the adaptive point whose call ratio is the headline"
    )
    bootstrap_resamples: int = Field(1000, ge=0, description="stream resamples for intervals")
    bootstrap_seed: int = 0
    ci_level: float = Field(0.95, gt=0, lt=1)
    max_streams: int | None = Field(None, ge=1)
    segment_pool: Pool = Field(
        "mean",
        description="how a segment's windows become one decoder input, for every method: "
        "'mean' (the paper) or 'trimmed' (the mean of the windows closest to it)",
    )
    trim_keep: float = Field(0.5, gt=0, le=1, description="fraction of windows 'trimmed' keeps")
    num_beams: int = Field(1, ge=1)
    tracking_uri: str = Field(
        default_factory=tracking_store.resolve,
        description="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)",
    )
    experiment: str = "vljepa"
    log_mlflow: bool = True

    @field_validator("tracking_uri")
    @classmethod
    def _abs(cls, v: str) -> str:
        return tracking_store.absolute(v)

    @field_validator("rates_hz")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(not (r > 0 and math.isfinite(r)) for r in v):
            raise ValueError(f"decode rates must be positive, got {v}")
        return v


# ----------------------------------------------------------------------------- features


def load_split(data: str, split: str, limit: int | None = None) -> dict:
    """One split of a features root in memory (the first `limit` rows of it, if given)."""
    from pipelines.features import data_files

    cols = ["clip_id", "caption", "paraphrases", "label", "split", "x_tokens"]
    tables = []
    have = 0
    for f in data_files(data):
        if limit is not None and have >= limit:
            break
        fs, path = storage.filesystem(f)
        t = pq.read_table(path, filesystem=fs, columns=cols)
        t = t.filter(t.column("split").to_numpy(zero_copy_only=False) == split)
        if limit is not None:
            t = t.slice(0, limit - have)
        have += t.num_rows
        tables.append(t)
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
    truth = [labels.index(x) for x in val["labels"]]
    out["zero_shot_acc"] = float(metrics.zero_shot_accuracy(v, lab, truth))
    out["zero_shot_top5"] = float(metrics.zero_shot_accuracy(v, lab, truth, k=5))
    out["clips"] = float(len(captions))
    return out, v.numpy(), sim


def token_model_metrics(model, val: dict, max_new_tokens: int = 24) -> dict:
    """What applies to a token-prediction model (`jepa.token_model.TokenVLM`, `--objective
    tokens`): it has no embedding space, so no retrieval. Reports
    - captioning: CIDEr-D of its own greedy generations (its LM head, from BOS after the clip's
      visual tokens) against the caption and its paraphrases, the same references as the
      embedding model's Y-decoder captions are scored against;
    - classification: zero-shot top-1 / top-5 by label likelihood (each class name, underscores
      as spaces, scored as the clip's caption by its mean per-token log-probability; the highest
      wins), over the split's classes;
    - val_loss: teacher-forced cross-entropy per caption token (tokenised as the model's own
      tokenizer does, BOS and EOS included).
    """
    import torch

    from jepa import metrics
    from jepa.token_model import class_text
    from pipelines.train.data import pad_ids

    x_all = val["x_tokens"]
    names = sorted(set(val["labels"]))
    texts, scores = [], []
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(x_all), 64):
            x = torch.as_tensor(np.asarray(x_all[i : i + 64])).float()
            texts.extend(model.generate(x, max_new_tokens=max_new_tokens))
            scores.append(model.label_log_likelihood(x, [class_text(c) for c in names]))
            ids, mask = pad_ids(model.tokenize(val["captions"][i : i + 64]), 512)
            n = float(mask[:, 1:].sum())
            total += float(model(x, ids, mask)) * n
            count += n
    s = torch.cat(scores)
    truth = [names.index(c) for c in val["labels"]]
    refs = [[c, *(p or [])] for c, p in zip(val["captions"], val["paraphrases"], strict=True)]
    return {
        "captioning": {
            "cider": metrics.cider(texts, refs),
            "samples": list(zip(val["captions"], texts, strict=True))[:20],
        },
        "classification": {
            "zero_shot_acc": metrics.top_k_accuracy(s, truth, 1),
            "zero_shot_top5": metrics.top_k_accuracy(s, truth, 5),
            "classes": float(len(names)),
            "clips": float(len(truth)),
            "val_loss": total / max(1.0, count),
        },
        "texts": texts,
    }


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


def embed_stream(
    model, corpus: str, stream: dict, cfg: EvalConfig
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from pipelines.clips import Sampling, stream_windows

    data = storage.read_bytes(storage.resolve(corpus, stream["video"]))
    # The windows are sampled as the model's clips were (pipelines.clips, the one sampler).
    sampling = Sampling.of(model.config.x_encoder)
    windows, times = stream_windows(data, sampling, cfg.window_s, cfg.stride_s)
    embs = []
    with torch.no_grad():
        for i in range(0, len(windows), 16):
            embs.append(model.embed_video(windows[i : i + 16]).numpy())
    return np.concatenate(embs), times


# ----------------------------------------------------------------------------- job


def run_eval(cfg: EvalConfig) -> dict:
    from jepa.model import VLJEPA
    from jepa.token_model import saved_objective
    from pipelines.train import tracking

    t0 = time.perf_counter()
    model_dir = tracking.resolve_model(cfg.model, cfg.tracking_uri)
    if saved_objective(model_dir) == "tokens":
        results = run_token_eval(model_dir, cfg)
        results["seconds"] = time.perf_counter() - t0
        if cfg.log_mlflow:
            results["run_id"] = _log(cfg, results, {})
        return results
    model = VLJEPA.from_pretrained(model_dir)
    results: dict = {"model": cfg.model}
    figures = {}
    if cfg.data:
        from pipelines import features

        features.check_model_x_encoder(features.load(cfg.data), model.config.x_encoder, cfg.model)
        val = load_split(cfg.data, cfg.split)
        m, pred, sim = embedding_metrics(model, val)
        results["retrieval"] = m
        order = np.argsort(val["captions"], kind="stable")
        figures["plots/eval_similarity.png"] = tracking.similarity_figure(sim[:, order])
        models = side_by_side(model, cfg)
        vqa = vqa_results(models, cfg)
        if cfg.worldprediction:
            from pipelines.vqa_eval import worldprediction_accuracy

            results["worldprediction"] = {
                name: worldprediction_accuracy(m, cfg.worldprediction, cfg.data, cfg.split)
                for name, m in models
            }
        if vqa:
            from pipelines.vqa_eval import accuracy_figure

            results["vqa"] = vqa
            figures["plots/vqa_by_type.png"] = accuracy_figure(vqa)
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
        results["selective"], figures["plots/selective_decoding.png"] = selective_results(
            model, streams, embs, cfg
        )
    results["seconds"] = time.perf_counter() - t0
    if cfg.log_mlflow:
        results["run_id"] = _log(cfg, results, figures)
    return results


def side_by_side(model, cfg: EvalConfig) -> list[tuple[str, object]]:
    """[(label, model)] for the model and the baseline (if any); the label says how each reads a
    question (a stage-1 model gets its generic query)."""
    from jepa.model import VLJEPA
    from pipelines import features
    from pipelines.train import tracking

    models = [(cfg.model, model)]
    if cfg.baseline:
        base = VLJEPA.from_pretrained(tracking.resolve_model(cfg.baseline, cfg.tracking_uri))
        if cfg.data:
            features.check_model_x_encoder(
                features.load(cfg.data), base.config.x_encoder, cfg.baseline
            )
        models.append((cfg.baseline, base))
    how = {True: "reads the question", False: "generic query"}
    return [(f"{n} ({how[bool(m.config.trained_with_queries)]})", m) for n, m in models]


def vqa_results(models: list[tuple[str, object]], cfg: EvalConfig) -> dict[str, dict]:
    """VQA accuracy per question type of each model; {} when the features hold no questions."""
    from pipelines import features
    from pipelines.vqa_eval import vqa_accuracy

    if not features.questions_files(cfg.data):
        return {}
    return {name: vqa_accuracy(m, cfg.data, cfg.split) for name, m in models}


def run_token_eval(model_dir: str, cfg: EvalConfig) -> dict:
    """`vljepa eval` of a token-prediction model (`--objective tokens`): captioning CIDEr-D and
    zero-shot classification on the features' split (`token_model_metrics`). Retrieval and
    selective decoding need an embedding space, which this model does not have."""
    from jepa.token_model import TokenVLM
    from pipelines import features

    if cfg.corpus:
        raise features.IncompatibleFeatures(
            f"{cfg.model} is a token-prediction model (objective: tokens): selective decoding "
            "needs an embedding stream; evaluate it with --data only"
        )
    model = TokenVLM.from_pretrained(model_dir)
    results: dict = {"model": cfg.model, "objective": "tokens"}
    if cfg.data:
        features.check_model_x_encoder(features.load(cfg.data), model.config.x_encoder, cfg.model)
        m = token_model_metrics(model, load_split(cfg.data, cfg.split))
        m.pop("texts")
        results.update(m)
    return results


def _log(cfg: EvalConfig, results: dict, figures: dict) -> str:
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
    flat.update({f"eval/{k}": v for k, v in results.get("classification", {}).items()})
    if "captioning" in results:
        flat["eval/captioning_cider"] = results["captioning"]["cider"]
    for i, r in enumerate(results.get("vqa", {}).values()):
        prefix = "eval" if i == 0 else "baseline"
        flat[f"{prefix}/vqa_acc"] = r["overall"]
        flat.update({f"{prefix}/vqa_{t}": v for t, v in r["by_type"].items()})
    for i, r in enumerate(results.get("worldprediction", {}).values()):
        flat[f"{'eval' if i == 0 else 'baseline'}/worldprediction_acc"] = r["accuracy"]
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
            if r.get("target_rate_hz") is None:  # the online point: in the summary
                continue
            logger.log(
                {
                    f"selective/{r['method']}_cider": r["cider"],
                    f"selective/{r['method']}_rate_hz": r["rate_hz"],
                },
                step=int(round(r["target_rate_hz"] * 100)),  # centi-Hz
            )
    logger.log(flat, step=0)
    client = tracking_store.client(cfg.tracking_uri)
    for path, fig in figures.items():
        client.log_figure(run_id, fig, path)
    client.log_text(run_id, json.dumps(results, indent=2, default=str), "eval_results.json")
    if results.get("vqa"):
        from pipelines.vqa_eval import format_table

        wp = [
            f"- WorldPrediction-style accuracy {r['accuracy']:.3f} ({r['items']} items, chance "
            f"{r['chance']:.2f}): {name}"
            for name, r in results.get("worldprediction", {}).items()
        ]
        client.log_text(run_id, "\n".join([format_table(results["vqa"]), "", *wp]) + "\n", "vqa.md")
    client.set_terminated(run_id, "FINISHED")
    return run_id
