"""One validated config object for a pre-embedding job (logged whole to MLflow and `_SUCCESS`).

Everything a rerun must agree on to resume safely (the model's config hash, the sampling, the
shard size) is derived here, so `run.py` can refuse to mix outputs of two different configs.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# ViT-L/16 proportions (V-JEPA 2 vitl-fpc64-256) with random weights: a GPU throughput stand-in
# that needs no download.
VITL_RANDOM: dict[str, Any] = {
    "name_or_path": None,
    "hidden_size": 1024,
    "num_layers": 24,
    "num_heads": 16,
    "patch_size": 16,
    "tubelet_size": 2,
    "image_size": 256,
    "num_frames": 16,
}
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet")
X_ENCODER_ALIASES = {"random": {"name_or_path": None}, "vitl-random": VITL_RANDOM}


class EmbedConfig(BaseModel):
    """`vljepa embed`'s whole configuration."""

    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        description="JSONL/CSV/Parquet manifest, or a folder/.tar of WebDataset shards"
    )
    out: str = Field(description="output root (local folder or s3://bucket/prefix)")
    webdataset: bool | None = Field(
        None, description="treat --manifest as WebDataset tars (default: detect from the URI)"
    )
    preset: str = Field("tiny", description="model preset for the encoders")
    x_encoder: str | None = Field(None, description="hub name/local path, 'random', 'vitl-random'")
    y_encoder: str | None = Field(
        None, description="text backbone: hub name/local path or 'minilm'"
    )
    frames: int | None = Field(None, gt=0, description="frames per clip (default: the X-encoder's)")
    size: int | None = Field(None, gt=0, description="frame size in px (default: the X-encoder's)")
    fps: float | None = Field(None, gt=0, description="sampling rate; None = spread over the clip")
    pool_temporal: int | None = Field(
        None,
        ge=1,
        description="average-pool the token grid over time by N (default: the X-encoder's)",
    )
    pool_spatial: int | None = Field(
        None,
        ge=1,
        description="average-pool the token grid over height and width by N each "
        "(default: the X-encoder's)",
    )
    pad: bool = Field(
        False, description="repeat frames of clips that are too short instead of rejecting them"
    )
    x_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="X-encoder compute dtype (default: the preset's on CPU, bfloat16 with GPUs)",
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="stored x_tokens dtype")
    rows_per_file: int = Field(1000, gt=0, description="max rows per Parquet file")
    shard_size: int | None = Field(None, gt=0, description="manifest rows per input shard")
    batch_size: int = Field(8, gt=0, description="clips per encoder batch")
    concurrency: tuple[int, int] | None = Field(
        None, description="encoder actors MIN,MAX (default: 1,<CPUs or GPUs>)"
    )
    gpus: float = Field(0.0, ge=0, description="GPUs per encoder actor (0 = CPU)")
    torch_threads: int = Field(1, ge=1, description="torch threads per CPU actor")
    limit: int | None = Field(None, gt=0, description="embed only the first N manifest rows")
    overwrite: bool = Field(False, description="redo everything, removing earlier outputs")
    address: str | None = Field(
        None, description="Ray cluster address (default: RAY_ADDRESS, else a local cluster)"
    )
    mlflow: bool = Field(False, description="log the config and summary to an MLflow run")
    tracking_uri: str | None = Field(
        None, description="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)"
    )
    experiment: str = Field("vljepa-embed", description="MLflow experiment")
    progress: bool = Field(True, description="Ray Data progress bars")
    questions: str | None = Field(
        None,
        description="questions.jsonl to store with the clips (default: the one beside the "
        "manifest or the shards folder, if there is one; '' for none)",
    )
    # Sleep this long after each batch in the workers: lets tests interrupt a run part-way.
    debug_batch_delay_s: float = Field(0.0, ge=0)

    @field_validator("concurrency", mode="before")
    @classmethod
    def _parse_concurrency(cls, v: Any) -> Any:
        if isinstance(v, str):
            parts = [p for p in v.replace(" ", "").split(",") if p]
            if len(parts) == 1:
                parts = parts * 2
            try:
                return tuple(int(p) for p in parts)
            except ValueError:
                raise ValueError(f"expected MIN,MAX integers, got {v!r}") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> EmbedConfig:
        if self.concurrency is not None:
            lo, hi = self.concurrency
            if lo < 1 or hi < lo:
                raise ValueError(f"concurrency needs 1 <= MIN <= MAX, got {lo},{hi}")
        if not self.manifest.strip():
            raise ValueError("manifest must not be empty")
        if not self.out.strip():
            raise ValueError("out must not be empty")
        self.model()  # an unknown preset or inconsistent frames/size fails here, before any work
        return self

    @property
    def rows_per_shard(self) -> int:
        return self.shard_size or self.rows_per_file

    @property
    def is_webdataset(self) -> bool:
        """Explicit flag, else: a `.tar` or a folder (no manifest extension) means WebDataset."""
        if self.webdataset is not None:
            return self.webdataset
        ext = os.path.splitext(self.manifest.rstrip("/"))[1].lower()
        return ext not in MANIFEST_EXTENSIONS

    def model(self):
        """The VLJEPAConfig whose X- and Y-encoder parts produce the embeddings."""
        from jepa.config import VLJEPAConfig

        cfg = VLJEPAConfig.preset(self.preset)
        x = cfg.x_encoder.model_dump()
        if self.x_encoder in X_ENCODER_ALIASES:
            x.update(X_ENCODER_ALIASES[self.x_encoder])
        elif self.x_encoder is not None:  # hub name / folder: its architecture from its config
            from jepa.pretrained import x_encoder_config

            x = x_encoder_config(self.x_encoder, cfg.x_encoder).model_dump()
        if self.frames is not None:
            x["num_frames"] = self.frames
        if self.size is not None:
            x["image_size"] = self.size
        for key in ("pool_temporal", "pool_spatial"):
            if getattr(self, key) is not None:
                x[key] = getattr(self, key)
        x["fps"] = self.fps  # the sampling is part of the X-encoder's config
        x["pad"] = self.pad
        if self.x_dtype is not None:
            x["dtype"] = self.x_dtype
        elif self.gpus > 0:
            x["dtype"] = "bfloat16"  # GPU encoders run in bf16 unless told otherwise
        cfg.x_encoder = type(cfg.x_encoder).model_validate(x)
        if self.y_encoder is not None:  # its architecture and tokenizer from its own config
            from jepa.pretrained import y_encoder_config

            cfg.y_encoder = y_encoder_config(self.y_encoder, cfg.y_encoder)
        return cfg

    def sampling(self):
        from pipelines.clips import Sampling

        return Sampling.of(self.model().x_encoder)

    def resolved_concurrency(
        self, cluster_cpus: float, cluster_gpus: float
    ) -> tuple[int, int, int]:
        """(min, max, initial) actors. Given: start at MAX (the user sized it). Default: 1..(GPUs
        or CPUs), starting at 1 and letting Ray Data's autoscaler add actors while input queues."""
        if self.concurrency is not None:
            return self.concurrency[0], self.concurrency[1], self.concurrency[1]
        if self.gpus > 0:
            return 1, max(1, int(cluster_gpus // self.gpus)), 1
        return 1, max(1, int(cluster_cpus)), 1

    def resume_key(self) -> dict[str, Any]:
        """What must match between runs for their shards to be mixed in one output."""
        s = self.sampling()
        return {
            "manifest": self.manifest,
            "webdataset": self.is_webdataset,
            "rows_per_shard": self.rows_per_shard,
            "limit": self.limit,
            "config_hash": self.model().hash(),
            "frames": s.frames,
            "size": s.size,
            "fps": s.fps,
            "pad": s.pad,
            "dtype": self.dtype,
        }
