"""AdamW parameter groups for VL-JEPA's trainable towers, shared by the model and the trainer.

One rule in one place: the Y-encoder learns at `y_lr_mult` x the predictor's rate (the paper's
0.05: its pretrained text space should move slowly), and biases, norms and scalars (the logit
scale) get no weight decay. The frozen X-encoder and the separately trained Y-decoder are in no
group, and neither is the Y-encoder at `y_lr_mult == 0` (frozen: no update and no optimizer
state, rather than a group at lr 0 whose AdamW moments would still be kept). Works on a plain
module or on one already sharded by FSDP2 (DTensor parameters).
"""

from __future__ import annotations

from typing import Any

from torch import nn

EXCLUDED_PREFIXES = ("x_encoder.", "y_decoder.")


def adamw_param_groups(
    model: nn.Module, lr: float, weight_decay: float, y_lr_mult: float
) -> list[dict[str, Any]]:
    """Groups named `<tower>.decay` / `<tower>.no_decay`, each with `lr`, `base_lr` (what a
    schedule scales) and `lr_mult`; sorted by name so every rank builds the same order."""
    buckets: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith(EXCLUDED_PREFIXES):
            continue
        tower = "y_encoder" if name.startswith("y_encoder.") else "predictor"
        if tower == "y_encoder" and y_lr_mult == 0:
            continue
        kind = "decay" if p.ndim >= 2 else "no_decay"
        buckets.setdefault(f"{tower}.{kind}", []).append(p)
    groups = []
    for name in sorted(buckets):
        mult = y_lr_mult if name.startswith("y_encoder.") else 1.0
        groups.append(
            {
                "name": name,
                "params": buckets[name],
                "lr": lr * mult,
                "base_lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": weight_decay if name.endswith(".decay") else 0.0,
            }
        )
    return groups
