"""Session fixtures shared by tests/pipelines and tests/serve: one pre-embedded synthetic corpus,
the model trained on it (registered on the session's MLflow server) and the same model with its
trained Y-decoder (a new registered version). Registered in tests/conftest.py, so any package can
use them; each runs once per session.

`embedded_corpus` runs the real pre-embedding (`pipelines.embed`) once per session when it is
importable, else a small in-process embedder with the same decode (decord) and X-encoder code and
the same Parquet layout (brief PARQUET contract), so training tests never depend on test order.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# 26 event classes x 20 clips; 20% of each class goes to val -> 104 val clips (the retrieval
# acceptance asks for >= 100), 416 train clips (16 per event: with 6 the predictor overfits).
EMBED_CLIPS = int(os.environ.get("VLJEPA_TEST_EMBED_CLIPS", "520"))
EMBED_VAL_FRACTION = 0.2
# Streams for the selective-decoding evaluation: 10 (87 events) rather than 2 (15), so one event
# decoded differently moves the corpus CIDEr by ~0.03 rather than ~0.17.
EMBED_STREAMS = 10
REGISTER_NAME = "vljepa-test"
# The corpus is embedded with `--pool-temporal 2` (4x4x4 = 64 tokens a clip, not the tiny
# preset's 128): three quarters of a training step is the predictor over the visual tokens, and
# every training fixture and most serve tests read these features. It also keeps the pooled path
# (features carrying their pooling into training and serving) on the suite's main road.
EMBED_POOL_TEMPORAL = 2


@dataclass
class EmbeddedCorpus:
    corpus: Path  # synth output (manifest.jsonl, streams.jsonl, videos/)
    features: Path  # OUT of the pre-embedding (OUT/data/*.parquet)
    preset: str
    n_train: int
    n_val: int
    seconds: float


def embed_in_process(corpus: Path, out: Path, preset: str = "tiny", pool_temporal: int = 1) -> None:
    """Decode each clip with decord, run the X-encoder, write OUT/data/part-00000-0.parquet."""
    import io

    import decord
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jepa.config import VLJEPAConfig
    from jepa.x_encoder import XEncoder
    from jepa.y_encoder import YEncoder

    cfg = VLJEPAConfig.preset(preset)
    cfg.x_encoder.pool_temporal = pool_temporal
    xenc = XEncoder.from_config(cfg.x_encoder)
    yenc = YEncoder.from_config(cfg.y_encoder, cfg.shared_dim)
    rows = [
        json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line
    ]
    frames = []
    for r in rows:
        vr = decord.VideoReader(io.BytesIO((corpus / r["video"]).read_bytes()), num_threads=1)
        idx = np.linspace(0, len(vr) - 1, xenc.num_frames).round().astype(int)
        frames.append(vr.get_batch(list(idx)).asnumpy())
    x = xenc.encode_numpy(np.stack(frames), batch_size=32)
    captions = [r["caption"] for r in rows]
    y = yenc.backbone_embed(captions).float().numpy()
    tok = yenc.tokenizer
    cap_ids = [tok(c)["input_ids"] for c in captions]
    para_ids = [[tok(p)["input_ids"] for p in r["paraphrases"]] for r in rows]
    meta = {
        "vljepa.schema_version": "1",
        "vljepa.x_encoder": cfg.x_encoder.model_dump_json(),
        "vljepa.y_encoder": cfg.y_encoder.model_dump_json(),
        "vljepa.preset": preset,
        "vljepa.config_hash": cfg.hash(),
        "vljepa.frames": str(xenc.num_frames),
        "vljepa.size": str(xenc.image_size),
        "vljepa.fps": "0",
    }
    table = pa.table(
        {
            "clip_id": [r["id"] for r in rows],
            "video": [r["video"] for r in rows],
            "start_s": pa.array([float(r.get("start", 0)) for r in rows], pa.float32()),
            "end_s": pa.array([float(r.get("end", 0)) for r in rows], pa.float32()),
            "caption": captions,
            "paraphrases": pa.array([r["paraphrases"] for r in rows], pa.list_(pa.string())),
            "label": [r["label"] for r in rows],
            "split": [r["split"] for r in rows],
            "x_tokens": pa.FixedShapeTensorArray.from_numpy_ndarray(x),
            "y_embedding": pa.FixedShapeTensorArray.from_numpy_ndarray(y),
            "caption_ids": pa.array(cap_ids, pa.list_(pa.int32())),
            "paraphrase_ids": pa.array(para_ids, pa.list_(pa.list_(pa.int32()))),
        }
    )
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "data" / "part-00000-0.parquet")
    (out / "_SUCCESS").write_text(json.dumps({"clips": len(rows)}))


def _embed_with_pipeline(corpus: Path, out: Path, preset: str) -> bool:
    """The real `vljepa embed` (Ray Data) when it exists; False when it is not there yet."""
    try:
        from pipelines.embed import EmbedConfig, run_embed  # type: ignore[attr-defined]
    except ImportError:
        return False
    run_embed(
        EmbedConfig(
            manifest=str(corpus / "manifest.jsonl"),
            out=str(out),
            preset=preset,
            pool_temporal=EMBED_POOL_TEMPORAL,
        )
    )
    return True


def embed_corpus(session_dir: Path) -> EmbeddedCorpus:
    """~520 synthetic clips (>= 100 val) pre-embedded with the tiny preset."""
    import pyarrow.parquet as pq

    from pipelines.synth import SynthConfig, generate

    t0 = time.monotonic()
    corpus = session_dir / "train_corpus"
    generate(
        SynthConfig(
            out=str(corpus),
            clips=EMBED_CLIPS,
            streams=EMBED_STREAMS,
            seed=5,
            val_fraction=EMBED_VAL_FRACTION,
        )
    )
    out = session_dir / "train_features"
    if os.environ.get("VLJEPA_TEST_EMBED_INPROCESS") == "1" or not _embed_with_pipeline(
        corpus, out, "tiny"
    ):
        embed_in_process(corpus, out, "tiny", EMBED_POOL_TEMPORAL)
    split = pq.read_table(out / "data", columns=["split"]).column("split").to_pylist()
    return EmbeddedCorpus(
        corpus=corpus,
        features=out,
        preset="tiny",
        n_train=split.count("train"),
        n_val=split.count("val"),
        seconds=time.monotonic() - t0,
    )


@dataclass
class TrainedModel:
    cfg: object  # TrainConfig
    result: object  # pipelines.train.trainer.TrainResult
    tracking_uri: str
    seconds: float


def train_stage1(
    embedded_corpus: EmbeddedCorpus, tracking_uri: str, session_dir: Path, *, seed: int = 0
) -> TrainedModel:
    """The acceptance run: tiny preset, 2 CPU workers (FSDP2 over gloo), tracked on the real
    MLflow server and registered; shared by the train and eval tests (`seed`: other stage-1
    models for benchmarks/stage2_spread.py)."""
    from pipelines.train import TrainConfig
    from pipelines.train.trainer import run_training

    cfg = TrainConfig(
        data=str(embedded_corpus.features),
        preset=embedded_corpus.preset,
        workers=2,
        steps=int(os.environ.get("VLJEPA_TEST_TRAIN_STEPS", "120")),
        batch_size=32,
        warmup_steps=10,
        log_every=5,
        val_every=40,
        checkpoint_every=40,
        storage=str(session_dir / "train_runs"),
        name="accept",
        tracking_uri=tracking_uri,
        experiment="vljepa-tests",
        register_name=REGISTER_NAME,
        seed=seed,
    )
    t0 = time.monotonic()
    result = run_training(cfg)
    return TrainedModel(
        cfg=cfg, result=result, tracking_uri=tracking_uri, seconds=time.monotonic() - t0
    )


def train_decoder(trained_model: TrainedModel, embedded_corpus: EmbeddedCorpus, cwd: Path) -> dict:
    """`vljepa train-decoder` on the acceptance run's model: the Y-decoder trained through the
    trained Y-encoder, registered as a new version of REGISTER_NAME; its JSON summary
    (model_version, run_id, exact_match, ...)."""
    from tests.conftest import cli_runner
    from tests.helpers import cli_json

    cwd.mkdir(parents=True, exist_ok=True)
    run = cli_runner(cwd)
    out = run(
        "train-decoder",
        "--model",
        f"models:/{REGISTER_NAME}/{trained_model.result.model_version}",
        "--data",
        embedded_corpus.features,
        "--steps",
        "250",
        "--tracking-uri",
        trained_model.tracking_uri,
        "--experiment",
        "vljepa-tests",
        "--register-name",
        REGISTER_NAME,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return cli_json(out.stdout)


# --------------------------------------------------------------------------- fixtures
# Each waits for the session's background chain (tests/session_models.py) when one was started
# at collection, and otherwise runs its stage here, in the test process.


def in_process_dir(session_dir: Path) -> Path:
    """Where a fixture makes its stage when the chain did not: not the session folder the chain
    writes into, which a chain that failed or was stopped part-way leaves half-made (a corpus
    already marked complete refuses a second `generate`; a run's checkpoints would be resumed)."""
    out = session_dir / "in-process"
    out.mkdir(exist_ok=True)
    return out


@pytest.fixture(scope="session")
def embedded_corpus(session_dir: Path, ray_session: str) -> EmbeddedCorpus:  # noqa: ARG001
    from tests import session_models

    got = session_models.wait("embedded_corpus")
    return got if got is not None else embed_corpus(in_process_dir(session_dir))


@pytest.fixture(scope="session")
def trained_model(
    embedded_corpus: EmbeddedCorpus, mlflow_server, session_dir: Path
) -> TrainedModel:
    from tests import session_models

    got = session_models.wait("trained_model")
    if got is not None:
        return got
    return train_stage1(embedded_corpus, mlflow_server.url, in_process_dir(session_dir))


@pytest.fixture(scope="session")
def decoded_model(
    trained_model: TrainedModel, embedded_corpus: EmbeddedCorpus, tmp_path_factory
) -> dict:
    from tests import session_models

    got = session_models.wait("decoded_model")
    if got is not None:
        return got
    return train_decoder(trained_model, embedded_corpus, tmp_path_factory.mktemp("train-decoder"))
