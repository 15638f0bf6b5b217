"""Cross-rank InfoNCE gives the exact gradient of the whole-batch loss (2 gloo processes).

A rank's embeddings are also negatives in the other rank's logits; `gather_rows` must carry that
part of their gradient back (a detached gather, which this replaced, fails the comparison).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jepa.loss import info_nce
from pipelines.train.distributed import gather_rows

WORLD, B, D_IN, D = 2, 4, 6, 5
KEYS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5])  # duplicates inside and across ranks


def _model_and_data():
    torch.manual_seed(0)
    tower_x, tower_y = torch.nn.Linear(D_IN, D), torch.nn.Linear(D_IN, D)
    x, y = torch.randn(WORLD * B, D_IN), torch.randn(WORLD * B, D_IN)
    return tower_x, tower_y, x, y


def _grads(*modules) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    tower_x, tower_y, x, y = _model_and_data()
    rows = slice(rank * B, (rank + 1) * B)
    pred, target = tower_x(x[rows]), tower_y(y[rows])
    all_pred, offset = gather_rows(pred)
    all_target, _ = gather_rows(target)
    all_keys, _ = gather_rows(KEYS[rows])
    loss, logits = info_nce(
        pred,
        target,
        3.0,
        all_target=all_target,
        all_pred=all_pred,
        offset=offset,
        keys=KEYS[rows],
        all_keys=all_keys,
    )
    loss.backward()
    g = _grads(tower_x, tower_y)
    dist.all_reduce(g)  # what FSDP's reduce-scatter does: average over ranks
    if rank == 0:
        torch.save({"grad": g / WORLD, "logits_shape": tuple(logits.shape)}, out)
    dist.destroy_process_group()


def test_cross_rank_infonce_gradient_equals_single_process(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=WORLD)
    got = torch.load(out)
    assert got["logits_shape"] == (B, WORLD * B)

    tower_x, tower_y, x, y = _model_and_data()
    loss, _ = info_nce(tower_x(x), tower_y(y), 3.0, keys=KEYS)
    loss.backward()
    want = _grads(tower_x, tower_y)
    assert torch.allclose(got["grad"], want, atol=1e-6), (got["grad"] - want).abs().max()
