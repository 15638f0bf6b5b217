"""How a training run's model config is put together: the X-encoder (and sampling) from the
features, the rest from the preset and the flags; the only refusals are real incompatibilities."""

from __future__ import annotations

import pytest

from jepa.config import VLJEPAConfig, XEncoderConfig
from pipelines.features import Features, IncompatibleFeatures, check_model_x_encoder
from pipelines.train.config import TrainConfig


def _features(**x) -> Features:
    tiny = VLJEPAConfig.preset("tiny")
    xc = XEncoderConfig(**{**tiny.x_encoder.model_dump(), **x})
    return Features("F", ["F/data/a.parquet"], xc, tiny.y_encoder, "tiny", {})


def test_x_encoder_comes_from_the_features_and_tunables_from_the_flags():
    f = _features(num_frames=8, image_size=48, fps=4.0, dtype="bfloat16")
    cfg = TrainConfig(
        data="F", y_lr_mult=0.1, temperature=0.05, learnable_temperature=True
    ).build_model_config(f)
    assert cfg.x_encoder == f.x_encoder
    assert (cfg.y_lr_mult, cfg.temperature, cfg.learnable_temperature) == (0.1, 0.05, True)
    default = TrainConfig(data="F").build_model_config(f)
    assert default.y_lr_mult == VLJEPAConfig.preset("tiny").y_lr_mult


def test_captions_tokenised_for_another_y_encoder_are_refused():
    tiny = VLJEPAConfig.preset("tiny")
    y = tiny.y_encoder.model_copy(update={"tokenizer": "/elsewhere/gemma", "name_or_path": "g"})
    f = Features("F", ["F/data/a.parquet"], tiny.x_encoder, y, "tiny", {})
    with pytest.raises(IncompatibleFeatures, match="tokenised with '/elsewhere/gemma'"):
        TrainConfig(data="F").build_model_config(f)


def test_eval_check_ignores_compute_dtype_but_not_sampling():
    f = _features(dtype="bfloat16")
    check_model_x_encoder(f, VLJEPAConfig.preset("tiny").x_encoder, "m")  # dtype only rounds
    with pytest.raises(IncompatibleFeatures, match="fps"):
        check_model_x_encoder(_features(fps=4.0), VLJEPAConfig.preset("tiny").x_encoder, "m")
