"""Session fixture: the stage-2 (SFT) model, trained with queries from the session's stage-1
model (`trained_model`) on the same features, with one worker killed part-way (the run must
resume from its checkpoint and still learn). Its run storage and checkpoints are on the session's
S3 server, so the same run also shows the kill-and-resume path through S3 (the worker dies right
after a checkpoint report, before the controller polls it). Registered on the session's MLflow
server as STAGE2_NAME; shared by the stage-2 training, evaluation and Serve tests. Registered in
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
# The README's stage-2 flags on CPUs: 300 steps at lr 5e-4 (half the tiny preset's default) after
# 60 warmup steps, question rows balanced by type (the default), has_colour x3 and colour_before /
# colour_after x2, a quarter caption rows spread over the clips, the Y-encoder frozen
# (`--y-lr-mult 0`: the predictor learns towards the answer space stage 1 left, in half the time
# a step: README). Why, measured with benchmarks/stage2_spread.py (rank 1 killed, 2 seeds from
# each of 3 stage-1 models) and ad-hoc runs:
#  * at lr 1e-3 every type reached 0.9 in 5 of 10 benchmark runs (240 or 300 steps): has_colour
#    (a yes/no about a colour the question names) underfit on its own training clips, direction
#    misread on val clips (0.87 asked with train phrasings too: not the wording), the before/after
#    pair now and then lost. At 5e-4 with 10 warmup steps: 5 of 6, the miss has_colour (0.825 on
#    val, 0.87 on its own training clips);
#  * has_colour x5 fixed that one (0.997 and 1.000 ad hoc), but the suite's run with it lost
#    colour_before (0.750, CI run 13): x5 takes rows from the before/after pair;
#  * a longer warmup takes rows from no one. 30 steps: 6 of 6, but one run's has_colour at 0.903,
#    and 0.897 when rerun (the same stage-1 model and seed); 60 steps took that run to 0.994
#    (train 1.000), and the benchmark (3 new stage-1 models) to 6 of 6, lowest has_colour 0.906,
#    next lowest 0.948 (stage2_spread.md). has_colour is still the thin margin;
#  * the before/after pair needs the clip's temporal order (blue->red and red->blue show the same
#    two colours): at single weight one stage-1 model's stage 2 answered "red" for both on its
#    own training clips; doubled, the same run scored 1.000 on both.
STAGE2_STEPS = int(os.environ.get("VLJEPA_TEST_SFT_STEPS", "300"))
STAGE2_LR = float(os.environ.get("VLJEPA_TEST_SFT_LR", "5e-4"))
STAGE2_WARMUP = int(os.environ.get("VLJEPA_TEST_SFT_WARMUP", "60"))
STAGE2_QUESTION_WEIGHTS = {"has_colour": 3, "colour_before": 2, "colour_after": 2}
STAGE2_BATCH = 24  # per worker
STAGE2_STORAGE = "train-runs"  # on the session's S3 bucket
# tests/pipelines/test_stage2.py's VQA bar on held-out paraphrases, issue 13's: every question
# type >= 0.9 (which puts the overall there too).
VQA_BAR = 0.9
VQA_BAR_RULE = f"every type >= {VQA_BAR}"


def meets_vqa_bar(by_type: dict[str, float]) -> bool:
    """The suite's bar (VQA_BAR_RULE) on one model's val accuracy by question type; the overall
    is their mean weighted by count, so it needs no check of its own."""
    return min(by_type.values()) >= VQA_BAR


@dataclass
class Stage2Model:
    cfg: object  # TrainConfig
    result: object  # TrainResult
    init_uri: str  # the stage-1 model it started from
    uri: str  # models:/STAGE2_NAME/<version>
    death: dict  # what the killed worker wrote (rank, step)
    seconds: float


def stage2_config(
    init: str,
    embedded_corpus: EmbeddedCorpus,
    session_dir: Path,
    storage: str,
    tracking_uri: str,
    *,
    seed: int = 0,
    kill: bool = True,
    name: str = "accept-sft",
    register_name: str = STAGE2_NAME,
):
    """The suite's stage-2 TrainConfig (also benchmarks/stage2_spread.py's, across seeds): rank 1
    killed at the half-way checkpoint unless `kill` is False."""
    from pipelines.train import TrainConfig

    half = STAGE2_STEPS // 2
    failure = {
        "fail_at_step": half,
        "fail_rank": 1,
        "fail_marker": str(session_dir / "sft-failed-once"),
    }
    return TrainConfig(
        data=str(embedded_corpus.features),
        stage="sft",
        init=init,
        preset=embedded_corpus.preset,
        workers=2,
        steps=STAGE2_STEPS,
        lr=STAGE2_LR,
        batch_size=STAGE2_BATCH,
        warmup_steps=STAGE2_WARMUP,
        log_every=10,
        val_every=STAGE2_STEPS,  # the side-by-side eval scores it again
        checkpoint_every=half,
        max_failures=1,
        **(failure if kill else {}),
        storage=storage,
        name=name,
        export_dir=str(session_dir / "sft-model"),  # S3 storage keeps only the MLflow copy
        tracking_uri=tracking_uri,
        experiment="vljepa-tests",
        register_name=register_name,
        seed=seed,
        # the README's stage-2 flags
        question_weights=STAGE2_QUESTION_WEIGHTS,
        y_lr_mult=0.0,
    )


def train_stage2(
    trained_model: TrainedModel, embedded_corpus: EmbeddedCorpus, session_dir: Path, storage: str
) -> Stage2Model:
    """The run described above, its run storage under `storage` (the session's S3 bucket)."""
    from pipelines.train.trainer import run_training

    init = f"models:/{REGISTER_NAME}/{trained_model.result.model_version}"
    cfg = stage2_config(init, embedded_corpus, session_dir, storage, trained_model.tracking_uri)
    marker = Path(cfg.fail_marker)
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


@pytest.fixture(scope="session")
def stage2_model(
    trained_model: TrainedModel, embedded_corpus: EmbeddedCorpus, session_dir: Path, s3
) -> Stage2Model:
    """Trained here, in the test process (not in tests/session_models.py's chain: see there)."""
    return train_stage2(trained_model, embedded_corpus, session_dir, s3.uri(STAGE2_STORAGE))
