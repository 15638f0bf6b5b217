"""`vljepa train` on the driver: validate, open the MLflow run, fit on Ray Train, export, register.

The driver does everything that must happen exactly once (the run's params, the consolidated
export, the registry entry, the plots); the workers do only what scales (the steps). The export
rebuilds the full VLJEPA (X-encoder included, from the same config and seed the features were
embedded with) and loads the trained predictor, Y-encoder and logit scale from the last DCP
checkpoint in one process: DCP reads sharded checkpoints without a process group. A run with
`objective="tokens"` exports the token-prediction baseline instead (`export_tokens`: a
`jepa.token_model.TokenVLM` directory whose config says `"objective": "tokens"`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from pipelines import storage
from pipelines.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str | None
    checkpoint: str | None
    export_dir: str | None
    model_version: str | None
    metrics: dict = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)
    storage_dir: str | None = None


def _run_config(cfg: TrainConfig, name: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    fs, path = storage.filesystem(cfg.storage)
    if not storage.is_s3(cfg.storage):
        os.makedirs(path, exist_ok=True)
    return RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=fs if storage.is_s3(cfg.storage) else None,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        worker_runtime_env={"env_vars": _worker_env(cfg.tracking_uri)},
    )


def _worker_env(tracking_uri: str) -> dict[str, str]:
    """What the workers need from this process: S3 and hub settings, the run's store (so
    anything in a worker that reaches MLflow reaches the same one), and malloc's huge pages
    (pipelines/train/malloc.py)."""
    from pipelines import tracking_store
    from pipelines.train import malloc

    keep = ("AWS_", "MLFLOW_", "HF_", "VLJEPA_", "TRANSFORMERS_")
    env = {k: v for k, v in os.environ.items() if k.startswith(keep)}
    env.update(tracking_store.worker_env(tracking_uri))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env[malloc.VAR] = malloc.worker_tunables(os.environ.get(malloc.VAR))
    return env


def run_training(cfg: TrainConfig) -> TrainResult:
    """Fit, export and register; returns where everything went.

    Raises `pipelines.features.IncompatibleFeatures` (before anything starts) when the features
    cannot train this model."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines import features as feats
    from pipelines.train import data as tdata
    from pipelines.train import tracking

    features = feats.load(cfg.data)
    init_cfg = None
    if cfg.init:
        from pipelines.train import init as init_weights

        init_cfg = init_weights.saved_config(cfg.init, cfg.tracking_uri)
    model_cfg = cfg.build_model_config(features, init_cfg)
    val_questions = _val_questions(cfg, model_cfg) if cfg.stage == "sft" else []
    counts = feats.split_counts(features)
    n_train, per_step = counts.get(cfg.train_split, 0), cfg.global_batch
    if n_train < per_step:
        raise feats.IncompatibleFeatures(
            f"{cfg.data} has {n_train} rows with split={cfg.train_split!r} (splits: "
            f"{counts or 'none'}); one step needs workers x batch_size x grad_accum = {per_step}"
        )
    meta = features.metadata
    log.info("features: %s", features.describe())
    storage.check_writable(cfg.storage)

    name = cfg.name or dt.datetime.now(dt.timezone.utc).strftime("vljepa-train-%Y%m%d-%H%M%S")
    params = {**cfg.params(), "model.config": model_cfg.to_json(), "model.hash": model_cfg.hash()}
    params.update(
        {f"vljepa.{k}": v for k, v in meta.items() if k not in ("x_encoder", "model_config")}
    )
    run_id = tracking.start_run(
        cfg.tracking_uri,
        cfg.experiment,
        name,
        params,
        tags={
            "vljepa.job": "train",
            "vljepa.preset": cfg.preset,
            "vljepa.objective": cfg.objective,
            "vljepa.stage": cfg.stage,
            "mlflow.runName": name,
        },
    )
    log.info("MLflow run %s in %s (%s)", run_id, cfg.experiment, cfg.tracking_uri)

    from pipelines.connect import connect

    connect(cfg.address)
    train_ds, val_ds = tdata.load_splits(
        cfg.data,
        cfg.train_split,
        cfg.val_split,
        questions=cfg.stage == "sft",
        question_sampling=cfg.question_sampling,
        question_weights=cfg.question_weights,
        caption_mix=cfg.caption_mix,
        workers=cfg.workers,
    )
    trainer = TorchTrainer(
        _train_func,
        train_loop_config={
            "train": cfg.model_dump(),
            "model": model_cfg.to_dict(),
            "mlflow_run_id": run_id,
            "val_questions": val_questions,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.gpus,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=_run_config(cfg, name),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    from pipelines import tracking_store

    client = tracking_store.client(cfg.tracking_uri)
    try:
        result = trainer.fit()
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    from pipelines.train import checkpoint as ckpt

    # The newest complete checkpoint, as a restarted group would choose it: a worker killed right
    # after the last report can leave it in storage but unregistered (result.checkpoint older).
    last = ckpt.choose(result.checkpoint, storage.join(cfg.storage, name))
    if last.uri is None:
        client.set_terminated(run_id, "FAILED")
        raise RuntimeError(f"training reported no checkpoint (error: {result.error})")
    ckpt_uri = last.uri
    log.info("last checkpoint: %s (%s)", ckpt_uri, last.reason)
    client.set_tag(run_id, "vljepa.checkpoint", ckpt_uri)

    export_dir, scratch = _export_target(cfg, name)
    with ckpt.as_checkpoint(ckpt_uri).as_directory() as d:
        state = ckpt.read_state(d)
        if cfg.objective == "tokens":
            model = export_tokens(model_cfg, d, export_dir)
        else:
            model = export(model_cfg, d, export_dir, calibrate_on=cfg.data, val_split=cfg.val_split)
    if model.config.detector is not None:
        client.log_dict(run_id, model.config.detector.model_dump(), "detector.json")
        client.log_metric(run_id, "detector/threshold", model.config.detector.threshold)
    tracking.log_model_dir(cfg.tracking_uri, run_id, export_dir, "model")
    if scratch:  # the run's storage is remote: its MLflow copy is the one that stays
        shutil.rmtree(scratch, ignore_errors=True)
        export_dir = f"runs:/{run_id}/model"
    version = None
    if cfg.register_name:
        mv = tracking.register(
            cfg.tracking_uri,
            run_id,
            cfg.register_name,
            tags={
                "preset": cfg.preset,
                "step": str(state["step"]),
                "objective": cfg.objective,
                "stage": cfg.stage,
                "trained_with_queries": str(model.config.trained_with_queries).lower(),
            },
        )
        version = str(mv.version)
    if cfg.objective == "tokens":
        plots = [
            (["train/loss"], "plots/loss.png", "caption cross-entropy"),
            (["val/zero_shot_acc", "val/zero_shot_top5"], "plots/validation.png", "validation"),
            (["val/loss"], "plots/val_loss.png", "val caption cross-entropy"),
        ]
    else:
        plots = [
            (["train/loss"], "plots/loss.png", f"{cfg.loss} loss"),
            (
                ["val/t2v_r1", "val/t2v_r5", "val/v2t_r1", "val/zero_shot_acc"],
                "plots/validation.png",
                "validation",
            ),
            (
                ["collapse/pred_std", "collapse/target_std"],
                "plots/collapse_std.png",
                "embedding std",
            ),
        ]
    if cfg.stage == "sft":
        plots.append((["val/vqa_acc"], "plots/vqa.png", "VQA accuracy (val questions)"))
    for keys, path, title in plots:
        tracking.plot_curves(cfg.tracking_uri, run_id, keys, path, title)
    client.log_text(run_id, json.dumps(state, indent=2), "train_state.json")
    client.set_terminated(run_id, "FINISHED")
    metrics = client.get_run(run_id).data.metrics
    return TrainResult(
        run_id=run_id,
        checkpoint=ckpt_uri,
        export_dir=export_dir,
        model_version=version,
        metrics=dict(metrics),
        train_state=state,
        storage_dir=storage.join(cfg.storage, name),
    )


def _export_target(cfg: TrainConfig, name: str) -> tuple[str, str | None]:
    """(where the export is written, a scratch folder to delete once MLflow has it, or None).

    `--export-dir`, else `model/` in the run's folder beside its checkpoints, so every run's
    export stays with the run. Storage on S3 cannot take `save_pretrained` directly: the export
    goes to a scratch folder that is removed after it is logged (the MLflow copy is the model)."""
    if cfg.export_dir:
        return cfg.export_dir, None
    if not storage.is_s3(cfg.storage):
        return os.path.join(storage.filesystem(storage.join(cfg.storage, name))[1], "model"), None
    scratch = tempfile.mkdtemp(prefix="vljepa-export-")
    return os.path.join(scratch, "model"), scratch


# Validation questions travel in the train loop's config (every rank scores the same ones).
MAX_VAL_QUESTIONS = 2000


def _val_questions(cfg: TrainConfig, model_cfg) -> list[dict]:
    """The val split's questions for in-training VQA accuracy; refuses features without any."""
    from pipelines import features as feats

    feats.check_query_tokenizer(cfg.data, model_cfg.predictor)
    t = feats.read_questions(cfg.data, cfg.val_split).slice(0, MAX_VAL_QUESTIONS)
    cols = ("clip_id", "type", "query_ids", "answer", "candidates")
    return t.select(list(cols)).to_pylist()


def _train_func(config: dict) -> None:
    from pipelines.train.loop import train_func

    train_func(config)


def export(
    model_cfg,
    checkpoint_dir: str,
    out_dir: str,
    calibrate_on: str | None = None,
    val_split: str = "val",
):
    """Consolidate the sharded checkpoint into a full `save_pretrained` VLJEPA directory.

    With `calibrate_on` (a features root), the online detector's threshold is calibrated on its
    validation clips and saved in the model's config: a registered model then knows how to serve
    its own streams (`vljepa serve` uses it unless the Serve config overrides it)."""
    import torch

    from jepa.model import VLJEPA
    from pipelines.train.checkpoint import load_model_weights
    from pipelines.train.joint import JointEmbedding

    joint = JointEmbedding(model_cfg, load_pretrained=False)
    load_model_weights(checkpoint_dir, joint)
    model = VLJEPA.from_config(model_cfg, load_pretrained=True)
    model.predictor.load_state_dict(joint.predictor.state_dict())
    model.y_encoder.load_state_dict(joint.y_encoder.state_dict())
    with torch.no_grad():
        model.logit_scale.copy_(joint.log_scale.reshape(model.logit_scale.shape))
    model.eval()
    if calibrate_on:
        calibrate(model, calibrate_on, val_split)
    model.save_pretrained(out_dir)
    log.info("exported the trained model to %s", out_dir)
    return model


def export_tokens(model_cfg, checkpoint_dir: str, out_dir: str):
    """Consolidate a token-objective checkpoint into a `TokenVLM.save_pretrained` directory
    (no X-encoder, no detector: it has no embedding stream to decode selectively)."""
    from jepa.token_model import TokenVLM
    from pipelines.train.checkpoint import load_model_weights

    model = TokenVLM.from_config(model_cfg, load_pretrained=False)
    load_model_weights(checkpoint_dir, model)
    model.eval()
    model.save_pretrained(out_dir)
    log.info("exported the trained token-prediction model to %s", out_dir)
    return model


# Enough clips to place the threshold; at paper scale a clip's tokens are ~16 MiB.
CALIBRATION_CLIPS = 512


def calibrate(model, data: str, split: str = "val") -> None:
    """Set `model.config.detector` from the predicted embeddings of the split's clips (left
    unset, with a warning, when the split has fewer than two labelled events)."""
    import numpy as np
    import torch

    from jepa.config import DetectorConfig
    from jepa.selective import calibrate_threshold
    from pipelines.evaluate import load_split

    try:
        val = load_split(data, split, limit=CALIBRATION_CLIPS)
    except ValueError as e:
        log.warning("detector not calibrated: %s", e)
        return
    if len(set(val["labels"])) < 2:
        log.warning("detector not calibrated: the %s split has fewer than 2 events", split)
        return
    with torch.no_grad():
        x = np.asarray(val["x_tokens"], dtype=np.float32)
        pred = torch.cat(
            [model.predict_queries(torch.from_numpy(x[i : i + 64])) for i in range(0, len(x), 64)]
        ).numpy()
    stats = calibrate_threshold(pred, val["labels"])
    model.config.detector = DetectorConfig(
        threshold=stats["threshold"], min_gap=stats["min_gap"], smoothing=stats["smoothing"]
    )
    log.info(
        "online detector calibrated on %d %s clips: threshold %.4f (same event median %.4f, "
        "different events median %.4f)",
        len(x),
        split,
        stats["threshold"],
        stats["within_median"],
        stats["across_median"],
    )
