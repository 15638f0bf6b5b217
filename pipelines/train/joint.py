"""The trainable part of VL-JEPA, as one module whose forward FSDP2 can hook.

Training on pre-embedded features needs only the predictor, the Y-encoder and the logit scale:
the frozen X-encoder already ran in `vljepa embed`, so it is never built on a trainer (nor put
under FSDP). One root `forward` runs both towers so FSDP2's root hooks (lazy init, unshard of
the root's own parameters, the final reduce-scatter) fire on every step; calling the towers'
methods directly would bypass them. Attribute names match `VLJEPA`'s, so the state dict maps 1:1
onto the exported model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jepa.config import VLJEPAConfig
from jepa.optim import adamw_param_groups
from jepa.predictor import Predictor
from jepa.y_encoder import YEncoder


class JointEmbedding(nn.Module):
    def __init__(
        self,
        cfg: VLJEPAConfig,
        *,
        load_pretrained: bool = True,
        train_query_embeddings: bool = False,
        freeze_y_embeddings: bool = False,
    ):
        super().__init__()
        self.cfg = cfg
        x_dim = cfg.x_encoder.hidden_size
        self.predictor = Predictor.from_config(
            cfg.predictor, x_dim, cfg.shared_dim, load_pretrained=load_pretrained
        )
        self.y_encoder = YEncoder.from_config(
            cfg.y_encoder, cfg.shared_dim, load_pretrained=load_pretrained
        )
        # Stage-1 training has no text queries, so the predictor's token table is never used:
        # freezing it keeps 'no gradient' from meaning 'no optimizer state' and shrinks
        # checkpoints (set train_query_embeddings for query training). A predictor that reads
        # queries through a query encoder (the adapter) never uses its token table either: left
        # trainable it was all-gathered, reduce-scattered and weight-decayed every step for
        # nothing (7.8 M of the tiny preset's 33 M trainable parameters).
        if not train_query_embeddings or self.predictor.query_adapter is not None:
            self.predictor.llama.embed_tokens.requires_grad_(False)
        if not train_query_embeddings and self.predictor.query_adapter is not None:
            self.predictor.query_adapter.requires_grad_(False)
        # `y_lr_mult == 0` freezes the Y-encoder outright: no gradient is computed for it and it
        # is in no optimizer group (the targets are then the pretrained text space + its head's
        # initialisation, as in the paper's frozen-Y-encoder ablation).
        if cfg.y_lr_mult == 0:
            self.y_encoder.requires_grad_(False)
        # The Y-encoder's token table alone (`TrainConfig.freeze_y_embeddings`): its layers and
        # head still train. A corpus reaches few of its rows, yet its dense gradient is
        # reduce-scattered whole every step (MiniLM's 30522 x 384: nearly half of what the tiny
        # preset trains).
        if freeze_y_embeddings:
            self.y_encoder.backbone.get_input_embeddings().requires_grad_(False)
        init = torch.tensor([math.log(1.0 / cfg.temperature)])
        # 1-element (not 0-d) so FSDP2 can shard it on dim 0 like every other parameter.
        if cfg.learnable_temperature:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def scale(self) -> torch.Tensor:
        """The logit multiplier 1/temperature, clamped so a learnable one cannot run away."""
        return self.log_scale.exp().clamp(max=self.cfg.max_logit_scale).reshape(())

    def forward(
        self,
        x_tokens: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_ids: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        query_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(predicted, target, logit scale); either tower may be skipped by passing None. The
        query, if any, comes as ids or as a query encoder's states (`Predictor.forward`)."""
        pred = None
        if x_tokens is not None:
            pred = self.predictor(x_tokens, query_ids, query_mask, query_states)
        target = self.encode_targets(input_ids, attention_mask) if input_ids is not None else None
        return pred, target, self.scale()

    def encode_targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The Y-encoder over each distinct target text once, spread back to the batch's rows.

        A stage-2 batch asks for a handful of answers ("yes", "red", ...) many times over; the
        rows' gradients add up on the one copy exactly as they would over identical copies, so
        only the Y-encoder's cost changes (with dropout, duplicates share one dropout draw)."""
        rows = torch.cat([input_ids, attention_mask], dim=1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        if unique.shape[0] == rows.shape[0]:
            return self.y_encoder(input_ids, attention_mask)
        width = input_ids.shape[1]
        return self.y_encoder(unique[:, :width], unique[:, width:])[inverse]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups, the same rule as `VLJEPA.param_groups`. Built after fully_shard, so
        they hold the sharded parameters."""
        return adamw_param_groups(self, lr, weight_decay, self.cfg.y_lr_mult)


def normalize(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z.float(), dim=-1)
