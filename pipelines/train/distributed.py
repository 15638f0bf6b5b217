"""Cross-rank negatives for InfoNCE.

Each rank all-gathers the embeddings of every rank's batch and scores its own B rows against all
N*B columns (CLIP/open_clip's `local_loss` mode; memory O(B * N*B), not O((N*B)^2)). A rank's
embeddings are columns in every other rank's logits too, so their gradient has a part computed
on the other ranks: the gather's backward all-reduces the gathered gradient and keeps this rank's
slice (open_clip's `gather_with_grad`). Dropping that part (a detached gather) leaves each rank
with the gradient of its rows only, a biased step that trained measurably worse here. With FSDP
averaging parameter gradients over ranks, the result is the exact gradient of the mean loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0; backward sums every rank's gradient and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        world, rank = dist.get_world_size(), dist.get_rank()
        local = x.contiguous()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        ctx.rows, ctx.offset = local.shape[0], rank * local.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # all_reduce, not reduce_scatter: gloo has no reduce_scatter
        return grad[ctx.offset : ctx.offset + ctx.rows]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all ranks' rows concatenated in rank order, offset of this rank's rows).

    Differentiable when `x` requires grad: every rank must then run the backward (they do, as
    each runs the same step). Integer tensors (caption keys) are gathered without a graph.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    offset = dist.get_rank() * x.shape[0]
    if x.requires_grad:
        return _GatherRows.apply(x), offset
    local = x.contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts, dim=0), offset


def all_gather_objects(obj):
    """Every rank's Python object, in rank order (used for validation embeddings and counters)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float, device: torch.device | None = None) -> float:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (so all ranks act on one decision, e.g. where to resume)."""
    if not _group():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
