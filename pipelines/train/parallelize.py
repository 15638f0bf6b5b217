"""FSDP2 applied from outside the model, the way torchtitan's parallelize.py does it.

The model code (jepa/) knows nothing of sharding. Here each transformer block of the predictor and
of the Y-encoder becomes its own FSDP unit (its parameters are all-gathered just before it runs and
freed after), and the root takes whatever is left (projections, heads, logit scale). The mesh is
sized from the Ray world: a CPU mesh + gloo without GPUs (an explicit CPU mesh, else FSDP moves
parameters to CUDA on machines that have one, pytorch #132471), CUDA + NCCL with them.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

log = logging.getLogger(__name__)

# Names of the ModuleLists that hold transformer blocks in the transformers models we use
# (Llama: layers, BERT/MiniLM: layer, GPT-2: h, Gemma3: layers).
BLOCK_LIST_NAMES = ("layers", "layer", "h", "blocks")


def build_mesh(use_gpu: bool) -> DeviceMesh:
    """A 1-D data-parallel mesh over the whole (already initialised) process group."""
    world = dist.get_world_size()
    return init_device_mesh("cuda" if use_gpu else "cpu", (world,), mesh_dim_names=("dp",))


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of every block list inside `module` (outermost lists only)."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, sub in module.named_modules():
        if not isinstance(sub, nn.ModuleList) or name.rsplit(".", 1)[-1] not in BLOCK_LIST_NAMES:
            continue
        if any(name.startswith(t + ".") for t in taken):
            continue
        taken.append(name)
        blocks.extend(sub)
    return blocks


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    sharded_children: tuple[str, ...] = ("predictor", "y_encoder"),
    bf16: bool = False,
    reshard_after_forward: bool = True,
    replicate_frozen: bool | None = None,
) -> nn.Module:
    """Shard each block of the named children, then the root. Returns the same (now FSDP) module.

    `replicate_frozen` (default: without bf16) leaves the parameters that need no gradient out of
    FSDP: every rank keeps them whole. A sharded frozen weight is still all-gathered before every
    forward, for nothing: the tiny preset's predictor token table (7.8 M of its 33 M parameters)
    is frozen and never read (benchmarks/fsdp_cpu_step.py). Under bf16 they stay sharded, so the
    mixed-precision policy casts them with the rest of their unit."""
    if replicate_frozen is None:
        replicate_frozen = not bf16
    frozen = {p for p in model.parameters() if not p.requires_grad} if replicate_frozen else set()
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    n_blocks = 0
    for child_name in sharded_children:
        child = getattr(model, child_name, None)
        if child is None:
            continue
        for block in transformer_blocks(child):
            fully_shard(
                block,
                mesh=mesh,
                mp_policy=mp,
                reshard_after_forward=reshard_after_forward,
                ignored_params=frozen,
            )
            n_blocks += 1
    # The root's own parameters (heads, projections, embeddings, logit scale) form the last unit;
    # it is not resharded after forward because backward needs it at once.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False, ignored_params=frozen)
    log.info(
        "FSDP2: %d block units + root on a %s mesh of %d; %d frozen parameters replicated",
        n_blocks,
        mesh.device_type,
        mesh.size(),
        len(frozen),
    )
    return model


def sharding_report(model: nn.Module) -> dict[str, object]:
    """What the test of 'FSDP2 is real' looks at: how many of the parameters FSDP manages are
    DTensors, and their placements; `replicated_params` counts the frozen ones left out of it
    (whole on every rank)."""
    from torch.distributed.tensor import DTensor

    total = dtensors = replicated = 0
    placements: set[str] = set()
    local_numel = global_numel = 0
    for p in model.parameters():
        if not isinstance(p, DTensor) and not p.requires_grad:
            replicated += 1
            continue
        total += 1
        if isinstance(p, DTensor):
            dtensors += 1
            placements.add(str(tuple(p.placements)))
            local_numel += p.to_local().numel()
            global_numel += p.numel()
    return {
        "params": total,
        "dtensor_params": dtensors,
        "replicated_params": replicated,
        "placements": sorted(placements),
        "mesh_size": next(
            (p.device_mesh.size() for p in model.parameters() if isinstance(p, DTensor)), 1
        ),
        "local_numel": local_numel,
        "global_numel": global_numel,
    }
