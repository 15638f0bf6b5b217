"""`--init`: the weights a run starts from (stage 2 starts from a stage-1 model).

Two kinds of source, told apart by what the folder holds: a saved model (`save_pretrained`:
config.json + model.safetensors; a models:/ or runs:/ URI downloads one) or a run's DCP
checkpoint (a folder with DCP's `.metadata`). Only the model's weights are taken: the step count
and the optimizer start fresh (resuming a run is `--resume-from`). Every rank loads them itself,
before the model is sharded, so nothing needs a process group; a restarted worker group loads
them again and then its own newer checkpoint over them.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def local_dir(uri: str, tracking_uri: str | None) -> str:
    from pipelines.train import tracking

    return tracking.resolve_model(uri, tracking_uri)


def is_checkpoint(path: str) -> bool:
    return os.path.exists(os.path.join(path, ".metadata"))


def saved_config(uri: str, tracking_uri: str | None):
    """The VLJEPAConfig of a saved model `uri` names, or None for a run's checkpoint."""
    from jepa import saved
    from jepa.config import VLJEPAConfig

    path = local_dir(uri, tracking_uri)
    if is_checkpoint(path):
        return None
    raw = saved.read_config(path)
    objective = raw.pop("objective", "embedding")
    if objective != "embedding":
        raise ValueError(f"--init {uri}: a {objective!r} model cannot start an embedding run")
    return VLJEPAConfig.from_dict(raw)


def load_init(uri: str, model: torch.nn.Module, tracking_uri: str | None) -> str:
    """Load the weights `uri` names into the (unsharded) training module; returns what it was."""
    path = local_dir(uri, tracking_uri)
    if is_checkpoint(path):
        from pipelines.train.checkpoint import load_model_weights

        load_model_weights(path, model)
        log.info("init: weights from the checkpoint %s", uri)
        return "checkpoint"
    from jepa.model import VLJEPA

    saved_model = VLJEPA.from_pretrained(path)
    # A stage-1 model saved before its predictor had a query adapter starts one fresh.
    missing, unexpected = model.predictor.load_state_dict(
        saved_model.predictor.state_dict(), strict=False
    )
    if unexpected or [k for k in missing if not k.startswith("query_adapter.")]:
        raise ValueError(f"--init {uri}: its predictor does not fit this model ({missing[:3]})")
    model.y_encoder.load_state_dict(saved_model.y_encoder.state_dict())
    with torch.no_grad():
        model.log_scale.copy_(saved_model.logit_scale.reshape(model.log_scale.shape))
    log.info("init: weights from the saved model %s", uri)
    return "model"
