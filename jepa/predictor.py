"""The predictor: (visual tokens, query) -> predicted target embedding.

Llama decoder layers used as a bidirectional encoder (the paper turns the causal mask off so
query tokens and visual tokens all see each other), fed [projected visual tokens; query token
embeddings], average-pooled over non-pad positions, then projected to the shared space. The
layers are called directly with an explicit 4D padding mask instead of through
`LlamaModel.forward`, whose mask builder would make them causal.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from jepa.config import PredictorConfig
from jepa.text import load_tokenizer

log = logging.getLogger(__name__)


def llama_config(cfg: PredictorConfig):
    return llama_config_from(cfg.arch)


def build_llama(cfg: PredictorConfig, *, load_pretrained: bool = True) -> nn.Module:
    """A LlamaModel holding exactly the layers the predictor uses.

    Pretrained: load the full model, keep its token table, final norm and the last
    `keep_last_layers` layers (the paper keeps the last 8 of Llama-3.2-1B's 16).
    """
    from transformers import LlamaModel

    if cfg.name_or_path and load_pretrained:
        log.info("loading predictor layers from %s", cfg.name_or_path)
        path = cfg.name_or_path
        if os.path.isdir(path):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # float32 master weights whatever the checkpoint holds (Llama-3.2 ships bf16).
        llama = LlamaModel.from_pretrained(path, dtype=torch.float32)
        total = len(llama.layers)
        keep = cfg.keep_last_layers or total
        if keep > total:
            raise ValueError(f"{path} has {total} layers: cannot keep the last {keep}")
        kept = list(llama.layers)[-keep:]
        for i, layer in enumerate(kept):  # renumber: layer_idx indexes caches and layer_types
            layer.self_attn.layer_idx = i
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = i
        llama.layers = nn.ModuleList(kept)
        llama.config.num_hidden_layers = keep
        _check_arch(path, llama.config, cfg.arch)
        return llama
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return LlamaModel(llama_config(cfg))


# Fields of `PredictorConfig.arch` that must equal the loaded Llama's (the meta-device build,
# the export and `from_pretrained` all build the architecture from `arch`).
_ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def _check_arch(path: str, got, arch: dict) -> None:
    want = llama_config_from(arch)
    bad = {
        k: (getattr(got, k, None), getattr(want, k, None))
        for k in _ARCH_FIELDS
        if getattr(got, k, None) != getattr(want, k, None)
    }
    if bad:
        raise ValueError(
            f"{path}: the loaded Llama does not match the predictor config's arch "
            f"(loaded, config): {bad} (fill the config with jepa.pretrained.predictor_config)"
        )


def llama_config_from(arch: dict):
    from transformers import LlamaConfig

    return LlamaConfig(**arch)


def query_tokenizer_name(cfg: PredictorConfig) -> str:
    """Whose tokenizer turns a query into ids: the query encoder's when there is one."""
    return cfg.query_encoder or cfg.tokenizer


def encode_queries(tokenizer, texts: list[str], cfg: PredictorConfig) -> list[list[int]]:
    """Query texts -> unpadded id lists, the way the predictor reads them: a query encoder's own
    special tokens included (it was pretrained with them), none for the token table."""
    ids = tokenizer(
        list(texts),
        truncation=True,
        max_length=cfg.max_query_length,
        add_special_tokens=cfg.query_encoder is not None,
    )["input_ids"]
    # An empty query is no query (no special tokens either): a clip's embedding must not depend
    # on whether a batch it shares with asked rows pads it.
    return [list(q) if t else [] for q, t in zip(ids, texts, strict=True)]


def pad_queries(seqs, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Ragged query id lists -> right-padded (input_ids, attention_mask); empty rows are all pad."""
    width = max((len(q) for q in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, q in enumerate(seqs):
        if len(q):
            ids[i, : len(q)] = torch.as_tensor(list(q), dtype=torch.long)
            mask[i, : len(q)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def query_tokenizer(name_or_path: str):
    """The predictor's query tokenizer with a pad token (Llama's has none: padding is masked, so
    the end-of-text token serves). A copy: the cached tokenizer is shared and stays as loaded."""
    import copy

    tok = load_tokenizer(name_or_path)
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError(f"{name_or_path}: the tokenizer has neither a pad nor an eos token")
        tok = copy.deepcopy(tok)
        tok.pad_token = tok.eos_token
    return tok


class Predictor(nn.Module):
    """Bidirectional Llama stack: x_tokens (B,N,Dx) + query (B,L) -> (B, shared_dim)."""

    def __init__(self, cfg: PredictorConfig, llama: nn.Module, x_dim: int, shared_dim: int):
        super().__init__()
        self.cfg = cfg
        self.llama = llama
        for layer in llama.layers:
            layer.self_attn.is_causal = False
        hidden = int(llama.config.hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.in_proj = nn.Linear(x_dim, hidden)
            self.head = nn.Linear(hidden, shared_dim)
            self.query_adapter = None
            if cfg.query_encoder:
                from jepa.query_encoder import query_dim

                self.query_adapter = nn.Linear(query_dim(cfg.query_encoder), hidden)
        self._tokenizer = None

    @classmethod
    def from_config(
        cls, cfg: PredictorConfig, x_dim: int, shared_dim: int, *, load_pretrained: bool = True
    ) -> Predictor:
        return cls(cfg, build_llama(cfg, load_pretrained=load_pretrained), x_dim, shared_dim)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = query_tokenizer(query_tokenizer_name(self.cfg))
        return self._tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self.llama.config.hidden_size)

    @property
    def shared_dim(self) -> int:
        return self.head.out_features

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.llama.embed_tokens

    def tokenize(self, queries: list[str] | None, batch_size: int) -> dict[str, torch.Tensor]:
        """Queries -> right-padded (input_ids, attention_mask) (`encode_queries`).

        `None` (stage-1 captioning has no query) gives zero-length tensors; empty strings give
        all-pad rows. Both leave the prediction to the visual tokens alone.
        """
        if queries is None or all(not q for q in queries):
            n = batch_size if queries is None else len(queries)
            empty = torch.zeros(n, 0, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        if len(queries) != batch_size:
            raise ValueError(f"{len(queries)} queries for a batch of {batch_size}")
        return pad_queries(encode_queries(self.tokenizer, list(queries), self.cfg))

    def forward(
        self,
        x_tokens: torch.Tensor,
        query_ids: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        query_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, shared_dim), not normalised. Visual tokens first, then query tokens.

        The query comes as token ids (`query_ids`, read through the token table) or, with a
        query encoder configured, as its token states (`query_states`, B x L x D)."""
        dtype = self.in_proj.weight.dtype
        device = self.in_proj.weight.device
        h = self.in_proj(x_tokens.to(device=device, dtype=dtype))
        b, n, _ = h.shape
        mask = torch.ones(b, n, dtype=torch.bool, device=device)
        if self.query_adapter is not None and query_ids is not None and query_ids.shape[1] > 0:
            raise ValueError(
                f"this predictor reads queries through {self.cfg.query_encoder}: pass its "
                "token states (query_states), not token ids"
            )
        if query_states is not None and query_states.shape[1] > 0:
            if self.query_adapter is None:
                raise ValueError("query_states need a predictor with a query_encoder")
            if query_mask is None:
                query_mask = torch.ones(query_states.shape[:2], dtype=torch.long)
            q = self.query_adapter(query_states.to(device=device, dtype=dtype))
            h = torch.cat([h, q], dim=1)
            mask = torch.cat([mask, query_mask.to(device=device, dtype=torch.bool)], dim=1)
        elif query_ids is not None and query_ids.shape[1] > 0:
            query_ids = query_ids.to(device)
            if query_mask is None:
                query_mask = torch.ones_like(query_ids)
            q = self.llama.embed_tokens(query_ids).to(dtype)
            h = torch.cat([h, q], dim=1)
            mask = torch.cat([mask, query_mask.to(device=device, dtype=torch.bool)], dim=1)
        length = h.shape[1]
        position_ids = torch.arange(length, device=device).unsqueeze(0).expand(b, -1)
        # Additive key-padding mask (B,1,L,L): every position attends to every non-pad position.
        attn = torch.zeros(b, 1, length, length, dtype=dtype, device=device)
        attn = attn.masked_fill(~mask[:, None, None, :], torch.finfo(dtype).min)
        rope = self.llama.rotary_emb(h, position_ids=position_ids)
        for layer in self.llama.layers:
            h = layer(h, attention_mask=attn, position_ids=position_ids, position_embeddings=rope)
        h = self.llama.norm(h)
        m = mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * m).sum(1) / m.sum(1)
        return self.head(pooled)
