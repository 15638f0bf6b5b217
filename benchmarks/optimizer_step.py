"""Benchmark the AdamW step of the tiny preset's trainable parameters: the per-parameter loop
(torch's CPU default) against the fused kernel the trainer now asks for (`pipelines/train/loop.py`).

MiniLM (22M) and the predictor with its token table (~11M) are trained, and torch's default
CPU AdamW walks them one tensor at a time, every step, on every worker. Both variants update the same parameters with the same gradients in this process,
one thread (as a Ray Train worker on a 2-core machine gets), alternating so machine load hits
both alike; the largest difference of the updated weights is reported too (the fused kernel
computes the same update). Writes benchmarks/results/optimizer_step.{json,md}.

    python benchmarks/optimizer_step.py [--steps 10]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedding_vs_tokens import machine, step_parser, step_table, write_results  # noqa: E402

from jepa.config import VLJEPAConfig  # noqa: E402
from pipelines.train.joint import JointEmbedding  # noqa: E402

VARIANTS = {"loop": {}, "fused": {"fused": True}}


def main() -> None:
    args = step_parser(__doc__, steps=10).parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = VLJEPAConfig.preset("tiny")
    models = {v: JointEmbedding(cfg, train_query_embeddings=True) for v in VARIANTS}
    models["fused"].load_state_dict(models["loop"].state_dict())
    optims = {
        v: torch.optim.AdamW(m.param_groups(1e-3, 0.05), lr=1e-3, **VARIANTS[v])
        for v, m in models.items()
    }
    params = {v: [p for p in m.parameters() if p.requires_grad] for v, m in models.items()}
    n_params = sum(p.numel() for p in params["loop"])

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.warmup + args.steps):
        grads = [torch.randn_like(p) for p in params["loop"]]
        for variant in ("loop", "fused") if i % 2 == 0 else ("fused", "loop"):
            for p, g in zip(params[variant], grads, strict=True):
                p.grad = g.clone()
            t0 = time.perf_counter()
            optims[variant].step()
            if i >= args.warmup:
                times[variant].append(time.perf_counter() - t0)
    drift = max(
        float((a - b).abs().max()) for a, b in zip(params["loop"], params["fused"], strict=True)
    )

    base, new = (statistics.median(times[v]) for v in ("loop", "fused"))
    result = {
        "benchmark": "optimizer_step",
        "machine": machine(),
        "torch": torch.__version__,
        "preset": "tiny",
        "trainable_params": n_params,
        "threads": args.threads,
        "timed_steps": args.steps,
        "seconds_per_step": {"loop": base, "fused": new},
        "speedup": base / new,
        "max_weight_difference": drift,
    }
    table = step_table(
        f"optimizer_step: AdamW over the tiny preset's {n_params / 1e6:.1f}M trainable "
        f"parameters, {args.threads} thread(s), median of {args.steps} steps",
        ("per-parameter loop (torch's CPU default, baseline)", base),
        ("fused kernel (`fused=True`, what the trainer uses)", new),
        f"Largest weight difference after {args.warmup + args.steps} steps: {drift:.1e}.",
    )
    write_results(args.out, "optimizer_step", result, table)


if __name__ == "__main__":
    main()
