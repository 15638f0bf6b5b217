"""The Y-encoder: target text -> shared embedding space.

A pretrained sentence-embedding backbone (mean pooling over non-pad tokens, as both MiniLM and
EmbeddingGemma were trained) plus a linear head into the shared space. The backbone is trained
too, at a small learning-rate multiplier (the paper: 0.05x; freezing it costs ~7 points), which
`VLJEPA.param_groups` applies.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from jepa.config import YEncoderConfig
from jepa.text import load_text_model, load_tokenizer

log = logging.getLogger(__name__)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the hidden states over positions where mask == 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def build_text_backbone(cfg: YEncoderConfig, *, load_pretrained: bool = True) -> nn.Module:
    """The text model alone: pretrained by name/path, or `cfg.arch` with random weights."""
    from transformers import AutoConfig, AutoModel

    if cfg.name_or_path and load_pretrained:
        log.info("loading Y-encoder backbone from %s", cfg.name_or_path)
        model = load_text_model(cfg.name_or_path)
        got = model.config
        have = (got.model_type, int(got.hidden_size))
        want = (cfg.arch["model_type"], int(cfg.arch["hidden_size"]))
        if have != want:
            raise ValueError(
                f"{cfg.name_or_path}: a {have[0]} model of width {have[1]}, the config's arch says "
                f"{want[0]} of width {want[1]} (fill it with jepa.pretrained.y_encoder_config)"
            )
        return model
    arch = dict(cfg.arch)
    model_type = arch.pop("model_type")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AutoModel.from_config(AutoConfig.for_model(model_type, **arch))


class YEncoder(nn.Module):
    """Text backbone + mean pooling + linear head: (input_ids, mask) -> (B, shared_dim)."""

    def __init__(self, cfg: YEncoderConfig, backbone: nn.Module, shared_dim: int):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        width = int(backbone.config.hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.head = nn.Linear(width, shared_dim)
        self._tokenizer = None

    @classmethod
    def from_config(
        cls, cfg: YEncoderConfig, shared_dim: int, *, load_pretrained: bool = True
    ) -> YEncoder:
        return cls(cfg, build_text_backbone(cfg, load_pretrained=load_pretrained), shared_dim)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.tokenizer)
        return self._tokenizer

    @property
    def backbone_dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def shared_dim(self) -> int:
        return self.head.out_features

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.cfg.max_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's mean-pooled embedding (B, backbone_dim), before the head."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, shared_dim), not normalised."""
        pooled = self.pooled(input_ids, attention_mask)
        return self.head(pooled.to(self.head.weight.dtype))

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> (B, shared_dim), not normalised; no gradients."""
        outs = [
            self.forward(**self.tokenize(texts[i : i + batch_size]))
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(outs) if outs else torch.zeros(0, self.shared_dim, device=self.device)

    @torch.no_grad()
    def backbone_embed(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> (B, backbone_dim): the text model's own sentence embedding, L2-normalised as
        sentence-transformers does (MiniLM's published embedding), no head involved."""
        outs = [
            F.normalize(self.pooled(**self.tokenize(texts[i : i + batch_size])).float(), dim=-1)
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(outs) if outs else torch.zeros(0, self.backbone_dim, device=self.device)
