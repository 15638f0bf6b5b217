"""Session fixture: the stage-2 (SFT) model, trained with queries from the session's stage-1
model (`trained_model`) on the same features, with one worker killed part-way (the run must
resume from its checkpoint and still learn). Registered on the session's MLflow server as
STAGE2_NAME; shared by the stage-2 training, evaluation and Serve tests. Registered in
tests/conftest.py."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.trained_models import REGISTER_NAME, EmbeddedCorpus, TrainedModel

STAGE2_NAME = "vljepa-test-sft"
# Question rows balanced by type (the default), has_colour doubled, a quarter caption rows
# spread over the clips: 240 steps of 48 rows gave 0.977 over all held-out paraphrases (every
# type >= 0.948) and WorldPrediction-style 0.856 (its stage-1 model 0.942).
STAGE2_STEPS = int(os.environ.get("VLJEPA_TEST_SFT_STEPS", "240"))
STAGE2_BATCH = 24  # per worker


@dataclass
class Stage2Model:
    cfg: object  # TrainConfig
    result: object  # TrainResult
    init_uri: str  # the stage-1 model it started from
    uri: str  # models:/STAGE2_NAME/<version>
    death: dict  # what the killed worker wrote (rank, step)
    seconds: float


@pytest.fixture(scope="session")
def stage2_model(
    trained_model: TrainedModel, embedded_corpus: EmbeddedCorpus, session_dir: Path
) -> Stage2Model:
    from pipelines.train import TrainConfig
    from pipelines.train.trainer import run_training

    init = f"models:/{REGISTER_NAME}/{trained_model.result.model_version}"
    marker = session_dir / "sft-failed-once"
    half = STAGE2_STEPS // 2
    cfg = TrainConfig(
        data=str(embedded_corpus.features),
        stage="sft",
        init=init,
        preset=embedded_corpus.preset,
        workers=2,
        steps=STAGE2_STEPS,
        batch_size=STAGE2_BATCH,
        warmup_steps=10,
        log_every=10,
        val_every=half,
        checkpoint_every=half,
        max_failures=1,
        fail_at_step=half,
        fail_rank=1,
        fail_marker=str(marker),
        storage=str(session_dir / "train_runs"),
        name="accept-sft",
        tracking_uri=trained_model.tracking_uri,
        experiment="vljepa-tests",
        register_name=STAGE2_NAME,
        question_weights={"has_colour": 2},  # the README's stage-2 flags
    )
    t0 = time.monotonic()
    result = run_training(cfg)
    return Stage2Model(
        cfg=cfg,
        result=result,
        init_uri=init,
        uri=f"models:/{STAGE2_NAME}/{result.model_version}",
        death=json.loads(marker.read_text()) if marker.exists() else {},
        seconds=time.monotonic() - t0,
    )
