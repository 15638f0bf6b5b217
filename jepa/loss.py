"""Bidirectional InfoNCE between predicted and target embeddings, the regression losses of the
paper's loss ablation, and collapse diagnostics.

InfoNCE is the paper's only training signal: its alignment term pulls each prediction to its
own caption embedding and its uniformity term (the softmax over negatives) keeps the embedding
space from collapsing, which is why no other regulariser is needed. Cosine and L2 regression
(`cosine_regression`, `l2_regression`) have the alignment term only: with a trainable Y-encoder
nothing stops both towers from agreeing on one point, which is what the ablation measures. The
diagnostics make a collapse visible in the logs before retrieval metrics would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def info_nce(
    pred: torch.Tensor,
    target: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_target: torch.Tensor | None = None,
    all_pred: torch.Tensor | None = None,
    offset: int = 0,
    keys: torch.Tensor | None = None,
    all_keys: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    all_groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE; returns (loss, pred->target logits B x M).

    `logit_scale` is the multiplier (1/temperature, e.g. `VLJEPA.scale()`), not its log.
    With negatives gathered from other ranks, `all_target` / `all_pred` are the (N*B, D)
    gathered tensors and this rank's positives sit at rows offset..offset+B. The local rows of
    the gathered tensors are replaced by the local (autograd-connected) `target` / `pred`, so
    gradients flow through this rank's own embeddings even if the gather did not carry them.

    `keys` (B,) / `all_keys` (M,) are optional integer ids of what each row describes (e.g. a
    hash of its caption). A column with the same key as a row's positive is not a negative: a
    corpus where several clips share one caption would otherwise teach the model to push a
    clip away from its own caption. Such columns are masked out of both softmaxes (the returned
    logits keep them, for diagnostics).

    `groups` (B,) / `all_groups` (M,) are optional integer ids of the kind of row (stage 2: a
    caption row or a question row). A row's negatives are the columns of its own group only, so
    a batch that mixes kinds is the sum of one InfoNCE per kind: a question's one-word answer is
    never contrasted with another clip's caption, which says the same thing in a sentence ("moves
    left" against "the red ball moves left") and would push the answer away from its own meaning.
    """
    b = pred.shape[0]
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    at = t if all_target is None else _splice(F.normalize(all_target.float(), dim=-1), t, offset)
    ap = p if all_pred is None else _splice(F.normalize(all_pred.float(), dim=-1), p, offset)
    if all_target is None and all_pred is None:
        offset = 0
    scale = torch.as_tensor(logit_scale, dtype=p.dtype, device=p.device)
    labels = torch.arange(b, device=p.device) + offset
    logits_p2t = scale * p @ at.T
    logits_t2p = scale * t @ ap.T
    mask = None
    if keys is not None:
        mask = false_negative_mask(keys, keys if all_keys is None else all_keys, labels)
    if groups is not None:
        other = groups.to(p.device).reshape(-1, 1) != (
            groups if all_groups is None else all_groups
        ).to(p.device).reshape(1, -1)
        mask = other if mask is None else mask | other
    if mask is not None:
        lp, lt = (
            logits_p2t.masked_fill(mask, float("-inf")),
            logits_t2p.masked_fill(mask, float("-inf")),
        )
    else:
        lp, lt = logits_p2t, logits_t2p
    loss = 0.5 * (F.cross_entropy(lp, labels) + F.cross_entropy(lt, labels))
    return loss, logits_p2t


def cosine_regression(
    pred: torch.Tensor,
    target: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_target: torch.Tensor | None = None,
    all_pred: torch.Tensor | None = None,
    offset: int = 0,
    keys: torch.Tensor | None = None,
    all_keys: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    all_groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (1 - cos(pred_i, target_i)) over the batch; returns (loss, pred->target logits B x M).

    Same signature as `info_nce` so the trainer can swap it in: only the positive pairs enter the
    loss (no negatives, hence no uniformity term); the gathered tensors, `keys`, `groups` and
    `logit_scale` only shape the diagnostic logits, computed as `info_nce` computes them.
    """
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    loss = (1.0 - (p * t).sum(-1)).mean()
    return loss, _diagnostic_logits(p, all_target, t, offset, logit_scale)


def l2_regression(
    pred: torch.Tensor,
    target: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_target: torch.Tensor | None = None,
    all_pred: torch.Tensor | None = None,
    offset: int = 0,
    keys: torch.Tensor | None = None,
    all_keys: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    all_groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared Euclidean distance |p_i - t_i|^2 between the L2-normalised embeddings;
    returns (loss, pred->target logits B x M) like `cosine_regression`.

    On unit vectors |p - t|^2 = 2 (1 - cos(p, t)): this is exactly twice `cosine_regression`,
    so with a scale-invariant optimizer (Adam) the two train almost identically; it is kept as
    its own choice because that equivalence is itself what the ablation shows.
    """
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    loss = (p - t).pow(2).sum(-1).mean()
    return loss, _diagnostic_logits(p, all_target, t, offset, logit_scale)


def _diagnostic_logits(p, all_target, t, offset, logit_scale) -> torch.Tensor:
    at = t if all_target is None else _splice(F.normalize(all_target.float(), dim=-1), t, offset)
    scale = torch.as_tensor(logit_scale, dtype=p.dtype, device=p.device)
    return (scale * p @ at.T).detach()


# The embedding objective's losses by `TrainConfig.loss` name.
LOSSES = {"infonce": info_nce, "cosine": cosine_regression, "l2": l2_regression}


def get_loss(name: str):
    """The loss function for a `TrainConfig.loss` name (ValueError on an unknown one)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}") from None


def false_negative_mask(
    keys: torch.Tensor, all_keys: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """(B, M) True where column j shares row i's key but is not its positive."""
    keys = keys.to(all_keys.device)
    same = keys.reshape(-1, 1) == all_keys.reshape(1, -1)
    same[torch.arange(keys.shape[0], device=same.device), labels] = False
    return same


def _splice(gathered: torch.Tensor, local: torch.Tensor, offset: int) -> torch.Tensor:
    b = local.shape[0]
    if offset < 0 or offset + b > gathered.shape[0]:
        raise ValueError(f"offset {offset} + batch {b} outside gathered rows {gathered.shape[0]}")
    return torch.cat([gathered[:offset], local, gathered[offset + b :]], dim=0)


def alignment(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared distance between paired unit vectors (0 = perfectly aligned, 4 = opposite)."""
    p = F.normalize(pred.detach().float(), dim=-1)
    t = F.normalize(target.detach().float(), dim=-1)
    return float((p - t).pow(2).sum(-1).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """log E[exp(-t |zi - zj|^2)] over distinct pairs (Wang & Isola); lower = more uniform,
    0 = fully collapsed."""
    z = F.normalize(z.detach().float(), dim=-1)
    if z.shape[0] < 2:
        return 0.0
    sq = torch.pdist(z).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the batch (RankMe, Garrido et al.):
    1 when everything lies on one direction, up to min(B, D) when spread out. Not centred, so a
    batch collapsed onto one point scores ~1 however much noise sits around it."""
    z = z.detach().float()
    s = torch.linalg.svdvals(z)
    if float(s.sum()) <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_diagnostics(z: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, float]:
    """Mean per-dimension std of the unit embeddings, effective rank, uniformity, and (when the
    paired targets are given) alignment. A collapsing model shows std -> 0, rank -> 1,
    uniformity -> 0."""
    zn = F.normalize(z.detach().float(), dim=-1)
    out = {
        "std": float(zn.std(0, unbiased=zn.shape[0] > 1).mean()) if zn.shape[0] > 1 else 0.0,
        "effective_rank": effective_rank(zn),
        "uniformity": uniformity(zn),
    }
    if target is not None:
        out["alignment"] = alignment(z, target)
    return out
