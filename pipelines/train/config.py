"""The one config object of a training run, validated before any Ray worker starts.

Everything a worker needs travels inside this object (as a plain dict), so a restarted worker
rebuilds exactly the same run, and the whole of it is logged to MLflow as the run's params.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRESETS = ("tiny", "tiny-text", "paper", "bench")


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store under ./mlruns (absolute: workers' cwd differs)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + os.path.join(os.path.abspath("mlruns"), "mlflow.db")


def absolute_tracking_uri(uri: str) -> str:
    """Make relative sqlite:/// and file paths absolute: Ray workers run in other directories."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if "://" not in uri:
        return "file://" + os.path.abspath(uri)
    return uri


class TrainConfig(BaseModel):
    """A `vljepa train` run: data, model preset, optimisation, parallelism, storage, tracking."""

    model_config = ConfigDict(extra="forbid")

    # data
    data: str = Field(
        description="pre-embedded features root (OUT of `vljepa embed`), local or s3://"
    )
    train_split: str = "train"
    val_split: str = "val"
    paraphrase_prob: float = Field(0.0, ge=0.0, le=1.0, description="use a paraphrase as target")
    max_text_len: int = Field(32, ge=4, le=512)
    mask_duplicate_captions: bool = Field(
        True, description="rows with the same caption are not each other's InfoNCE negatives"
    )
    # model
    preset: str = "tiny"
    # optimisation
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=2, description="per worker, per micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    seed: int = 0
    # parallelism
    workers: int = Field(2, ge=1)
    gpus: bool = False
    mixed_precision: bool = Field(True, description="bf16 params/compute on GPU (FSDP2 policy)")
    # evaluation, logging, checkpoints
    log_every: int = Field(10, ge=1)
    val_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    storage: str = Field("./vljepa_runs", description="Ray Train run storage, local or s3://")
    name: str | None = Field(None, description="run name (defaults to a timestamp)")
    resume_from: str | None = Field(None, description="a checkpoint dir/URI to start from")
    max_failures: int = Field(2, ge=-1)
    tracking_uri: str = Field(default_factory=default_tracking_uri)
    experiment: str = "vljepa"
    register_name: str | None = Field("vljepa", description="Model Registry name; None skips")
    export_dir: str | None = Field(
        None, description="where save_pretrained writes (default: run dir)"
    )
    address: str | None = Field(None, description="Ray address; None starts/joins a local one")
    # testing only: one worker dies once at this step (a file marks that it happened)
    fail_at_step: int | None = Field(None, ge=1)
    fail_rank: int = 1
    fail_marker: str | None = None
    fail_delay_s: float = Field(10.0, ge=0, description="pause before the injected failure")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose from {', '.join(PRESETS)}")
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _abs_tracking(cls, v: str) -> str:
        return absolute_tracking_uri(v)

    @field_validator("storage")
    @classmethod
    def _abs_storage(cls, v: str) -> str:
        return v if "://" in v else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.fail_at_step is not None and self.fail_marker is None:
            raise ValueError(
                "fail_at_step needs fail_marker (a file that makes the failure happen once)"
            )
        if self.fail_at_step is not None and self.fail_rank >= self.workers:
            raise ValueError(f"fail_rank {self.fail_rank} >= workers {self.workers}")
        if self.warmup_steps >= self.steps and self.steps > 1:
            self.warmup_steps = max(0, self.steps // 10)
        return self

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.workers * self.grad_accum

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow (every field, None as an empty string)."""
        return {k: "" if v is None else str(v) for k, v in self.model_dump().items()}
