"""Cross-rank negatives for InfoNCE.

Each rank all-gathers the embeddings of every rank's batch and scores its own B rows against all
N*B columns. Only the local slice keeps its autograd graph (the others arrive detached): each rank
then gets exact gradients for its own rows, and FSDP's gradient reduce-scatter sums the ranks'
contributions, as in CLIP/open_clip's `local_loss` mode. Memory stays O(B * N*B), not O((N*B)^2).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_with_local_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all ranks' rows concatenated in rank order, offset of this rank's rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    local = x.contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.detach())
    parts[rank] = local  # the only slice with a graph back to this rank's parameters
    return torch.cat(parts, dim=0), rank * x.shape[0]


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
