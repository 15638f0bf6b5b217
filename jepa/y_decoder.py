"""Y-decoder: shared-space embedding -> text.

VL-JEPA never generates tokens during training; text is produced only when asked, by a light
decoder trained separately on text alone (caption -> Y-encoder embedding -> caption). The paper
does not describe it, so this is the classic prefix-LM recipe (ClipCap-style): an MLP maps the
embedding to `n_prefix` vectors that are fed to a small GPT-2 ahead of the caption tokens.

Why the choices:
- MiniLM's tokenizer for the tiny preset: the Y-encoder already uses it, the synthetic captions
  are lower-case English, and [CLS]/[SEP] give a natural BOS/EOS. A pretrained LM preset
  (e.g. "distilgpt2") keeps its own tokenizer because its token table only makes sense with it.
- Gaussian noise on the (unit) input embedding during training: at serve time the decoder reads
  *predicted* embeddings, which only approximate the Y-encoder's; training on a small ball around
  each target teaches it to map that neighbourhood to the same caption.
- Inputs are always L2-normalised inside the decoder, so segment averages (norm < 1) from
  selective decoding and raw predictor outputs need no special handling.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

from jepa.text import load_tokenizer

_DEFAULTS: dict[str, Any] = {
    "preset": "tiny",
    "n_layer": 2,
    "n_embd": 192,
    "n_head": 4,
    "n_prefix": 4,
    "max_len": 32,
    "prefix_hidden": 512,
    "dropout": 0.0,
    "noise_std": 0.1,
    "tokenizer": None,
}


def _cfg(cfg: Any, key: str) -> Any:
    """Read a YDecoderConfig field with a default, so the decoder works with any config object
    (pydantic model, dataclass, dict) that carries the fields it needs."""
    if isinstance(cfg, dict):
        return cfg.get(key, _DEFAULTS[key])
    return getattr(cfg, key, _DEFAULTS[key])


def _special_ids(tok) -> tuple[int, int, int]:
    """(bos, eos, pad): BERT-style tokenizers have [CLS]/[SEP]/[PAD], GPT-2-style ones only
    <|endoftext|> (used for all three)."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if bos is None or eos is None:
        raise ValueError(f"tokenizer {type(tok).__name__} has neither BOS/EOS nor CLS/SEP tokens")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return int(bos), int(eos), int(pad)


def _bias_rows(head: nn.Linear, rows: torch.Tensor) -> torch.Tensor | None:
    return None if head.bias is None else head.bias[rows]


class _AllowedTokens(LogitsProcessor):
    """Masks every token outside the decoder's trained vocabulary."""

    def __init__(self, allowed: torch.Tensor):
        self.allowed = allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed[: scores.shape[-1]].to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))


class YDecoder(nn.Module):
    """Prefix-conditioned causal LM. `generate` returns one caption per embedding row."""

    def __init__(self, lm: GPT2LMHeadModel, tokenizer, shared_dim: int, cfg: Any = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.shared_dim = int(shared_dim)
        self.n_prefix = int(_cfg(cfg, "n_prefix"))
        self.max_len = int(_cfg(cfg, "max_len"))
        self.noise_std = float(_cfg(cfg, "noise_std"))
        self.bos_id, self.eos_id, self.pad_id = _special_ids(tokenizer)
        self.lm = lm
        width = lm.config.n_embd
        hidden = int(_cfg(cfg, "prefix_hidden"))
        # Input standardisation (fitted by `fit_input_stats`): sentence embeddings of one corpus
        # share a large common component, so captions that differ by one word ("left"/"right")
        # sit at cosine ~0.999. Centering and rescaling spreads them before the MLP sees them.
        self.register_buffer("in_mean", torch.zeros(self.shared_dim))
        self.register_buffer("in_scale", torch.ones(()))
        # Output vocabulary actually trained (set by `restrict_vocab`; all True by default). The
        # 30k-row LM head dominates a step on CPU, and a token absent from every training caption
        # cannot be learned anyway: training scores only the allowed rows, generation masks the
        # rest. A bool per token keeps the state-dict shape independent of the corpus.
        self.register_buffer("allowed", torch.ones(len(tokenizer), dtype=torch.bool))
        self.prefix = nn.Sequential(
            nn.Linear(self.shared_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, self.n_prefix * width),
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Any, shared_dim: int) -> YDecoder:
        preset = _cfg(cfg, "preset") or "tiny"
        if preset == "tiny":
            tok = load_tokenizer(_cfg(cfg, "tokenizer") or "minilm")
            bos, eos, pad = _special_ids(tok)
            drop = float(_cfg(cfg, "dropout"))
            gcfg = GPT2Config(
                vocab_size=len(tok),
                n_positions=int(_cfg(cfg, "n_prefix")) + int(_cfg(cfg, "max_len")) + 2,
                n_embd=int(_cfg(cfg, "n_embd")),
                n_layer=int(_cfg(cfg, "n_layer")),
                n_head=int(_cfg(cfg, "n_head")),
                resid_pdrop=drop,
                embd_pdrop=drop,
                attn_pdrop=drop,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            lm = GPT2LMHeadModel(gcfg)
        else:
            # A named (hub) or local pretrained small LM, e.g. "distilgpt2"; never downloaded in
            # tests. Its own tokenizer unless the config names another one.
            tok = load_tokenizer(_cfg(cfg, "tokenizer") or preset)
            lm = GPT2LMHeadModel.from_pretrained(preset)
        return cls(lm, tok, shared_dim, cfg)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """BOS + caption + EOS, right-padded; truncated to max_len tokens (EOS kept)."""
        body = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        rows = [[self.bos_id, *ids[: self.max_len - 2], self.eos_id] for ids in body]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def detokenize(self, ids: list[int]) -> str:
        out: list[int] = []
        for t in ids:
            if t == self.eos_id:
                break
            if t in (self.pad_id, self.bos_id):
                continue
            out.append(int(t))
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ model
    @torch.no_grad()
    def fit_input_stats(self, embeddings: torch.Tensor) -> None:
        """Set the input centering/scale from the training embeddings (unit-normalised): the
        mean vector and the overall std of the centred entries."""
        z = F.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=-1)
        mean = z.mean(0)
        scale = (z - mean).std() if z.shape[0] > 1 else torch.ones(())
        self.in_mean.copy_(mean.to(self.in_mean.device))
        self.in_scale.copy_(scale.clamp_min(1e-6).to(self.in_scale.device))

    @torch.no_grad()
    def restrict_vocab(self, captions: list[str]) -> int:
        """Allow exactly the tokens of these captions plus EOS (union with nothing: a fresh set).
        Returns the allowed count."""
        ids, mask = self.tokenize(captions)
        allowed = torch.zeros_like(self.allowed)
        allowed[ids[mask.bool()].to(allowed.device)] = True
        allowed[self.bos_id] = False  # given, never generated
        allowed[self.eos_id] = True
        self.allowed.copy_(allowed)
        return int(allowed.sum())

    def _prefix(self, embeddings: torch.Tensor) -> torch.Tensor:
        dev = self.prefix[0].weight.device
        z = F.normalize(torch.as_tensor(embeddings, dtype=torch.float32, device=dev), dim=-1)
        z = (z - self.in_mean) / self.in_scale
        return self.prefix(z).view(z.shape[0], self.n_prefix, self.lm.config.n_embd)

    def noisy(self, embeddings: torch.Tensor, noise_std: float | None = None) -> torch.Tensor:
        """Unit embeddings perturbed by isotropic noise of expected norm `noise_std`, then
        renormalised (cos to the clean one ~ 1/sqrt(1 + noise_std^2))."""
        std = self.noise_std if noise_std is None else noise_std
        z = F.normalize(embeddings.float(), dim=-1)
        if std <= 0:
            return z
        noise = torch.randn_like(z) * (std / math.sqrt(z.shape[-1]))
        return F.normalize(z + noise, dim=-1)

    def loss_from_ids(
        self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy on caption tokens and EOS only (the prefix, BOS and
        padding get no loss)."""
        dev = self.prefix[0].weight.device
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        prefix = self._prefix(embeddings)
        tok = self.lm.get_input_embeddings()(input_ids)
        inputs = torch.cat([prefix, tok], dim=1)
        b = input_ids.shape[0]
        ones = torch.ones((b, self.n_prefix), dtype=attention_mask.dtype, device=dev)
        mask = torch.cat([ones, attention_mask], dim=1)
        hidden = self.lm.transformer(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        # Position p predicts token p+1. Only positions whose target is a caption token or EOS
        # get logits: the 30k-wide LM head dominates the cost, so skipping the prefix, BOS and
        # padding positions roughly halves a training step.
        targets = input_ids[:, 1:]
        keep = attention_mask[:, 1:].bool()
        h = hidden[:, self.n_prefix : self.n_prefix + targets.shape[1]][keep]
        y = targets[keep]
        if bool(self.allowed.all()):
            return F.cross_entropy(self.lm.lm_head(h).float(), y)
        rows = self.allowed.nonzero().squeeze(1)  # the trained sub-vocabulary
        if not bool(self.allowed[y].all()):
            raise ValueError(
                "a caption token is outside the decoder's vocabulary; call restrict_vocab"
            )
        local = torch.full((self.allowed.shape[0],), -1, dtype=torch.long, device=dev)
        local[rows] = torch.arange(rows.shape[0], device=dev)
        logits = F.linear(h, self.lm.lm_head.weight[rows], _bias_rows(self.lm.lm_head, rows))
        return F.cross_entropy(logits.float(), local[y])

    def loss(self, embeddings: torch.Tensor, captions: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(captions)
        return self.loss_from_ids(embeddings, ids, mask)

    @torch.no_grad()
    def generate(
        self,
        embeddings: torch.Tensor | np.ndarray,
        num_beams: int = 1,
        max_new_tokens: int = 24,
        batch_size: int = 64,
    ) -> list[str]:
        """Greedy (num_beams=1) or beam search. Every row shares the same prefix length, so the
        batch needs no left padding; finished rows are padded by `generate` after their EOS."""
        was_training = self.training
        self.eval()
        try:
            emb = torch.as_tensor(
                np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings
            )
            if emb.ndim == 1:
                emb = emb[None]
            out: list[str] = []
            dev = self.prefix[0].weight.device
            bos = self.lm.get_input_embeddings()(torch.tensor([self.bos_id], device=dev))
            for i in range(0, emb.shape[0], batch_size):
                prefix = self._prefix(emb[i : i + batch_size])
                b = prefix.shape[0]
                inputs = torch.cat([prefix, bos[None].expand(b, 1, -1)], dim=1)
                mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=dev)
                extra = {}
                if not bool(self.allowed.all()):
                    extra["logits_processor"] = LogitsProcessorList([_AllowedTokens(self.allowed)])
                seqs = self.lm.generate(
                    inputs_embeds=inputs,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                    do_sample=False,
                    eos_token_id=self.eos_id,
                    pad_token_id=self.pad_id,
                    bos_token_id=self.bos_id,
                    **extra,
                )
                out.extend(self.detokenize(row.tolist()) for row in seqs)
            return out
        finally:
            self.train(was_training)


def train_decoder(
    decoder: YDecoder,
    embeddings: torch.Tensor | np.ndarray,
    captions: list[str],
    steps: int,
    lr: float,
    batch_size: int,
    progress: bool = True,
    *,
    noise_std: float | None = None,
    weight_decay: float = 0.01,
    warmup: int = 20,
    seed: int = 0,
    fit_stats: bool = True,
    restrict_vocab: bool = True,
) -> dict[str, Any]:
    """Train the decoder on (embedding, caption) pairs; returns the loss history, the final loss
    (mean of the last 10 steps, less noisy than the last one) and steps/s.

    Captions are tokenised once up front and the input standardisation is fitted to these
    embeddings (`fit_stats=False` keeps the current one, e.g. to fine-tune), and the output
    vocabulary restricted to the captions' tokens (`restrict_vocab=False` trains the full
    softmax, ~100x slower per step on CPU with a 30k vocabulary); each step samples a random batch and perturbs its
    embeddings (see `YDecoder.noisy`). Linear warm-up then cosine decay to 10% of `lr`: the
    cosine tail is what makes the last few percent of exact reproductions stick.
    """
    from tqdm.auto import tqdm

    if len(captions) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(captions)} captions")
    emb = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings)
    emb = emb.float().to(decoder.prefix[0].weight.device)
    ids, mask = decoder.tokenize(captions)
    if fit_stats:
        decoder.fit_input_stats(emb)
    if restrict_vocab:
        decoder.restrict_vocab(list(captions))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # fused AdamW: one kernel over all tensors, ~5x faster than the default on CPU, where the
    # 30k x d token table makes the optimizer step a large share of a tiny model's step
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay, fused=True)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    decoder.train()
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), desc="y-decoder", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(captions), (min(batch_size, len(captions)),), generator=gen)
        m = mask[idx]
        width = int(m.sum(1).max())  # trim padding columns: shorter batches, faster steps
        z = decoder.noisy(emb[idx], noise_std)
        loss = decoder.loss_from_ids(z, ids[idx, :width], m[:, :width])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    decoder.eval()
    return {
        "losses": losses,
        "final_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
        "steps_per_s": steps / elapsed if elapsed > 0 else float("nan"),
        "seconds": elapsed,
        "cpu_seconds": cpu,
    }
