"""`vljepa train-decoder`: teach the Y-decoder to turn shared-space embeddings back into text.

The decoder never sees video: it learns text -> (trained) Y-encoder embedding -> text on the
corpus captions and their paraphrases, which is enough because the predictor was trained to land
on those same Y-embeddings. The result is the whole VLJEPA with its decoder attached, saved with
`save_pretrained`, logged to a new MLflow run and registered as a new version of the model.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines import storage, tracking_store

log = logging.getLogger(__name__)


class DecoderConfig(BaseModel):
    """A `vljepa train-decoder` run."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="trained model: DIR | runs:/<id>/model | models:/<name>/<v>")
    data: str = Field(description="features root (captions and paraphrases are read from it)")
    steps: int = Field(300, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    paraphrases: bool = True
    seed: int = 0
    out: str | None = Field(
        None, description="where save_pretrained also writes (default: only the MLflow copy)"
    )
    tracking_uri: str = Field(
        default_factory=tracking_store.resolve,
        description="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)",
    )
    experiment: str = "vljepa"
    register_name: str | None = "vljepa"

    @field_validator("tracking_uri")
    @classmethod
    def _abs(cls, v: str) -> str:
        return tracking_store.absolute(v)


def corpus_texts(data: str, with_paraphrases: bool = True) -> list[str]:
    """Unique captions (+ paraphrases) of every split of a features root, in a stable order."""
    from pipelines.features import data_files

    texts: list[str] = []
    for f in data_files(data):
        fs, path = storage.filesystem(f)
        cols = ["caption", "paraphrases"] if with_paraphrases else ["caption"]
        t = pq.read_table(path, filesystem=fs, columns=cols)
        texts.extend(t.column("caption").to_pylist())
        if with_paraphrases:
            for ps in t.column("paraphrases").to_pylist():
                texts.extend(ps or [])
    return sorted({t.strip() for t in texts if t and t.strip()})


def run_decoder_training(cfg: DecoderConfig) -> dict:
    import torch

    from jepa.metrics import exact_match
    from jepa.model import VLJEPA
    from jepa.y_decoder import train_decoder
    from pipelines.train import tracking

    src_dir = tracking.resolve_model(cfg.model, cfg.tracking_uri)
    model = VLJEPA.from_pretrained(src_dir)
    texts = corpus_texts(cfg.data, cfg.paraphrases)
    if not texts:
        raise ValueError(f"no captions in {cfg.data}")
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        emb = model.embed_text(texts)
    decoder = model.attach_decoder()
    name = dt.datetime.now(dt.timezone.utc).strftime("vljepa-decoder-%Y%m%d-%H%M%S")
    params = {f"decoder.{k}": v for k, v in cfg.model_dump().items()}
    params["decoder.texts"] = len(texts)
    params["model.config"] = model.config.to_json()
    run_id = tracking.start_run(
        cfg.tracking_uri, cfg.experiment, name, params, {"vljepa.job": "train-decoder"}
    )
    client = tracking_store.client(cfg.tracking_uri)
    try:
        report = train_decoder(
            decoder,
            emb,
            texts,
            steps=cfg.steps,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        logger = tracking.StepLogger(cfg.tracking_uri, run_id, system_metrics=False)
        for i, loss in enumerate(report["losses"]):
            if (i + 1) % 10 == 0 or i + 1 == len(report["losses"]):
                logger.log({"decoder/loss": loss}, step=i + 1)
        generated = decoder.generate(emb)
        em = exact_match(generated, texts)
        logger.log(
            {"decoder/exact_match": em, "decoder/steps_per_s": report["steps_per_s"]},
            step=cfg.steps,
        )
        tracking.plot_curves(
            cfg.tracking_uri, run_id, ["decoder/loss"], "plots/decoder_loss.png", "Y-decoder loss"
        )
        samples = "\n".join(
            f"{t}\t->\t{g}" for t, g in list(zip(texts, generated, strict=True))[:50]
        )
        client.log_text(run_id, samples, "decoder_samples.tsv")
        scratch = None if cfg.out else tempfile.mkdtemp(prefix="vljepa-decoder-")
        out = cfg.out or os.path.join(scratch, "model")
        model.save_pretrained(out)
        tracking.log_model_dir(cfg.tracking_uri, run_id, out, "model")
        if scratch:  # no --out: the MLflow copy is the model
            shutil.rmtree(scratch, ignore_errors=True)
            out = f"runs:/{run_id}/model"
        version = None
        if cfg.register_name:
            version = str(
                tracking.register(
                    cfg.tracking_uri, run_id, cfg.register_name, tags={"decoder": "yes"}
                ).version
            )
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    log.info("Y-decoder: exact match %.3f on %d texts; saved to %s", em, len(texts), out)
    return {
        "run_id": run_id,
        "model_dir": out,
        "model_version": version,
        "exact_match": em,
        "final_loss": report["final_loss"],
        "texts": len(texts),
    }
