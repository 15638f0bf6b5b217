"""Config parts for pretrained backbones named by hub name or local folder.

A pretrained part is referenced by `name_or_path` (what `from_pretrained` loads: a hub name such
as `facebook/vjepa2-vitl-fpc64-256`, `meta-llama/Llama-3.2-1B`, `google/embeddinggemma-300m`, or a
local folder written by `save_pretrained`), and its architecture fields are written next to it so
the model can be built on the meta device, hashed and checked without the weights. These functions
fill those fields from the checkpoint's own config.json, read through transformers and never from
the network (`local_files_only`: a folder, or the local hub cache). When it cannot be read (a hub
name that is not cached, offline), the architecture falls back to the paper preset's written-out
one for the published names it uses, else to the given base config's.

The weights themselves are loaded later, from exactly that `name_or_path`, by the production
code: `XEncoder.from_config`, `jepa.predictor.build_llama`, `jepa.y_encoder.build_text_backbone`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from jepa.config import PredictorConfig, XEncoderConfig, YEncoderConfig
from jepa.text import MINILM_ALIASES

log = logging.getLogger(__name__)

# Keys of a transformers config's to_dict() that describe how it is run or saved, not the
# architecture (dtype too: pretrained weights are always loaded in float32, see jepa/text.py).
_NOT_ARCHITECTURE = frozenset(
    {
        "transformers_version",
        "architectures",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "dtype",
        "torch_dtype",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "use_cache",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "finetuning_task",
        "auto_map",
        "quantization_config",
    }
)


def architecture(config) -> dict[str, Any]:
    """A transformers config as plain architecture kwargs (model_type included)."""
    d = config.to_dict()
    return {k: v for k, v in d.items() if k not in _NOT_ARCHITECTURE and not k.startswith("_")}


def _local(name_or_path: str) -> str:
    path = os.path.expanduser(name_or_path)
    return os.path.abspath(path) if os.path.isdir(path) else name_or_path


def _read(loader, name_or_path: str):
    """`loader.from_pretrained(name_or_path)` without the network; None when it cannot be read."""
    try:
        return loader.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as e:
        if os.path.isdir(name_or_path):  # a folder that is not a checkpoint: say so now
            raise ValueError(f"{name_or_path}: cannot read its config.json ({e})") from e
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.info("%s: no config offline (%s); using the written-out one", name_or_path, reason)
        return None


def _published(part: str, name_or_path: str):
    """The paper preset's part when it references this very name (its architecture is written
    out in jepa/presets.py from the published config.json), else None."""
    from jepa.presets import build_preset

    p = getattr(build_preset("paper"), part)
    return p if p.name_or_path == name_or_path else None


# ------------------------------------------------------------------ X-encoder (V-JEPA 2)

# XEncoderConfig fields that describe the checkpoint (the rest is the user's sampling/pooling).
X_ARCH_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "mlp_ratio",
    "patch_size",
    "tubelet_size",
)


def x_encoder_config(name_or_path: str, base: XEncoderConfig) -> XEncoderConfig:
    """`base` with `name_or_path` set and the encoder's architecture (width, depth, heads, MLP
    ratio, patch and tubelet) taken from the checkpoint; the sampling (image_size, num_frames,
    fps, pad), pooling, seed and dtype stay the user's."""
    from transformers import AutoConfig

    name_or_path = _local(name_or_path)
    out = base.model_dump()
    got = _read(AutoConfig, name_or_path)
    if got is not None:
        if got.model_type != "vjepa2":
            raise ValueError(f"{name_or_path}: a {got.model_type!r} model, not a V-JEPA 2 one")
        out.update(
            hidden_size=int(got.hidden_size),
            num_layers=int(got.num_hidden_layers),
            num_heads=int(got.num_attention_heads),
            mlp_ratio=float(got.mlp_ratio),
            patch_size=int(got.patch_size),
            tubelet_size=int(got.tubelet_size),
        )
    else:
        ref = _published("x_encoder", name_or_path) or base
        out.update({k: getattr(ref, k) for k in X_ARCH_FIELDS})
    out["name_or_path"] = name_or_path
    return XEncoderConfig.model_validate(out)


# ------------------------------------------------------------------ predictor (Llama layers)


def predictor_config(
    name_or_path: str, base: PredictorConfig, keep_last_layers: int | None = None
) -> PredictorConfig:
    """The predictor on a pretrained Llama: its last `keep_last_layers` layers (default: all)
    with its token table and tokenizer; `arch` = the Llama config with num_hidden_layers = the
    layers kept; queries through its own token table, not a query encoder. max_query_length and
    seed stay `base`'s."""
    from transformers import AutoConfig

    name_or_path = _local(name_or_path)
    got = _read(AutoConfig, name_or_path)
    if got is not None:
        if got.model_type != "llama":
            raise ValueError(
                f"{name_or_path}: a {got.model_type!r} model; the predictor takes Llama layers"
            )
        total = int(got.num_hidden_layers)
        keep = keep_last_layers or total
        if keep > total:
            raise ValueError(f"{name_or_path} has {total} layers: cannot keep the last {keep}")
        arch = architecture(got)
        arch.pop("model_type")
    else:
        ref = _published("predictor", name_or_path) or base
        arch = dict(ref.arch)
        keep = keep_last_layers or ref.keep_last_layers or int(arch["num_hidden_layers"])
    arch["num_hidden_layers"] = keep
    out = base.model_dump()
    out.update(
        name_or_path=name_or_path,
        keep_last_layers=keep,
        arch=arch,
        tokenizer=name_or_path,
        # a pretrained Llama reads queries through its own token table (the paper's predictor)
        query_encoder=None,
    )
    return PredictorConfig.model_validate(out)


# ------------------------------------------------------------------ Y-encoder (text model)


def y_encoder_config(name_or_path: str, base: YEncoderConfig) -> YEncoderConfig:
    """The Y-encoder on a pretrained text model (EmbeddingGemma / Gemma 3 text, BERT-like):
    `arch` = its config (model_type and hidden_size included), its own tokenizer; max_length
    and seed stay `base`'s. The MiniLM aliases mean the MiniLM shipped with the package."""
    from transformers import AutoConfig

    out = base.model_dump()
    if name_or_path in MINILM_ALIASES:
        from jepa.presets import MINILM_ARCH

        out.update(name_or_path=name_or_path, tokenizer="minilm", arch=dict(MINILM_ARCH))
        return YEncoderConfig.model_validate(out)
    name_or_path = _local(name_or_path)
    got = _read(AutoConfig, name_or_path)
    if got is not None:
        arch = architecture(got)
    else:
        ref = _published("y_encoder", name_or_path) or base
        arch = dict(ref.arch)
    out.update(name_or_path=name_or_path, tokenizer=name_or_path, arch=arch)
    return YEncoderConfig.model_validate(out)
