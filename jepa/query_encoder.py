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
import threading
from collections import OrderedDict

import torch
from torch import nn

from jepa.predictor import pad_queries
from jepa.text import load_text_config, load_text_model, load_tokenizer

# Token states kept per distinct query: a corpus asks a few hundred distinct questions many times
# over (every clip in every phrasing), so most of a training batch's queries were read before.
# ~25 KB each (16 tokens x 384 floats): the bound keeps a corpus of free-form questions under
# ~100 MB per process.
STATES_CACHE_SIZE = 4096


def query_dim(name_or_path: str) -> int:
    """Width of the encoder's token states (its config only: no weights are loaded)."""
    return int(load_text_config(name_or_path).hidden_size)


class QueryEncoder(nn.Module):
    def __init__(
        self,
        name_or_path: str,
        max_length: int = 32,
        *,
        load_pretrained: bool = True,
        cache_size: int = STATES_CACHE_SIZE,
    ):
        super().__init__()
        self.name_or_path = name_or_path
        self.max_length = max_length
        if load_pretrained:
            self.backbone = load_text_model(name_or_path)
        else:
            from transformers import AutoModel

            self.backbone = AutoModel.from_config(load_text_config(name_or_path))
        self.backbone.eval().requires_grad_(False)
        # The encoder is frozen, so a query's states never change: computed once per distinct
        # query (its unpadded ids), least recently used dropped past `cache_size`.
        self._states: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._states_lock = threading.Lock()  # training collates in a prefetch thread
        self._cache_size = cache_size

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
        """(B, L, dim) contextual token states, zero at pad positions.

        Only queries not read before go through the backbone (together, in one batch); a query's
        states depend on its own tokens only, so a cached one is the same whatever it was batched
        with."""
        device = next(self.backbone.parameters()).device
        batch, width = input_ids.shape
        out = torch.zeros(batch, width, self.dim, device=device)
        if width == 0:
            return out
        lengths = attention_mask.sum(dim=1).tolist()
        keys = [tuple(input_ids[i, : int(n)].tolist()) for i, n in enumerate(lengths)]
        with self._states_lock:
            missing = list(dict.fromkeys(k for k in keys if k and k not in self._states))
            if missing:
                fresh = self._encode(missing, device)
                self._states.update(zip(missing, fresh, strict=True))
            for i, key in enumerate(keys):
                if key:
                    self._states.move_to_end(key)
                    out[i, : len(key)] = self._states[key]
            while len(self._states) > self._cache_size:
                self._states.popitem(last=False)
        return out

    def _encode(self, queries: list[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
        q = pad_queries(queries)
        hidden = self.backbone(
            input_ids=q["input_ids"].to(device), attention_mask=q["attention_mask"].to(device)
        )
        states = hidden.last_hidden_state.float()
        return [states[i, : len(k)].clone() for i, k in enumerate(queries)]


@functools.lru_cache(maxsize=2)
def shared(name_or_path: str, max_length: int = 32) -> QueryEncoder:
    """One frozen encoder per process (the training data path calls it for every batch)."""
    return QueryEncoder(name_or_path, max_length)
