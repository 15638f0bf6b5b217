"""The saved-model folder both model kinds share (VL-JEPA and the token-prediction baseline):
`config.json`, `architecture.json`, `model.safetensors`, written whole and read with a format
check, and the parameter counting that reports them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from jepa.config import FORMAT_VERSION

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ARCH_FILE = "architecture.json"


def dedup_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, each storage once (tied weights such as an LM head that
    shares the token table are saved under their first name only)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype)
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    return out


def write(
    directory: str, state: dict[str, torch.Tensor], config: dict[str, Any], arch: dict[str, Any]
) -> None:
    """The weights (temp name + rename: never half-written), then the two JSON files."""
    from safetensors.torch import save_file

    tmp = os.path.join(directory, WEIGHTS_FILE + ".tmp")
    save_file(state, tmp, metadata={"format_version": str(FORMAT_VERSION)})
    os.replace(tmp, os.path.join(directory, WEIGHTS_FILE))
    for fname, payload in ((ARCH_FILE, arch), (CONFIG_FILE, config)):
        with open(os.path.join(directory, fname), "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)


def read_config(directory: str) -> dict[str, Any]:
    """The raw config.json, refusing a format newer than this code."""
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        raw = json.load(f)
    version = int(raw.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ValueError(f"{directory}: format_version {version} is newer than {FORMAT_VERSION}")
    return raw


def count_params(module: nn.Module | None, seen: set[int] | None = None) -> tuple[int, int]:
    """(trainable, frozen) parameter counts, each tensor once; pass one `seen` set across calls
    to count a tensor shared by two modules (a tied head) only in the first."""
    if module is None:
        return 0, 0
    seen = set() if seen is None else seen
    t = f = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            t += p.numel()
        else:
            f += p.numel()
    return t, f
