"""The VL-JEPA model in PyTorch + transformers. No Ray imports here: parallelism and placement
are applied from outside (see pipelines/).

Submodules are imported lazily (PEP 562) so `import jepa.config` does not pay for transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VLJEPAConfig": "jepa.config",
    "XEncoderConfig": "jepa.config",
    "PredictorConfig": "jepa.config",
    "YEncoderConfig": "jepa.config",
    "YDecoderConfig": "jepa.config",
    "XEncoder": "jepa.x_encoder",
    "Predictor": "jepa.predictor",
    "YEncoder": "jepa.y_encoder",
    "VLJEPA": "jepa.model",
    "info_nce": "jepa.loss",
    "collapse_diagnostics": "jepa.loss",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jepa' has no attribute {name!r}")
