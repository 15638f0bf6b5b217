"""`serve.app:build_app`: the import path the Serve config names.

`serve deploy`, a RayService and `vljepa serve` all reach the app through this one builder, so
the app's arguments are validated in one place (AppArgs) and per-deployment settings (replicas,
autoscaling, CPUs, batch sizes) come only from the config file.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.config import AppArgs


def build_app(args: dict[str, Any] | None = None) -> Application:
    from serve.deployments import Decoder, Encoder, Ingress, TextEncoder

    a = AppArgs.model_validate(dict(args or {}))
    model = {
        "model_uri": a.model_uri,
        "preset": a.model_preset,
        "tracking_uri": a.mlflow_tracking_uri,
    }
    encoder = Encoder.bind(min_clip_frames=a.min_clip_frames, **model)
    text_encoder = TextEncoder.bind(**model)
    decoder = Decoder.bind(max_new_tokens=a.max_new_tokens, **model)
    return Ingress.bind(encoder, text_encoder, decoder, a.model_dump())
