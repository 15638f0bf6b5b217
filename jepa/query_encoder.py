"""A frozen pretrained text model that reads the query for predictors whose layers know no words.

The paper's predictor is the last layers of a pretrained Llama: its token table and layers already
know language, so a question worded in words never seen in SFT still lands near the ones that were.
The tiny presets' predictor layers start from random weights, so their own token table knows no
words: a held-out paraphrase ("name the paint on this round object" for "what colour is the
ball?") would be unseen tokens. With `PredictorConfig.query_encoder` set, this frozen text model
(MiniLM for the tiny presets) reads the query and a trained linear adapter in the predictor maps
its contextual token states into the predictor's width: the role Llama's pretrained embeddings play
in the paper. Like the X-encoder it is frozen and referenced by name (never saved with a model),
and in training it runs in the data path (`pipelines/train/data.py`), outside the sharded model.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from jepa.text import load_text_config, load_text_model, load_tokenizer


def query_dim(name_or_path: str) -> int:
    """Width of the encoder's token states (its config only: no weights are loaded)."""
    return int(load_text_config(name_or_path).hidden_size)


class QueryEncoder(nn.Module):
    def __init__(self, name_or_path: str, max_length: int = 32, *, load_pretrained: bool = True):
        super().__init__()
        self.name_or_path = name_or_path
        self.max_length = max_length
        if load_pretrained:
            self.backbone = load_text_model(name_or_path)
        else:
            from transformers import AutoModel

            self.backbone = AutoModel.from_config(load_text_config(name_or_path))
        self.backbone.eval().requires_grad_(False)

    @property
    def tokenizer(self):
        return load_tokenizer(self.name_or_path)

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def train(self, mode: bool = True) -> QueryEncoder:  # frozen: always in eval mode
        return super().train(False)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) contextual token states, zero at pad positions."""
        device = next(self.backbone.parameters()).device
        if input_ids.shape[1] == 0:
            return torch.zeros(input_ids.shape[0], 0, self.dim, device=device)
        mask = attention_mask.to(device)
        out = self.backbone(input_ids=input_ids.to(device), attention_mask=mask)
        return out.last_hidden_state.float() * mask.unsqueeze(-1).float()


@functools.lru_cache(maxsize=2)
def shared(name_or_path: str, max_length: int = 32) -> QueryEncoder:
    """One frozen encoder per process (the training data path calls it for every batch)."""
    return QueryEncoder(name_or_path, max_length)
