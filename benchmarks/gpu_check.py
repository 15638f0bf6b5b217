"""GPU checks for a lent accelerator (one script, run once per lease).

1. Pre-embedding on the GPU (issue 4, acceptance 5): a ViT-L-sized V-JEPA 2 X-encoder (random
   weights, the paper's 256 px / 16 frames / 2048 tokens x 1024) in bf16 embeds real mp4 clips
   decoded by decord on a CPU thread pool; reports clips/s and GPU busy time (CUDA-event time of
   the forwards over wall time), beside the decode-only rate, so the bottleneck is visible.
2. FSDP2 training steps (issue 5, acceptance 7): the paper-sized trainable towers (8 Llama-3.2-1B
   layers + EmbeddingGemma-300M, random weights, no download) wrapped by
   `pipelines.train.parallelize.apply_fsdp` with bf16 mixed precision on an NCCL process group;
   reports samples/s and MFU (model FLOPs from parameter and attention counts, against the
   chip's dense bf16 peak).

It needs torch + transformers + pydantic (+ decord for part 1), not Ray: the parts under test
are the model code and the FSDP2 wrapping, which are the same inside Ray Train workers.

    python benchmarks/gpu_check.py --clips-dir DIR --out results.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _peak_tflops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0)


def _decode(path: str, num_frames: int) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, num_threads=1)
    idx = np.linspace(0, len(vr) - 1, num_frames).round().astype(int)
    return vr.get_batch(idx).asnumpy()


def bench_embed(clips_dir: str, n_clips: int, batch: int, threads: int) -> dict:
    from jepa.presets import build_preset
    from jepa.x_encoder import XEncoder

    cfg = build_preset("paper").x_encoder.model_copy(
        update={"name_or_path": None, "dtype": "bfloat16"}
    )
    enc = XEncoder.from_config(cfg).cuda()
    paths = sorted(glob.glob(os.path.join(clips_dir, "*.mp4")))
    paths = (paths * (n_clips // max(len(paths), 1) + 1))[:n_clips]
    nf = enc.num_frames

    # decode-only rate on the same thread pool (the CPU side's ceiling)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda p: _decode(p, nf), paths):
            pass
    decode_cps = len(paths) / (time.perf_counter() - t0)

    # warm-up (cuDNN/cuBLAS heuristics, allocator)
    warm = np.stack([_decode(paths[0], nf)] * batch)
    for _ in range(2):
        enc(warm)
    torch.cuda.synchronize()

    gpu_ms = 0.0
    done = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        frames_iter = pool.map(lambda p: _decode(p, nf), paths)
        buf: list[np.ndarray] = []
        for frames in frames_iter:
            buf.append(frames)
            if len(buf) == batch:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                tokens = enc(np.stack(buf))
                end.record()
                end.synchronize()
                gpu_ms += start.elapsed_time(end)
                done += len(buf)
                buf = []
        if buf:
            enc(np.stack(buf))
            done += len(buf)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {
        "x_encoder": "ViT-L/16 VJEPA2 (random weights), 256px, 16 frames, bf16",
        "tokens_per_clip": int(tokens.shape[1]),
        "clips": done,
        "batch": batch,
        "decode_threads": threads,
        "clips_per_s": done / wall,
        "decode_only_clips_per_s": decode_cps,
        "gpu_busy_fraction": gpu_ms / 1000.0 / wall,
        "gpu_ms_per_clip": gpu_ms / max(done - len(buf), 1),
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def _flops_per_sample(model, t_pred: int, t_y: int) -> float:
    """6 x non-embedding params x tokens (+ attention 12 L T^2 d) for each tower, fwd+bwd."""

    def tower(module, tokens: int, emb_names: tuple[str, ...]) -> float:
        params = sum(
            p.numel() for n, p in module.named_parameters() if not any(e in n for e in emb_names)
        )
        cfg = getattr(module, "llama", None) or getattr(module, "backbone", None)
        cfg = cfg.config if cfg is not None else None
        attn = 0.0
        if cfg is not None:
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            attn = 12.0 * cfg.num_hidden_layers * tokens**2 * cfg.num_attention_heads * head_dim
        return 6.0 * params * tokens + attn

    return tower(model.predictor, t_pred, ("embed_tokens",)) + tower(
        model.y_encoder, t_y, ("embed_tokens", "word_embeddings")
    )


def bench_fsdp(steps: int, batch: int, text_len: int) -> dict:
    import torch.distributed as dist

    from jepa.loss import info_nce
    from jepa.presets import build_preset
    from pipelines.train.joint import JointEmbedding
    from pipelines.train.parallelize import apply_fsdp, build_mesh, sharding_report

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if not dist.is_initialized():
        dist.init_process_group("nccl")
    torch.cuda.set_device(0)
    cfg = build_preset("paper")
    cfg.predictor.name_or_path = None
    cfg.y_encoder.name_or_path = None
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = JointEmbedding(cfg, load_pretrained=False)
    apply_fsdp(model, build_mesh(use_gpu=True), bf16=True)
    opt = torch.optim.AdamW(model.param_groups(5e-5, 0.05), fused=True)
    t_vis = cfg.x_encoder.num_tokens
    x = torch.randn(batch, t_vis, cfg.x_encoder.hidden_size, device="cuda", dtype=torch.bfloat16)
    vocab = cfg.y_encoder.arch["vocab_size"]
    ids = torch.randint(3, vocab, (batch, text_len), device="cuda")
    mask = torch.ones_like(ids)

    def step() -> float:
        pred, target, scale = model(x, ids, mask)
        loss, _ = info_nce(pred.float(), target.float(), scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    sps = steps * batch / wall
    flops = _flops_per_sample(model, t_vis, text_len)
    report = sharding_report(model)
    dist.destroy_process_group()
    return {
        "towers": "predictor = 8 Llama-3.2-1B layers (2048 wide), Y-encoder = EmbeddingGemma-300M arch",
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "visual_tokens": t_vis,
        "text_tokens": text_len,
        "batch": batch,
        "steps": steps,
        "samples_per_s": sps,
        "step_s": wall / steps,
        "model_tflops_per_sample": flops / 1e12,
        "mfu": flops * sps / (_peak_tflops() * 1e12),
        "loss_first_last": [losses[0], losses[-1]],
        "dtensor_params": report["dtensor_params"],
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clips-dir", required=True, help="folder of mp4 clips (decoded with decord)")
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--embed-batch", type=int, default=32)
    ap.add_argument("--decode-threads", type=int, default=12)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--skip", choices=["embed", "train"], action="append", default=[])
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if "embed" not in args.skip:
        result["embed"] = bench_embed(
            args.clips_dir, args.clips, args.embed_batch, args.decode_threads
        )
        print(json.dumps(result["embed"], indent=2), flush=True)
    if "train" not in args.skip:
        result["train"] = bench_fsdp(args.train_steps, args.train_batch, args.text_len)
        print(json.dumps(result["train"], indent=2), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    rows = ["| check | figure |", "|---|---|"]
    for part, vals in result.items():
        if isinstance(vals, dict):
            rows += [
                f"| {part}.{k} | {v:.4g} |" if isinstance(v, float) else f"| {part}.{k} | {v} |"
                for k, v in vals.items()
            ]
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(f"# GPU check on {result['device']}\n\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
