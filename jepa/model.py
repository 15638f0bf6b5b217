"""VL-JEPA: frozen X-encoder, trained predictor and Y-encoder, optional Y-decoder.

The model predicts the Y-encoder's embedding of the target text from visual tokens (+ an
optional query). Training usually runs on pre-extracted X-encoder tokens, so `forward` takes
tokens, not pixels; `embed_video` runs the whole path from frames for serving.

Saved form (`save_pretrained`): `config.json` (the VLJEPAConfig + `format_version`),
`model.safetensors` (every weight that is not a reference to a published checkpoint: predictor,
Y-encoder, heads, logit scale, the Y-decoder when attached, and the X-encoder when its weights
were drawn from a seed), and `architecture.json` (the exact transformers configs of the built
backbones, so loading never needs the hub for architecture or weights that were saved).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jepa import saved
from jepa.config import FORMAT_VERSION, VLJEPAConfig
from jepa.loss import info_nce
from jepa.optim import adamw_param_groups
from jepa.predictor import Predictor
from jepa.saved import ARCH_FILE, WEIGHTS_FILE
from jepa.text import MINILM_ALIASES
from jepa.x_encoder import XEncoder
from jepa.y_encoder import YEncoder

log = logging.getLogger(__name__)


class VLJEPA(nn.Module):
    def __init__(
        self,
        config: VLJEPAConfig,
        x_encoder: XEncoder,
        predictor: Predictor,
        y_encoder: YEncoder,
        y_decoder: nn.Module | None = None,
        query_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.config = config
        self.x_encoder = x_encoder
        self.predictor = predictor
        self.y_encoder = y_encoder
        self.y_decoder = y_decoder
        # Frozen, referenced by name like a published X-encoder: never saved with the model.
        self.query_encoder = query_encoder
        if query_encoder is None and config.predictor.query_encoder:
            self.query_encoder = build_query_encoder(config)
        init = torch.tensor(math.log(1.0 / config.temperature))
        if config.learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls, cfg: VLJEPAConfig, *, load_pretrained: bool = True, with_decoder: bool = False
    ) -> VLJEPA:
        """Build every module. `load_pretrained=False` skips pretrained weights (architecture
        only: for the meta device or when weights come from a saved dir). The Y-decoder is built
        only on request (`with_decoder`), since an untrained one only produces noise."""
        x = XEncoder.from_config(cfg.x_encoder, load_pretrained=load_pretrained)
        p = Predictor.from_config(
            cfg.predictor, x.hidden_size, cfg.shared_dim, load_pretrained=load_pretrained
        )
        y = YEncoder.from_config(cfg.y_encoder, cfg.shared_dim, load_pretrained=load_pretrained)
        q = build_query_encoder(cfg, load_pretrained=load_pretrained)
        model = cls(cfg, x, p, y, query_encoder=q)
        if with_decoder:
            model.attach_decoder()
        return model

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> VLJEPA:
        return cls.from_config(VLJEPAConfig.preset(name), **kwargs)

    def attach_decoder(self, decoder: nn.Module | None = None) -> nn.Module:
        """Set `y_decoder` (a fresh one from `config.y_decoder` when none is given)."""
        if decoder is None:
            from jepa.y_decoder import YDecoder

            if self.config.y_decoder is None:
                raise ValueError("config.y_decoder is None: nothing to build")
            decoder = YDecoder.from_config(self.config.y_decoder, self.config.shared_dim)
            decoder.to(self.device)
        self.y_decoder = decoder
        return decoder

    @property
    def device(self) -> torch.device:
        return self.predictor.head.weight.device

    # ------------------------------------------------------------------ training interface
    def scale(self) -> torch.Tensor:
        """The InfoNCE logit multiplier: exp(logit_scale), clamped to `max_logit_scale`."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def forward(
        self,
        x_tokens: torch.Tensor,
        target_ids: torch.Tensor,
        target_mask: torch.Tensor,
        query_ids: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted, target) embeddings, not normalised: the training step's forward."""
        pred = self.predictor(x_tokens, query_ids, query_mask)
        target = self.y_encoder(target_ids, target_mask)
        return pred, target

    def loss(self, pred: torch.Tensor, target: torch.Tensor, **gathered: Any):
        """`info_nce` with this model's (clamped) scale; `gathered` = all_target/all_pred/offset."""
        return info_nce(pred, target, self.scale(), **gathered)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups (`jepa.optim.adamw_param_groups`): predictor (+ a learnable logit scale)
        at `lr`, Y-encoder at `lr * y_lr_mult`; the X-encoder and Y-decoder in none."""
        return adamw_param_groups(self, lr, weight_decay, self.config.y_lr_mult)

    # ------------------------------------------------------------------ inference
    def predict(
        self,
        x_tokens: torch.Tensor,
        query_ids: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted embeddings (B, shared_dim), L2-normalised."""
        return F.normalize(self.predictor(x_tokens, query_ids, query_mask).float(), dim=-1)

    def predict_queries(self, x_tokens: torch.Tensor, queries: list[str] | None = None):
        """`predict` with text queries (None -> `config.retrieval_prompt` for every row)."""
        b = x_tokens.shape[0]
        if queries is None:
            prompt = self.config.retrieval_prompt
            queries = [prompt] * b if prompt else None
        q = self.predictor.tokenize(queries, b)
        if self.query_encoder is not None:
            states = self.query_encoder.states(q["input_ids"], q["attention_mask"])
            pred = self.predictor(x_tokens, query_mask=q["attention_mask"], query_states=states)
            return F.normalize(pred.float(), dim=-1)
        return self.predict(x_tokens, q["input_ids"], q["attention_mask"])

    @torch.no_grad()
    def embed_video(self, frames, queries: list[str] | None = None) -> torch.Tensor:
        """uint8 frames (B,T,H,W,3) -> predicted embeddings (B, shared_dim), L2-normalised."""
        return self.predict_queries(self.x_encoder(frames), queries)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Y-encoder embeddings (B, shared_dim), L2-normalised."""
        return F.normalize(self.y_encoder.encode(list(texts)).float(), dim=-1)

    # ------------------------------------------------------------------ persistence
    def _x_weights_stored(self) -> bool:
        return self.config.x_encoder.name_or_path is None

    def _state_to_save(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("query_encoder.")}
        if not self._x_weights_stored():
            state = {k: v for k, v in state.items() if not k.startswith("x_encoder.")}
        return saved.dedup_state(state)  # tied weights (e.g. GPT-2's lm_head): stored once

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["format_version"] = FORMAT_VERSION
        arch = {
            "format_version": FORMAT_VERSION,
            "predictor_llama": self.predictor.llama.config.to_dict(),
            "y_encoder_backbone": self.y_encoder.backbone.config.to_dict(),
            "x_encoder_weights": "stored" if self._x_weights_stored() else "name_or_path",
            "has_y_decoder": self.y_decoder is not None,
        }
        # Every tokenizer but the MiniLM one (shipped in a package) travels with the weights:
        # a hub name needs no network to load, and a model trained from a local folder serves
        # on machines that do not have that folder.
        for part, name in (
            ("predictor", self.config.predictor.tokenizer),
            ("y_encoder", self.config.y_encoder.tokenizer),
        ):
            if name not in MINILM_ALIASES:
                getattr(self, part).tokenizer.save_pretrained(
                    os.path.join(directory, f"{part}_tokenizer")
                )
        saved.write(directory, self._state_to_save(), cfg, arch)
        log.info("saved VL-JEPA (%s) to %s", self.config.preset_name, directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device | None = None
    ) -> VLJEPA:
        """Load a `save_pretrained` dir; returns the model in eval mode."""
        from safetensors.torch import load_file

        directory = os.fspath(directory)
        raw = saved.read_config(directory)
        objective = raw.pop("objective", "embedding")
        if objective != "embedding":
            raise ValueError(
                f"{directory} holds an {objective!r} model (the token-prediction baseline, no "
                "embedding space): load it with jepa.token_model.TokenVLM.from_pretrained"
            )
        cfg = VLJEPAConfig.from_dict(raw)
        arch_path = os.path.join(directory, ARCH_FILE)
        arch: dict[str, Any] = {}
        if os.path.exists(arch_path):
            with open(arch_path) as f:
                arch = json.load(f)
        model = cls._build_for_load(cfg, arch)
        # The saved tokenizers win over the names in the config (which may be folders of the
        # training machine, or hub names).
        from jepa.predictor import query_tokenizer
        from jepa.text import load_tokenizer

        for part, load in (("predictor", query_tokenizer), ("y_encoder", load_tokenizer)):
            tok_dir = os.path.join(directory, f"{part}_tokenizer")
            if os.path.isdir(tok_dir):
                getattr(model, part)._tokenizer = load(tok_dir)
        if arch.get("has_y_decoder"):
            model.attach_decoder()
        state = load_file(os.path.join(directory, WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{directory}: unexpected weights {unexpected[:5]}")
        if arch.get("x_encoder_weights") == "name_or_path":  # loaded by name above
            missing = [k for k in missing if not k.startswith("x_encoder.")]
        missing = [k for k in missing if not k.startswith("query_encoder.")]  # by name above
        missing = [k for k in missing if not _is_tied(model, k)]
        if missing:
            raise ValueError(f"{directory}: missing weights {missing[:5]}")
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def _build_for_load(cls, cfg: VLJEPAConfig, arch: dict[str, Any]) -> VLJEPA:
        """Architecture from the saved transformers configs; only a referenced X-encoder
        (published checkpoint) is loaded by name, everything else comes from the safetensors."""
        from transformers import AutoConfig, AutoModel, LlamaModel

        x = XEncoder.from_config(
            cfg.x_encoder, load_pretrained=arch.get("x_encoder_weights") == "name_or_path"
        )
        if "predictor_llama" in arch:
            lc = dict(arch["predictor_llama"])
            llama = LlamaModel(AutoConfig.for_model(lc.pop("model_type"), **lc))
            p = Predictor(cfg.predictor, llama, x.hidden_size, cfg.shared_dim)
        else:
            p = Predictor.from_config(
                cfg.predictor, x.hidden_size, cfg.shared_dim, load_pretrained=False
            )
        if "y_encoder_backbone" in arch:
            yc = dict(arch["y_encoder_backbone"])
            backbone = AutoModel.from_config(AutoConfig.for_model(yc.pop("model_type"), **yc))
            y = YEncoder(cfg.y_encoder, backbone, cfg.shared_dim)
        else:
            y = YEncoder.from_config(cfg.y_encoder, cfg.shared_dim, load_pretrained=False)
        return cls(cfg, x, p, y)

    # ------------------------------------------------------------------ reporting
    def param_counts(self) -> dict[str, dict[str, int]]:
        """{module: {"trainable": n, "frozen": n}} (tied tensors counted once)."""
        out: dict[str, dict[str, int]] = {}
        for name, module in (
            ("x_encoder", self.x_encoder),
            ("predictor", self.predictor),
            ("y_encoder", self.y_encoder),
            ("y_decoder", self.y_decoder),
        ):
            if module is None:
                continue
            t, f = saved.count_params(module)
            out[name] = {"trainable": t, "frozen": f}
        return out


def build_query_encoder(cfg: VLJEPAConfig, *, load_pretrained: bool = True) -> nn.Module | None:
    if not cfg.predictor.query_encoder:
        return None
    from jepa.query_encoder import QueryEncoder

    return QueryEncoder(
        cfg.predictor.query_encoder,
        cfg.predictor.max_query_length,
        load_pretrained=load_pretrained,
    )


def _is_tied(model: nn.Module, key: str) -> bool:
    """True when `key` names a tensor that shares storage with another saved one."""
    state = model.state_dict()
    v = state[key]
    ptr = v.untyped_storage().data_ptr()
    return any(k != key and s.untyped_storage().data_ptr() == ptr for k, s in state.items())
