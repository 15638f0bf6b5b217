"""The token-prediction baseline: VL-JEPA's predictor layers trained as a captioning VLM.

The paper's controlled comparison (METHOD.md, headline results): at equal frozen encoder, data and
samples, predicting the caption's *embedding* beats generating its *tokens*. This module is the
tokens side, built from the same parts as `jepa.predictor.Predictor`: the input projection of the
visual tokens and the Llama stack, fed [visual tokens; caption tokens] under a prefix-LM mask
(visual tokens see every visual token and nothing else; caption token t sees every visual token
and the caption tokens up to t, as in a VLM), then the final norm and an LM head over the
predictor's token table (tied to it when the Llama config ties them, as Llama-3.2-1B does).
Training is teacher-forced cross-entropy on the caption tokens: BOS is given, every later token
and EOS are predicted.

Protocols (what `pipelines.evaluate` reports for a model of this kind):
- Captions are ids of the predictor's tokenizer *with* its special tokens, as `vljepa embed`
  stores them: BOS/[CLS] first, EOS/[SEP] last (`pipelines.features.check_caption_tokenizer`
  refuses features tokenised with another tokenizer).
- Captioning: greedy decoding from BOS after the visual prefix (a key/value cache, so each new
  token costs one position), stopped at EOS; the text is the tokenizer's decoding of those argmax
  ids. No other decoder is involved: the LM head is the only way text comes out.
- Zero-shot classification by likelihood: every class name (`class_text`: "red_moves_left" ->
  "red moves left") is scored as a caption of the clip, by the mean log-probability of its tokens
  and EOS given the visual prefix and BOS (length-normalised, so short names are not favoured);
  classes are ranked by that score (top-1 / top-5). All names of a clip are scored in one forward
  pass ("packed": each name's segment sees the visual prefix and its own earlier tokens only, and
  its positions restart right after the prefix), which equals scoring them one at a time.

Saved form (`save_pretrained`): `config.json` (the VLJEPAConfig + `"objective": "tokens"` +
`format_version`), `model.safetensors`, `architecture.json` (the Llama config). The X-encoder is
not stored: this model works on pre-embedded X-tokens, and `config.x_encoder` names the encoder
(and sampling) that made them. `VLJEPA.from_pretrained` refuses such a directory and says so.
No Ray here; FSDP2 is applied from outside (pipelines/train).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jepa import saved
from jepa.config import FORMAT_VERSION, VLJEPAConfig
from jepa.optim import adamw_param_groups
from jepa.predictor import build_llama, query_tokenizer
from jepa.saved import ARCH_FILE, CONFIG_FILE, WEIGHTS_FILE
from jepa.text import MINILM_ALIASES

log = logging.getLogger(__name__)

OBJECTIVE = "tokens"
TOKENIZER_DIR = "predictor_tokenizer"


def saved_objective(directory: str | os.PathLike) -> str:
    """'tokens' for a `TokenVLM` directory, 'embedding' for a VLJEPA one (no key = embedding)."""
    with open(os.path.join(os.fspath(directory), CONFIG_FILE)) as f:
        return str(json.load(f).get("objective", "embedding"))


def class_text(label: str) -> str:
    """A class label as the text scored for it: 'red_moves_left' -> 'red moves left'."""
    return " ".join(label.replace("_", " ").split())


def prefix_lm_mask(n_visual: int, text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask, L = n_visual + T, for [visual tokens; caption tokens].

    A visual query sees every visual key and no caption key; a caption query at t sees every
    visual key and the non-pad caption keys at positions <= t. No row is empty (every row sees
    the visual tokens), so padded rows stay finite.
    """
    b, t = text_mask.shape
    length = n_visual + t
    dev = text_mask.device
    allowed = torch.zeros(b, length, length, dtype=torch.bool, device=dev)
    allowed[:, :, :n_visual] = True
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=dev))
    allowed[:, n_visual:, n_visual:] = causal[None] & text_mask.bool()[:, None, :]
    out = torch.zeros(b, 1, length, length, dtype=dtype, device=dev)
    return out.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def _packed_mask(n_visual: int, segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, L, L) for [visual; seg 0; seg 1; ...]: a text query sees the visual keys and the
    keys of its own segment up to itself; visual queries see visual keys only."""
    t = segments.shape[0]
    length = n_visual + t
    allowed = torch.zeros(length, length, dtype=torch.bool, device=segments.device)
    allowed[:, :n_visual] = True
    same = segments[:, None] == segments[None, :]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=segments.device))
    allowed[n_visual:, n_visual:] = same & causal
    out = torch.zeros(1, 1, length, length, dtype=dtype, device=segments.device)
    return out.masked_fill(~allowed[None, None], torch.finfo(dtype).min)


class _KVCache:
    """The one method the Llama attention calls on a cache: append this step's keys/values."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx in self.layers:
            k, v = self.layers[layer_idx]
            key_states = torch.cat([k, key_states], dim=-2)
            value_states = torch.cat([v, value_states], dim=-2)
        self.layers[layer_idx] = (key_states, value_states)
        return key_states, value_states


def _special_ids(tok) -> tuple[int, int]:
    """(bos, eos): BERT-style tokenizers have [CLS]/[SEP], Llama-style ones BOS/EOS."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if bos is None or eos is None:
        raise ValueError(f"tokenizer {type(tok).__name__} has neither BOS/EOS nor CLS/SEP tokens")
    return int(bos), int(eos)


class TokenVLM(nn.Module):
    """[visual tokens; caption] -> next-token logits. `forward` is the training loss."""

    objective = OBJECTIVE

    def __init__(self, config: VLJEPAConfig, llama: nn.Module):
        super().__init__()
        self.config = config
        self.llama = llama
        for layer in llama.layers:  # masks are always explicit; never let SDPA assume causal
            layer.self_attn.is_causal = False
        hidden = int(llama.config.hidden_size)
        vocab = int(llama.config.vocab_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.predictor.seed + 1)  # the Predictor's in_proj draw
            self.in_proj = nn.Linear(config.x_encoder.hidden_size, hidden)
            self.lm_head = nn.Linear(hidden, vocab, bias=False)
        if getattr(llama.config, "tie_word_embeddings", False):
            self.lm_head.weight = llama.embed_tokens.weight
        params = inspect.signature(type(llama.layers[0]).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._tokenizer = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: VLJEPAConfig, *, load_pretrained: bool = True) -> TokenVLM:
        """The predictor's Llama (pretrained layers when `cfg.predictor.name_or_path` is set
        and `load_pretrained`), a fresh input projection and LM head."""
        return cls(cfg, build_llama(cfg.predictor, load_pretrained=load_pretrained))

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = query_tokenizer(self.config.predictor.tokenizer)
        return self._tokenizer

    @property
    def bos_id(self) -> int:
        return _special_ids(self.tokenizer)[0]

    @property
    def eos_id(self) -> int:
        return _special_ids(self.tokenizer)[1]

    @property
    def device(self) -> torch.device:
        return self.in_proj.weight.device

    def tokenize(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """Texts -> ids with the tokenizer's specials, each made to start with BOS and end with
        EOS (the form the features store for BERT-style tokenizers)."""
        enc = self.tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)[
            "input_ids"
        ]
        bos, eos = _special_ids(self.tokenizer)
        out = []
        for ids in enc:
            ids = list(ids)
            if not ids or ids[0] != bos:
                ids = [bos, *ids]
            if ids[-1] != eos:
                ids.append(eos)
            out.append(ids)
        return out

    # ------------------------------------------------------------------ core
    def _inputs(self, x_tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        dtype, device = self.in_proj.weight.dtype, self.in_proj.weight.device
        v = self.in_proj(x_tokens.to(device=device, dtype=dtype))
        t = self.llama.embed_tokens(input_ids.to(device)).to(v.dtype)
        if t.shape[0] != v.shape[0]:
            t = t.expand(v.shape[0], -1, -1)
        return torch.cat([v, t], dim=1)

    def _run(self, h, mask, position_ids, cache: _KVCache | None = None) -> torch.Tensor:
        rope = self.llama.rotary_emb(h, position_ids=position_ids)
        extra = {self._cache_kw: cache} if cache is not None else {}
        for layer in self.llama.layers:
            h = layer(
                h,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=rope,
                **extra,
            )
        return self.llama.norm(h)

    def hidden_states(
        self, x_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Final-norm hidden states (B, N + T, hidden) under the prefix-LM mask."""
        device = self.device
        h = self._inputs(x_tokens, input_ids)
        b, length = h.shape[:2]
        n = x_tokens.shape[1]
        position_ids = torch.arange(length, device=device).unsqueeze(0).expand(b, -1)
        mask = prefix_lm_mask(n, attention_mask.to(device), h.dtype)
        return self._run(h, mask, position_ids)

    def caption_logits(
        self, x_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T-1, vocab): position t's prediction of caption token t+1 (teacher forcing)."""
        n, t = x_tokens.shape[1], input_ids.shape[1]
        hid = self.hidden_states(x_tokens, input_ids, attention_mask)
        return self.lm_head(hid[:, n : n + t - 1]).float()

    def forward(
        self, x_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy over the predicted caption tokens (every non-pad token after BOS,
        EOS included). Logits are computed only at those positions (the vocabulary-wide head is
        the largest matmul of a step)."""
        device = self.device
        n, t = x_tokens.shape[1], input_ids.shape[1]
        hid = self.hidden_states(x_tokens, input_ids, attention_mask)
        targets = input_ids[:, 1:].to(device)
        keep = attention_mask[:, 1:].to(device).bool()
        h = hid[:, n : n + t - 1][keep]
        return F.cross_entropy(self.lm_head(h).float(), targets[keep])

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups by the embedding objective's rule (`jepa.optim.adamw_param_groups`):
        everything here is predictor-side, at `lr`; no decay on biases and norms."""
        return adamw_param_groups(self, lr, weight_decay, 1.0)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate_ids(
        self, x_tokens: torch.Tensor, max_new_tokens: int = 24, early_stop: bool = True
    ) -> torch.Tensor:
        """Greedy continuation after [visual; BOS]: (B, <= max_new_tokens) argmax ids of the LM
        head, EOS included; rows that ended keep emitting EOS. `early_stop=False` always runs
        `max_new_tokens` steps (every rank of a sharded model must run the same number)."""
        device = self.device
        x = torch.as_tensor(x_tokens)
        b, n = x.shape[0], x.shape[1]
        bos = torch.full((b, 1), self.bos_id, dtype=torch.long, device=device)
        h = self._inputs(x, bos)
        mask = prefix_lm_mask(n, torch.ones(b, 1, dtype=torch.long, device=device), h.dtype)
        pos = torch.arange(n + 1, device=device).unsqueeze(0).expand(b, -1)
        cache = _KVCache()
        hid = self._run(h, mask, pos, cache)
        nxt = self.lm_head(hid[:, -1]).argmax(-1)
        eos = self.eos_id
        done = nxt == eos
        out = [nxt]
        for step in range(1, max_new_tokens):
            if early_stop and bool(done.all()):
                break
            h = self.llama.embed_tokens(nxt[:, None]).to(h.dtype)
            pos = torch.full((b, 1), n + step, dtype=torch.long, device=device)
            hid = self._run(h, None, pos, cache)
            nxt = self.lm_head(hid[:, -1]).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            done |= nxt == eos
            out.append(nxt)
        return torch.stack(out, dim=1)

    def decode(self, ids: list[int]) -> str:
        """Ids up to the first EOS -> text (special tokens dropped)."""
        eos = self.eos_id
        cut = [int(i) for i in ids]
        if eos in cut:
            cut = cut[: cut.index(eos)]
        return self.tokenizer.decode(cut, skip_special_tokens=True).strip()

    @torch.no_grad()
    def generate(
        self, x_tokens: torch.Tensor, max_new_tokens: int = 24, batch_size: int = 64
    ) -> list[str]:
        """One greedy caption per clip, from this model's LM head (see the module docstring)."""
        x = torch.as_tensor(x_tokens)
        texts: list[str] = []
        for i in range(0, x.shape[0], batch_size):
            ids = self.generate_ids(x[i : i + batch_size].float(), max_new_tokens)
            texts.extend(self.decode(row) for row in ids.tolist())
        return texts

    @torch.no_grad()
    def label_log_likelihood(
        self, x_tokens: torch.Tensor, labels: list[str], reduce: str = "mean"
    ) -> torch.Tensor:
        """(B, len(labels)) log-likelihood of each text as the clip's caption: the log-probs of
        its tokens after BOS and of EOS, averaged (`reduce="mean"`, the classification protocol)
        or summed (`"sum"`). The texts are scored as given (pass `class_text(label)` for class
        names). One packed forward per chunk of clips (see the module docstring)."""
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        device = self.device
        seqs = self.tokenize(labels)
        flat = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
        seg = torch.tensor(
            [j for j, s in enumerate(seqs) for _ in s], dtype=torch.long, device=device
        )
        offset = torch.tensor([k for s in seqs for k in range(len(s))], device=device)
        # prediction slots: every token but the last of a segment predicts the next one
        starts = torch.tensor([0] + [len(s) for s in seqs], device=device).cumsum(0)
        src = torch.cat(
            [torch.arange(int(starts[j]), int(starts[j + 1]) - 1) for j in range(len(seqs))]
        ).to(device)
        tgt = flat[src + 1]
        slot_seg = seg[src]
        counts = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.float32, device=device)
        x = torch.as_tensor(x_tokens)
        n = x.shape[1]
        vocab = int(self.lm_head.weight.shape[0])
        chunk = max(1, int(2e7 // max(1, src.numel() * vocab)))
        mask1 = None
        out = []
        for i in range(0, x.shape[0], chunk):
            xc = x[i : i + chunk]
            c = xc.shape[0]
            h = self._inputs(xc, flat[None])
            if mask1 is None:
                mask1 = _packed_mask(n, seg, h.dtype)
            pos = torch.cat([torch.arange(n, device=device), n + offset])[None].expand(c, -1)
            hid = self._run(h, mask1.expand(c, -1, -1, -1), pos)
            logp = F.log_softmax(self.lm_head(hid[:, n + src]).float(), dim=-1)
            tok = logp.gather(-1, tgt[None, :, None].expand(c, -1, 1)).squeeze(-1)  # (c, P)
            sums = torch.zeros(c, len(seqs), device=device).index_add_(1, slot_seg, tok)
            out.append(sums / counts if reduce == "mean" else sums)
        return torch.cat(out).cpu()

    # ------------------------------------------------------------------ persistence
    def _state_to_save(self) -> dict[str, torch.Tensor]:
        return saved.dedup_state(self.state_dict())  # the tied LM head: stored once

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["objective"] = OBJECTIVE
        cfg["format_version"] = FORMAT_VERSION
        arch = {
            "format_version": FORMAT_VERSION,
            "objective": OBJECTIVE,
            "predictor_llama": self.llama.config.to_dict(),
            "x_encoder_weights": "not_stored",
        }
        if self.config.predictor.tokenizer not in MINILM_ALIASES:
            self.tokenizer.save_pretrained(os.path.join(directory, TOKENIZER_DIR))
        saved.write(directory, self._state_to_save(), cfg, arch)
        log.info("saved token-prediction VLM (%s) to %s", self.config.preset_name, directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device | None = None
    ) -> TokenVLM:
        """Load a `save_pretrained` dir; returns the model in eval mode."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, LlamaModel

        directory = os.fspath(directory)
        raw = saved.read_config(directory)
        objective = raw.pop("objective", "embedding")
        if objective != OBJECTIVE:
            raise ValueError(
                f"{directory} holds an {objective!r} model (VL-JEPA): load it with "
                "jepa.model.VLJEPA.from_pretrained"
            )
        cfg = VLJEPAConfig.from_dict(raw)
        with open(os.path.join(directory, ARCH_FILE)) as f:
            arch = json.load(f)
        lc = dict(arch["predictor_llama"])
        llama = LlamaModel(AutoConfig.for_model(lc.pop("model_type"), **lc))
        model = cls(cfg, llama)
        tok_dir = os.path.join(directory, TOKENIZER_DIR)
        if os.path.isdir(tok_dir):
            model._tokenizer = query_tokenizer(tok_dir)
        state = load_file(os.path.join(directory, WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{directory}: unexpected weights {unexpected[:5]}")
        tied = model.lm_head.weight is model.llama.embed_tokens.weight
        missing = [k for k in missing if not (tied and k == "lm_head.weight")]
        if missing:
            raise ValueError(f"{directory}: missing weights {missing[:5]}")
        if device is not None:
            model.to(device)
        return model.eval()

    # ------------------------------------------------------------------ reporting
    def param_counts(self) -> dict[str, dict[str, int]]:
        """{part: {"trainable": n, "frozen": n}}; a tied LM head counts once (in the predictor)."""
        seen: set[int] = set()
        out: dict[str, dict[str, int]] = {}
        for name, module in (("predictor", nn.ModuleList([self.in_proj, self.llama])),
                             ("lm_head", self.lm_head)):  # fmt: skip
            t, f = saved.count_params(module, seen)
            out[name] = {"trainable": t, "frozen": f}
        return out
