"""The per-worker training function that Ray Train runs on every rank.

One step: a micro-batch of pre-embedded visual tokens and caption ids -> both towers (FSDP2) ->
embeddings all-gathered across ranks -> InfoNCE of this rank's rows against every rank's columns
(B x N*B logits) -> backward (gradient sync only on the last micro-batch) -> clip -> AdamW. Rank 0
streams metrics to MLflow; every rank writes its DCP shard at checkpoints. A restarted worker group
resumes from the newest complete checkpoint (Ray Train's, or a newer one in the run's storage that
the controller never registered: `checkpoint.choose`), so the step count continues.

`objective="tokens"` trains the token-prediction baseline (`jepa.token_model.TokenVLM`) through
the same loop: the same micro-batches in the same order, optimizer groups, schedule, clipping,
FSDP2 wrapping of the Llama blocks, DCP checkpoints and MLflow stream; only the step's forward
(teacher-forced cross-entropy on the caption ids, no cross-rank gather) and the validation
(cross-entropy and zero-shot classification by label likelihood) differ.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np
import torch

from pipelines.train import checkpoint as ckpt
from pipelines.train.config import TrainConfig
from pipelines.train.data import event_key, iter_train_batches, pad_ids, read_val
from pipelines.train.distributed import all_reduce_mean, broadcast_object, gather_rows

log = logging.getLogger(__name__)


QUERY_KEYS = ("query_ids", "query_mask", "query_states")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then constant or cosine down to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(model, optimizer, micro_batches, cfg: TrainConfig, device, loss_fn) -> dict:
    """One optimizer step over `grad_accum` micro-batches; returns scalars for logging."""
    optimizer.zero_grad(set_to_none=True)
    losses, last = [], {}
    for i, batch in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(sync)
        x = batch["x_tokens"].to(device, non_blocking=True)
        ids = batch["input_ids"].to(device, non_blocking=True)
        mask = batch["attention_mask"].to(device, non_blocking=True)
        query = {k: batch[k].to(device) for k in QUERY_KEYS if k in batch}
        pred, target, scale = model(x, ids, mask, **query)
        all_pred, offset = gather_rows(pred)
        all_target, _ = gather_rows(target)
        keys = all_keys = None
        if cfg.mask_duplicate_captions and "caption_key" in batch:
            keys = batch["caption_key"].to(device)
            all_keys, _ = gather_rows(keys)
        groups = all_groups = None
        if "query_mask" in batch:  # stage 2: caption rows and question rows, one InfoNCE each
            groups = batch["query_mask"].to(device).any(dim=1).long()
            all_groups, _ = gather_rows(groups)
        loss, logits = loss_fn(
            pred,
            target,
            scale,
            all_target=all_target,
            all_pred=all_pred,
            offset=offset,
            keys=keys,
            all_keys=all_keys,
            groups=groups,
            all_groups=all_groups,
        )
        (loss / len(micro_batches)).backward()
        losses.append(float(loss.detach()))
        last = {
            "pred": pred.detach(),
            "target": target.detach(),
            "logits_shape": tuple(logits.shape),
        }
        last["scale"] = float(scale.detach())
    grad_norm = None
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    optimizer.step()
    return {"loss": float(np.mean(losses)), "grad_norm": grad_norm, **last}


def token_train_step(model, optimizer, micro_batches, cfg: TrainConfig, device) -> dict:
    """`train_step` for the token objective: the model's forward is the caption cross-entropy."""
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for i, batch in enumerate(micro_batches):
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(i == len(micro_batches) - 1)
        loss = model(
            batch["x_tokens"].to(device, non_blocking=True),
            batch["input_ids"].to(device, non_blocking=True),
            batch["attention_mask"].to(device, non_blocking=True),
        )
        (loss / len(micro_batches)).backward()
        losses.append(float(loss.detach()))
    grad_norm = None
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    optimizer.step()
    return {"loss": float(np.mean(losses)), "grad_norm": grad_norm}


@torch.no_grad()
def validate(model, val: dict, cfg: TrainConfig, device, tokenize_labels) -> dict:
    """Retrieval both ways and zero-shot classification on the whole val split.

    Every rank runs the same forwards (FSDP needs them all); only rank 0 uses the result.
    A hit is a clip or caption carrying the query's event (captions repeat across clips).
    """
    from jepa import metrics

    model.eval()
    try:
        x_all = val["x_tokens"]
        if len(x_all) == 0:
            return {}
        preds = []
        for i in range(0, len(x_all), 64):
            x = torch.as_tensor(np.ascontiguousarray(x_all[i : i + 64])).to(device)
            pred, _, _ = model(x_tokens=x)
            preds.append(torch.nn.functional.normalize(pred.float(), dim=-1).cpu())
        v = torch.cat(preds)
        captions = val["captions"]
        uniq = sorted(set(captions))
        uid = {c: i for i, c in enumerate(uniq)}
        first = {}
        for i, c in enumerate(captions):
            first.setdefault(c, i)
        ids, mask = pad_ids([val["caption_ids"][first[c]] for c in uniq], cfg.max_text_len)
        _, t, _ = model(input_ids=ids.to(device), attention_mask=mask.to(device))
        t = torch.nn.functional.normalize(t.float(), dim=-1).cpu()
        labels = val["labels"]
        label_names = sorted(set(labels))
        enc = tokenize_labels(label_names)
        _, lab, _ = model(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
        )
        lab = torch.nn.functional.normalize(lab.float(), dim=-1).cpu()
    finally:
        model.train()
    clip_events = [event_key(c) for c in captions]
    query_events = [event_key(c) for c in uniq]
    sim_tv = (t @ v.T).numpy()  # caption queries x val clips
    t2v = metrics.recall_at_k(sim_tv, query_events, clip_events, ks=(1, 5))
    v2t = metrics.recall_at_k(sim_tv.T.copy(), clip_events, query_events, ks=(1, 5))
    true_idx = [label_names.index(lbl) for lbl in labels]
    zs = metrics.zero_shot_accuracy(v, lab, true_idx)
    out = {f"val/t2v_{_rk(k)}": float(val_) for k, val_ in t2v.items()}
    out.update({f"val/v2t_{_rk(k)}": float(val_) for k, val_ in v2t.items()})
    out["val/zero_shot_acc"] = float(zs)
    out["val/zero_shot_top5"] = float(metrics.zero_shot_accuracy(v, lab, true_idx, k=5))
    out["val/clips"] = float(len(captions))
    out["val/queries"] = float(len(uniq))
    # Similarity heatmap input: queries in caption order, clips sorted by their caption.
    order = np.argsort([uid[c] for c in captions], kind="stable")
    out["_sim"] = sim_tv[:, order]
    return out


@torch.no_grad()
def validate_tokens(model, val: dict, cfg: TrainConfig, device) -> dict:
    """The token objective's validation on the whole val split: teacher-forced cross-entropy per
    caption token, and zero-shot classification by label likelihood (`TokenVLM`'s protocol:
    mean log-prob of the class name as the caption). Every rank runs it (FSDP)."""
    from jepa import metrics
    from jepa.token_model import class_text

    model.eval()
    try:
        x_all = val["x_tokens"]
        if len(x_all) == 0:
            return {}
        total = count = 0.0
        names = sorted(set(val["labels"]))
        scores = []
        for i in range(0, len(x_all), 64):
            x = torch.as_tensor(np.ascontiguousarray(x_all[i : i + 64])).to(device)
            ids, mask = pad_ids(val["caption_ids"][i : i + 64], cfg.max_text_len)
            n = float(mask[:, 1:].sum())
            total += float(model(x, ids.to(device), mask.to(device))) * n
            count += n
            scores.append(model.label_log_likelihood(x, [class_text(c) for c in names]))
    finally:
        model.train()
    s = torch.cat(scores)
    truth = [names.index(lbl) for lbl in val["labels"]]
    return {
        "val/loss": total / max(1.0, count),
        "val/zero_shot_acc": metrics.top_k_accuracy(s, truth, 1),
        "val/zero_shot_top5": metrics.top_k_accuracy(s, truth, 5),
        "val/clips": float(len(truth)),
    }


@torch.no_grad()
def validate_vqa(model, val: dict, questions: list[dict], cfg: TrainConfig, device, qenc) -> dict:
    """Discriminative VQA on the val split's questions: the candidate nearest to the predicted
    embedding of (clip, question). Accuracy overall and per question type (held-out phrasings
    when the corpus follows the paraphrase split rule). Every rank runs it (FSDP)."""
    from pipelines.train.data import query_inputs

    if not questions or len(val["x_tokens"]) == 0:
        return {}
    row = {c: i for i, c in enumerate(val["clip_ids"])}
    questions = [q for q in questions if q["clip_id"] in row]
    cands = sorted({c for q in questions for c in q["candidates"]})
    model.eval()
    try:
        enc = model.y_encoder.tokenize(cands, max_length=cfg.max_text_len)
        _, cand, _ = model(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
        )
        cand = torch.nn.functional.normalize(cand.float(), dim=-1).cpu()
        preds = []
        for i in range(0, len(questions), 64):
            part = questions[i : i + 64]
            x = torch.as_tensor(np.stack([val["x_tokens"][row[q["clip_id"]]] for q in part]))
            query = query_inputs([q["query_ids"] for q in part], qenc)
            pred, _, _ = model(x_tokens=x.to(device), **{k: v.to(device) for k, v in query.items()})
            preds.append(torch.nn.functional.normalize(pred.float(), dim=-1).cpu())
    finally:
        model.train()
    from jepa.metrics import vqa_hits

    hits = vqa_hits(torch.cat(preds), cand, cands, questions)
    out = {f"val/vqa_{t}": float(np.mean(h)) for t, h in sorted(hits.items())}
    out["val/vqa_acc"] = float(np.mean([x for h in hits.values() for x in h]))
    return out


def _rk(k) -> str:
    s = str(k).lower().replace("@", "")
    return s if s.startswith("r") else f"r{s}"


def train_func(config: dict) -> None:
    """Ray Train entry point (one call per worker)."""
    import ray.train
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from jepa.config import VLJEPAConfig
    from jepa.loss import collapse_diagnostics, get_loss
    from pipelines.train.joint import JointEmbedding
    from pipelines.train.parallelize import apply_fsdp, build_mesh, sharding_report

    cfg = TrainConfig.model_validate(config["train"])
    model_cfg = VLJEPAConfig.from_dict(config["model"])
    run_id = config.get("mlflow_run_id")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(name)s: %(message)s")
    if cfg.gpus:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)

    tokens = cfg.objective == "tokens"
    if tokens:
        from jepa.token_model import TokenVLM

        model = TokenVLM.from_config(model_cfg).to(device)
        sharded: tuple[str, ...] = ("llama",)
    else:
        sft = cfg.stage == "sft"
        model = JointEmbedding(
            model_cfg, train_query_embeddings=sft, freeze_y_embeddings=cfg.freeze_y_embeddings
        ).to(device)
        sharded = ("predictor", "y_encoder")
    if cfg.init:  # before sharding; a resumed checkpoint below overrides it
        from pipelines.train.init import load_init

        load_init(cfg.init, model, cfg.tracking_uri)
    qenc = model_cfg.predictor.query_encoder if cfg.stage == "sft" else None
    val_questions = config.get("val_questions") or []
    loss_fn = get_loss(cfg.loss)
    mesh = build_mesh(cfg.gpus)
    apply_fsdp(model, mesh, sharded_children=sharded, bf16=cfg.gpus and cfg.mixed_precision)
    if tokens:  # validation calls it on the sharded root: unshard around it like a forward
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(model, "label_log_likelihood")
    report = sharding_report(model)
    # Fused AdamW: one kernel over all parameters (DTensor shards included) instead of a Python
    # loop; on a CPU worker the optimizer step is ~5x faster (benchmarks/optimizer_step.py).
    optimizer = torch.optim.AdamW(
        model.param_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr, fused=True
    )
    # Materialise AdamW's state for every parameter now (a zero-lr step; DCP's own helper), so
    # every checkpoint holds the same keys whether or not a parameter has had a gradient yet
    # (MiniLM's unused pooler never gets one) and a resumed run loads what it saved.
    get_state_dict(model, optimizer)

    from pipelines import storage

    # Ray Train keeps this run's checkpoints in <storage>/<run name>. Rank 0 decides where to
    # start and every rank follows it (they could otherwise see storage at different moments).
    run_dir = storage.join(cfg.storage, ctx.get_experiment_name())
    ckpt.clear_stale_staging(run_dir, rank)
    resume, tag = None, ""
    if rank == 0:
        resume = ckpt.choose(ray.train.get_checkpoint(), run_dir, cfg.resume_from)
        tag = ckpt.attempt_tag(run_dir, resume.step)
        log.info("start: %s (%s)", resume.uri or "step 0", resume.reason)
    resume, tag = broadcast_object((resume, tag))
    start_step = 0
    resumed_from = None
    if resume.uri is not None:
        state = ckpt.load_into(ckpt.as_checkpoint(resume.uri), model, optimizer)
        start_step = int(state["step"])
        resumed_from = int(state["step"])

    logger = None
    if rank == 0 and run_id:
        from pipelines.train.tracking import StepLogger

        logger = StepLogger(cfg.tracking_uri, run_id)
        logger.log(
            {
                "fsdp/dtensor_params": report["dtensor_params"],
                "fsdp/params": report["params"],
                "fsdp/replicated_params": report["replicated_params"],
                "fsdp/mesh_size": report["mesh_size"],
                "resume/start_step": start_step,
                "world_size": world,
            },
            step=start_step,
        )
        logger.tag("vljepa.resume", f"{resume.source}: {resume.uri or 'step 0'} ({resume.reason})")
    log.info(
        "rank %d/%d: %d/%d params sharded %s; start at step %d%s",
        rank,
        world,
        report["dtensor_params"],
        report["params"],
        report["placements"],
        start_step,
        f" (resumed from {resumed_from})" if resumed_from is not None else "",
    )

    train_shard = ray.train.get_dataset_shard("train")
    val = read_val(ray.train.get_dataset_shard("val"))

    def tokenize_labels(names):
        return model.y_encoder.tokenize(names, max_length=cfg.max_text_len)

    step, epoch = start_step, start_step  # the epoch number only seeds shuffling
    samples = 0
    t0 = time.perf_counter()
    window_t, window_samples = time.perf_counter(), 0
    last_metrics: dict = {}
    reported_at: float | None = None  # when the last checkpoint report returned
    model.train()
    while step < cfg.steps:
        micro: list = []
        step_at_epoch_start = step
        for batch in iter_train_batches(train_shard, cfg, epoch, qenc):
            micro.append(batch)
            if len(micro) < cfg.grad_accum:
                continue
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, cfg)
            if tokens:
                out = token_train_step(model, optimizer, micro, cfg, device)
            else:
                out = train_step(model, optimizer, micro, cfg, device, loss_fn)
            micro = []
            step += 1
            n = cfg.batch_size * cfg.grad_accum * world
            samples += n
            window_samples += n
            if step % cfg.log_every == 0 or step == cfg.steps:
                loss = all_reduce_mean(out["loss"], device if cfg.gpus else None)
                now = time.perf_counter()
                m = {
                    "train/loss": loss,
                    "train/lr": optimizer.param_groups[0]["lr"],
                    "train/samples_per_s": window_samples / max(1e-9, now - window_t),
                    "train/samples": float(samples + start_step * n),
                }
                if out["grad_norm"] is not None:
                    m["train/grad_norm"] = out["grad_norm"]
                if not tokens:
                    # 0 when the Y-encoder is frozen (y_lr_mult 0: it has no group at all)
                    m["train/lr_y_encoder"] = next(
                        (
                            g["lr"]
                            for g in optimizer.param_groups
                            if g.get("name", "").startswith("y_encoder.")
                        ),
                        0.0,
                    )
                    m["train/temperature"] = 1.0 / out["scale"]
                    m["train/logits_cols"] = float(out["logits_shape"][1])
                    m["train/logits_rows"] = float(out["logits_shape"][0])
                    for prefix, z in (("pred", out["pred"]), ("target", out["target"])):
                        d = collapse_diagnostics(z, out["target"] if prefix == "pred" else None)
                        m.update({f"collapse/{prefix}_{k}": v for k, v in d.items()})
                window_t, window_samples = now, 0
                last_metrics.update(m)
                if logger:
                    logger.log(m, step)
                    log.info(
                        "step %d loss %.4f %.1f samples/s", step, loss, m["train/samples_per_s"]
                    )
            final = step == cfg.steps
            if step % cfg.val_every == 0 or final:
                if tokens:
                    vm = validate_tokens(model, val, cfg, device)
                else:
                    vm = validate(model, val, cfg, device, tokenize_labels)
                    if cfg.stage == "sft":
                        vm.update(validate_vqa(model, val, val_questions, cfg, device, qenc))
                sim = vm.pop("_sim", None)
                last_metrics.update(vm)
                if logger and vm:
                    logger.log(vm, step)
                    log.info("step %d validation %s", step, {k: round(v, 3) for k, v in vm.items()})
                    if final and sim is not None:
                        from pipelines.train.tracking import similarity_figure

                        logger.log_figure(similarity_figure(sim), "plots/similarity_val.png")
            if step % cfg.checkpoint_every == 0 or final:
                ckpt.save_and_report(
                    model,
                    optimizer,
                    step=step,
                    rank=rank,
                    run_dir=run_dir,
                    tag=tag,
                    metrics={k: v for k, v in last_metrics.items() if isinstance(v, float)},
                    extra={
                        "world_size": world,
                        "torch_threads": torch.get_num_threads(),
                        "samples": samples,
                        "resumed_from": resumed_from,
                        "resume_source": resume.source,
                        "elapsed_s": time.perf_counter() - t0,
                        "objective": cfg.objective,
                        "stage": cfg.stage,
                        **(
                            {"logits_shape": list(out["logits_shape"])}
                            if "logits_shape" in out
                            else {}
                        ),
                        "fsdp": {
                            k: report[k]
                            for k in ("dtensor_params", "params", "replicated_params", "mesh_size")
                        },
                        "local_numel": report["local_numel"],
                        "global_numel": report["global_numel"],
                    },
                )
                reported_at = time.monotonic()
            _maybe_fail(cfg, step, rank, reported_at)
            if final:
                break
        if step == step_at_epoch_start:
            raise ValueError(
                f"an epoch gave no full batch: the train split is smaller than workers x "
                f"batch_size x grad_accum = {world * cfg.batch_size * cfg.grad_accum}"
            )
        epoch += 1
    if logger:
        logger.close()


def _maybe_fail(cfg: TrainConfig, step: int, rank: int, reported_at: float | None) -> None:
    """Testing hook: one worker dies (hard, like an OOM kill) once, at the end of `fail_at_step`:
    at a checkpoint step, at once after the checkpoint report returned. The marker file records
    how long after that report it died."""
    if cfg.fail_at_step is None or step != cfg.fail_at_step or rank != cfg.fail_rank:
        return
    if cfg.fail_marker and os.path.exists(cfg.fail_marker):
        return
    after = None if reported_at is None else (time.monotonic() - reported_at) * 1000
    with open(cfg.fail_marker, "w") as f:
        json.dump({"rank": rank, "step": step, "ms_after_report": after}, f)
    log.warning("fail_at_step: rank %d exits at step %d", rank, step)
    os._exit(1)
