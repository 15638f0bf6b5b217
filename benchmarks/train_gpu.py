"""A few FSDP2 training steps on a GPU with NCCL and bf16 at paper scale (random weights).

Run on a GPU machine (the lead runs it on a lent one): `python benchmarks/train_gpu.py`.
World of 1 by default (torchrun --nproc-per-node N works too). Builds the `paper` preset's
trainable towers from their architecture alone (8 Llama-3.2-1B-sized layers as the predictor,
an EmbeddingGemma-300M-sized Y-encoder; nothing is downloaded), shards them with the same
`pipelines.train.parallelize.apply_fsdp` the trainer uses (bf16 params, fp32 reduce), feeds
ViT-L-shaped visual tokens (2048 x 1024, what V-JEPA 2 ViT-L/16 gives for 16 x 256 px), and
prints samples/s and MFU. Optionally times the frozen ViT-L X-encoder forward too (--xenc).
Writes benchmarks/results/train_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 peak per GPU (TFLOP/s), for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


def peak_tflops(name: str) -> float:
    for k, v in PEAK_TFLOPS.items():
        if k in name:
            return v
    return float(os.environ.get("PEAK_TFLOPS", "989"))


def flops_per_sample(model, n_vis: int, n_text: int) -> float:
    """6 x (params touched per token) x tokens + attention (12 x layers x T^2 x d), per tower."""

    def tower(mod, tokens: int, layers, hidden: int) -> float:
        dense = sum(p.numel() for n, p in mod.named_parameters() if "embed" not in n)
        return 6 * dense * tokens + 12 * layers * tokens * tokens * hidden

    pc = model.predictor.llama.config
    yc = model.y_encoder.backbone.config
    return tower(model.predictor, n_vis, pc.num_hidden_layers, pc.hidden_size) + tower(
        model.y_encoder, n_text, yc.num_hidden_layers, yc.hidden_size
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=8, help="per-GPU batch")
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--xenc", action="store_true", help="also time the frozen ViT-L X-encoder")
    ap.add_argument("--out", default="benchmarks/results/train_gpu.json")
    ap.add_argument("--cpu", action="store_true", help="smoke-test the script on CPU (gloo, fp32)")
    args = ap.parse_args()

    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gpu = not args.cpu
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if gpu:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    from jepa.config import VLJEPAConfig
    from jepa.loss import info_nce
    from pipelines.train.distributed import gather_rows
    from pipelines.train.joint import JointEmbedding
    from pipelines.train.parallelize import apply_fsdp, build_mesh, sharding_report

    cfg = VLJEPAConfig.preset(args.preset)
    t0 = time.perf_counter()
    with torch.device(device):
        model = JointEmbedding(cfg, load_pretrained=False)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    apply_fsdp(model, build_mesh(gpu), bf16=gpu)
    rep = sharding_report(model)
    opt = torch.optim.AdamW(model.param_groups(1e-4, 0.05), lr=1e-4)
    n_vis, d_vis = cfg.x_encoder.num_tokens, cfg.x_encoder.hidden_size
    vocab = model.y_encoder.backbone.config.vocab_size
    b = args.batch

    def batch():
        x = torch.randn(
            b, n_vis, d_vis, device=device, dtype=torch.bfloat16 if gpu else torch.float32
        )
        ids = torch.randint(3, vocab, (b, args.text_len), device=device)
        return x, ids, torch.ones_like(ids)

    times = []
    for step in range(args.warmup + args.steps):
        x, ids, mask = batch()
        sync()
        t = time.perf_counter()
        pred, target, scale = model(x, ids, mask)
        ap_, off = gather_rows(pred)
        at_, _ = gather_rows(target)
        loss, logits = info_nce(pred, target, scale, all_target=at_, all_pred=ap_, offset=off)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    step_s = sum(times) / len(times)
    sps = b * world / step_s
    fps = flops_per_sample(model, n_vis, args.text_len)
    gpu_name = torch.cuda.get_device_name(device) if gpu else "cpu"
    mfu = fps * b / step_s / (peak_tflops(gpu_name) * 1e12)
    out = {
        "gpu": gpu_name,
        "world": world,
        "preset": args.preset,
        "params_total": n_params,
        "dtensor_params": rep["dtensor_params"],
        "params": rep["params"],
        "visual_tokens": n_vis,
        "batch_per_gpu": b,
        "step_s": step_s,
        "samples_per_s": sps,
        "tflops_per_gpu": fps * b / step_s / 1e12,
        "mfu": mfu,
        "peak_tflops": peak_tflops(gpu_name),
        "max_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
        "build_s": build_s,
        "logits_shape": list(logits.shape),
        "loss": float(loss),
    }
    if args.xenc:
        from jepa.x_encoder import XEncoder

        xe = (
            XEncoder.from_config(cfg.x_encoder, load_pretrained=False).to(device).to(torch.bfloat16)
        )
        frames = torch.randint(
            0,
            255,
            (b, cfg.x_encoder.num_frames, cfg.x_encoder.image_size, cfg.x_encoder.image_size, 3),
            dtype=torch.uint8,
            device=device,
        )
        for i in range(5):
            sync()
            t = time.perf_counter()
            xe(frames)
            sync()
            if i >= 2:
                out.setdefault("xenc_s", []).append(time.perf_counter() - t)
        out["xenc_clips_per_s"] = b / (sum(out["xenc_s"]) / len(out["xenc_s"]))
    if rank == 0:
        print(json.dumps(out, indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
