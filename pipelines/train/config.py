"""The one config object of a training run, validated before any Ray worker starts.

Everything a worker needs travels inside this object (as a plain dict), so a restarted worker
rebuilds exactly the same run, and the whole of it is logged to MLflow as the run's params.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jepa.config import PRESETS
from pipelines import tracking_store

# How stage-2 rows get their questions (pipelines.train.data.load_splits says what each means).
QuestionSampling = Literal["balanced", "uniform"]

# Training defaults per preset, where they differ from the tiny presets' (METHOD.md, stage 1: a
# constant 5e-5; the small presets learn in minutes at 1e-3 with a cosine decay).
PRESET_TRAINING: dict[str, dict[str, object]] = {
    "paper": {"lr": 5e-5, "schedule": "constant", "warmup_steps": 0},
}
DEFAULT_TRAINING: dict[str, object] = {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 20}


def _preset_default(key: str) -> str:
    """'(default: 5e-05 for paper, else 0.001)': the help text of a per-preset default."""
    special = ", ".join(f"{v[key]} for {p}" for p, v in PRESET_TRAINING.items() if key in v)
    return f"(default: {special + ', else ' if special else ''}{DEFAULT_TRAINING[key]})"


class TrainConfig(BaseModel):
    """A `vljepa train` run: data, model preset, optimisation, parallelism, storage, tracking."""

    model_config = ConfigDict(extra="forbid")

    # data
    data: str = Field(
        description="pre-embedded features root (OUT of `vljepa embed`), local or s3://"
    )
    train_split: str = Field("train", description="value of the split column to train on")
    val_split: str = Field("val", description="value of the split column to validate on")
    paraphrase_prob: float = Field(0.0, ge=0.0, le=1.0, description="use a paraphrase as target")
    max_text_len: int = Field(32, ge=4, le=512, description="caption tokens kept per target")
    mask_duplicate_captions: bool = Field(
        True, description="rows with the same caption are not each other's InfoNCE negatives"
    )
    stage: Literal["captions", "sft"] = Field(
        "captions",
        description="'captions' (stage 1: a clip predicts its caption, no query) or 'sft' "
        "(stage 2: a clip and a question predict the answer, mixed with --caption-mix caption "
        "rows; the features need questions, and the model is registered as trained with queries)",
    )
    init: str | None = Field(
        None,
        description="start from these weights (step 0, fresh optimizer): models:/NAME/VERSION, "
        "runs:/ID/model, a saved model folder, or a run's checkpoint (dir or s3://)",
    )
    caption_mix: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="sft: share of rows that train on their caption (stage-1 data) instead of "
        "a question; with balanced sampling these caption rows are spread evenly over the clips "
        "(the corpus's mix, not the question balance)",
    )
    question_sampling: QuestionSampling = Field(
        "balanced",
        description="sft: 'balanced' (one row per clip and question type, each type's rows "
        "repeated up to the commonest type's count, so a type few clips are asked is seen as "
        "often; the row's phrasing is drawn each time) or 'uniform' (one row per clip, one of its "
        "questions at random: the corpus's own mix)",
    )
    question_weights: dict[str, int] = Field(
        default_factory=dict,
        description="sft, balanced: extra copies of a question type's rows on top of the "
        "balance, as TYPE=N[,TYPE=N] (e.g. has_colour=2): for a type that is still underfit on "
        "training clips when the others are learnt",
    )
    # model: the preset gives the predictor and Y-encoder; the X-encoder (and its sampling)
    # always comes from the features' metadata
    objective: Literal["embedding", "tokens"] = Field(
        "embedding",
        description="what the predictor learns to output: 'embedding' (VL-JEPA: the Y-encoder's "
        "embedding of the caption) or 'tokens' (the baseline VLM: the same predictor layers, "
        "causal over the caption, an LM head, cross-entropy on the caption tokens)",
    )
    loss: Literal["infonce", "cosine", "l2"] = Field(
        "infonce",
        description="embedding objective's loss: bidirectional InfoNCE, or cosine / L2 regression "
        "on the normalised embeddings (the paper's loss ablation)",
    )
    preset: str = Field("tiny", description="model preset: " + ", ".join(PRESETS))
    predictor: str | None = Field(
        None, description="pretrained Llama for the predictor: hub name or local folder"
    )
    predictor_layers: int | None = Field(
        None, ge=1, description="keep the last N layers of the pretrained predictor (default: all)"
    )
    y_encoder: str | None = Field(
        None, description="pretrained Y-encoder text model: hub name, local folder or 'minilm'"
    )
    temperature: float | None = Field(
        None, gt=0, description="InfoNCE temperature (default: the preset's)"
    )
    learnable_temperature: bool | None = Field(
        None, description="learn the temperature (default: the preset's)"
    )
    y_lr_mult: float | None = Field(
        None, ge=0, description="Y-encoder learning-rate multiplier (default: the preset's)"
    )
    freeze_y_embeddings: bool = Field(
        False,
        description="keep the Y-encoder's token embedding table as loaded (its layers and head "
        "still train at y_lr_mult): a corpus reaches few of its rows, yet its whole dense "
        "gradient is reduce-scattered every step (MiniLM's: nearly half of what the tiny preset "
        "trains)",
    )
    shared_dim: int | None = Field(
        None, gt=0, description="shared embedding width (default: the preset's)"
    )
    # optimisation
    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=2, description="per worker, per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per step")
    lr: float | None = Field(None, gt=0, description="peak learning rate " + _preset_default("lr"))
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_steps: int | None = Field(
        None, ge=0, description="linear warmup steps " + _preset_default("warmup_steps")
    )
    schedule: Literal["constant", "cosine"] | None = Field(
        None, description="after warmup " + _preset_default("schedule")
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor, as a fraction of lr")
    grad_clip: float = Field(1.0, ge=0, description="max grad norm; 0 disables clipping")
    seed: int = Field(0, description="model init and data order")
    # parallelism
    workers: int = Field(2, ge=1, description="Ray Train workers")
    cpus_per_worker: int = Field(
        1,
        ge=1,
        description="CPUs Ray reserves for each worker; without GPUs also its torch threads",
    )
    gpus: bool = Field(False, description="one GPU per worker, NCCL, bf16")
    mixed_precision: bool = Field(True, description="bf16 params/compute on GPU (FSDP2 policy)")
    # evaluation, logging, checkpoints
    log_every: int = Field(10, ge=1, description="steps between metric logs")
    val_every: int = Field(100, ge=1, description="steps between validations")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in storage")
    storage: str = Field("./vljepa_runs", description="Ray Train run storage, local or s3://")
    name: str | None = Field(None, description="run name (defaults to a timestamp)")
    resume_from: str | None = Field(None, description="a checkpoint dir/URI to start from")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts allowed")
    tracking_uri: str = Field(
        default_factory=tracking_store.resolve,
        description="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)",
    )
    experiment: str = Field("vljepa", description="MLflow experiment")
    register_name: str | None = Field("vljepa", description="Model Registry name; '' skips")
    export_dir: str | None = Field(
        None,
        description="where save_pretrained writes (default: model/ in the run's folder; with "
        "S3 storage, only the MLflow copy is kept)",
    )
    address: str | None = Field(None, description="Ray address; None starts/joins a local one")
    # testing only: one worker dies once at the end of this step, at a checkpoint step right
    # after the checkpoint report (a file marks that it happened)
    fail_at_step: int | None = Field(None, ge=1)
    fail_rank: int = 1
    fail_marker: str | None = None

    @field_validator("question_weights", mode="before")
    @classmethod
    def _parse_weights(cls, v: object) -> object:
        """The command line gives TYPE=N,TYPE=N; a config file or Python gives a mapping."""
        if not isinstance(v, str):
            return v
        out: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in v.split(","))):
            kind, sep, n = item.partition("=")
            if not sep or not kind.strip():
                raise ValueError(f"expected TYPE=N[,TYPE=N], got {item!r}")
            out[kind.strip()] = n.strip()
        return out

    @field_validator("question_weights")
    @classmethod
    def _positive_weights(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n < 1}
        if bad:
            raise ValueError(f"weights are copies of a type's rows, at least 1: {bad}")
        return v

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose from {', '.join(PRESETS)}")
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _abs_tracking(cls, v: str) -> str:
        return tracking_store.absolute(v)

    @field_validator("register_name")
    @classmethod
    def _empty_skips(cls, v: str | None) -> str | None:
        return v or None

    @field_validator("storage")
    @classmethod
    def _abs_storage(cls, v: str) -> str:
        return v if "://" in v else os.path.abspath(os.path.expanduser(v))

    @field_validator("resume_from", "init", "export_dir")
    @classmethod
    def _abs_local_path(cls, v: str | None) -> str | None:
        """A relative folder means the caller's: the workers that open it run elsewhere."""
        if not v or ":/" in v:  # s3://, models:/, runs:/
            return v
        return os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        # Unset training knobs take the preset's defaults, so what is logged is what ran.
        for k, v in {**DEFAULT_TRAINING, **PRESET_TRAINING.get(self.preset, {})}.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if self.objective == "tokens" and self.loss != "infonce":
            raise ValueError(
                f"loss {self.loss!r} is a loss of the embedding objective; --objective tokens "
                "trains with cross-entropy on the caption tokens"
            )
        if self.objective == "tokens" and self.freeze_y_embeddings:
            raise ValueError(
                "freeze_y_embeddings freezes the Y-encoder's token table; --objective tokens "
                "trains no Y-encoder"
            )
        if self.objective == "tokens" and self.stage == "sft":
            raise ValueError(
                "stage 'sft' trains the embedding objective with queries; --objective tokens "
                "has no stage 2"
            )
        if self.question_weights and (self.stage, self.question_sampling) != ("sft", "balanced"):
            raise ValueError(
                "question_weights weighs the balanced question rows of stage 'sft' "
                f"(this run: stage {self.stage!r}, question_sampling {self.question_sampling!r})"
            )
        if self.predictor_layers is not None and self.predictor is None:
            raise ValueError("predictor_layers needs predictor (a pretrained Llama to cut)")
        if self.fail_at_step is not None and self.fail_marker is None:
            raise ValueError(
                "fail_at_step needs fail_marker (a file that makes the failure happen once)"
            )
        if self.fail_at_step is not None and self.fail_rank >= self.workers:
            raise ValueError(f"fail_rank {self.fail_rank} >= workers {self.workers}")
        if self.warmup_steps >= self.steps and self.steps > 1:
            object.__setattr__(self, "warmup_steps", max(0, self.steps // 10))
        return self

    def build_model_config(self, features, init_config=None):
        """The VLJEPAConfig this run trains: the X-encoder (and its sampling) from the features
        (`pipelines.features.Features`), the predictor and Y-encoder from the preset or the
        pretrained folders/names given, the tunables that are set. `init_config`, the config of
        the saved model `--init` names, replaces the preset (its weights must fit)."""
        from jepa import pretrained
        from jepa.config import VLJEPAConfig
        from pipelines.features import check_model_x_encoder, check_tokenizer

        if init_config is not None:
            check_model_x_encoder(features, init_config.x_encoder, self.init or "--init")
            cfg = init_config.model_copy(deep=True)
            cfg.detector = None
        else:
            cfg = VLJEPAConfig.preset(self.preset)
        cfg.x_encoder = features.x_encoder
        if self.stage == "sft":
            cfg.trained_with_queries = True
        if self.predictor:
            cfg.predictor = pretrained.predictor_config(
                self.predictor, cfg.predictor, self.predictor_layers
            )
        if self.y_encoder:
            cfg.y_encoder = pretrained.y_encoder_config(self.y_encoder, cfg.y_encoder)
        for name in ("temperature", "learnable_temperature", "y_lr_mult", "shared_dim"):
            value = getattr(self, name)
            if value is not None:
                setattr(cfg, name, value)
        check_tokenizer(features, cfg.y_encoder)
        if self.objective == "tokens":
            from pipelines.features import check_caption_tokenizer

            check_caption_tokenizer(features, cfg.predictor)
        return cfg

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.workers * self.grad_accum

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow (every field, None as an empty string)."""
        return {k: "" if v is None else str(v) for k, v in self.model_dump().items()}
