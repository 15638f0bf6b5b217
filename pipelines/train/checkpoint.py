"""Sharded DCP checkpoints reported through Ray Train, resume, and the consolidated export.

Every rank writes only its own shard (`__<rank>_0.distcp`; rank 0 also the `.metadata` and a small
`train_state.json`) into its own local directory and reports it; Ray Train merges the ranks'
directories into one checkpoint in the run's storage (local or S3). DCP stores each tensor's global
shape and shard offsets, so a checkpoint written by N ranks loads on M ranks (resharding) or on
one process with no process group at all (the export on the driver).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"


def save_and_report(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    rank: int,
    metrics: dict,
    extra: dict | None = None,
) -> None:
    """Write this rank's shard locally and report it (a barrier across ranks); then clean up."""
    import ray.train

    local = tempfile.mkdtemp(prefix=f"vljepa-ckpt-{step:07d}-r{rank}-")
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=local)
        if rank == 0:
            with open(os.path.join(local, STATE_FILE), "w") as f:
                json.dump({"step": step, **(extra or {})}, f)
        ray.train.report(
            {**metrics, "step": step},
            checkpoint=ray.train.Checkpoint.from_directory(local),
            checkpoint_dir_name=f"checkpoint_{step:07d}",
        )
    finally:
        shutil.rmtree(local, ignore_errors=True)


def read_state(checkpoint_dir: str) -> dict:
    with open(os.path.join(checkpoint_dir, STATE_FILE)) as f:
        return json.load(f)


def load_into(checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (+ optimizer) from a Ray Checkpoint on every rank; returns train_state."""
    with checkpoint.as_directory() as d:
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=d)
            set_state_dict(
                model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
        else:
            model_sd, _ = get_state_dict(model, [])
            state = {"model": model_sd}
            dcp.load(state, checkpoint_id=d)
            set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
        train_state = read_state(d)
    log.info("resumed from %s at step %d", checkpoint.path, train_state["step"])
    return train_state


def as_checkpoint(uri: str):
    """A Ray Checkpoint for a local dir or s3:// URI (manual resume, export)."""
    import ray.train

    from pipelines import storage

    fs, path = storage.filesystem(uri)
    return ray.train.Checkpoint(path=path, filesystem=fs)


def load_model_weights(checkpoint_dir: str, model: nn.Module) -> None:
    """Load the model part of a DCP checkpoint into an unsharded module, in one process.

    DCP reads only the keys asked for, so the optimizer state is never materialised here.
    """
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=checkpoint_dir)
    model.load_state_dict(state["model"])


def shard_files(checkpoint_dir: str) -> list[str]:
    """The per-rank shard files of a merged checkpoint (what the FSDP test inspects)."""
    return sorted(f for f in os.listdir(checkpoint_dir) if f.endswith(".distcp"))
