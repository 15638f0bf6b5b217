"""FSDP2 training of VL-JEPA on Ray Train from pre-embedded features, tracked in MLflow.

Modules, one job each: config (the run's one config object), data (Ray Data ingest), parallelize
(FSDP2 from outside the model), distributed (cross-rank negatives), joint (the trainable towers),
loop (the per-worker train function), checkpoint (DCP shards through Ray Train), tracking (MLflow),
trainer (the driver: fit, export, register).
"""

from pipelines.train.config import TrainConfig

__all__ = ["TrainConfig", "run_training"]


def run_training(cfg: TrainConfig, **kwargs):
    from pipelines.train.trainer import run_training as _run

    return _run(cfg, **kwargs)
