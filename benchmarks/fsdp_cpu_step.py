"""Benchmark one stage-2 training step of the tiny model on 2 CPU ranks (FSDP2 over gloo), as
the trainer shards it before and after frozen weights were left out of FSDP, and with the
Y-encoder's token table frozen (`--freeze-y-embeddings`) or the whole Y-encoder frozen
(`--y-lr-mult 0`, the README's stage-2 setting on CPUs).

On CPUs, FSDP2 moves every weight in a unit over gloo each step: the all-gather before forward
(and again before backward for the blocks), the reduce-scatter of the gradients after. The tiny
preset's predictor token table (30522 x 256) is frozen and never read, and MiniLM's token table
(30522 x 384) is nearly half of what trains although a corpus reaches few of its rows.
Variants:
  * sharded: every parameter in FSDP, frozen or not (the trainer before this change; baseline);
  * frozen_whole: frozen parameters left out of FSDP, whole on each rank (the trainer's default
    in fp32 runs);
  * frozen_whole + freeze_y_embeddings: MiniLM's token table frozen too;
  * frozen_whole + y_encoder_frozen: the whole Y-encoder frozen (`--y-lr-mult 0`): stage 2 then
    trains the predictor only, towards the answer space stage 1 left.

Both ranks build every variant's model from the same seed and step them in turn on the same batches
(the synthetic corpus's question types, balanced, a quarter caption rows, as `stage2_step.py`),
one thread per rank (as a Ray Train worker on a 2-core machine), the order rotating each step so
machine load hits all alike. Writes benchmarks/results/fsdp_cpu_step.{json,md}.

    python benchmarks/fsdp_cpu_step.py [--steps 10] [--batch 24]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedding_vs_tokens import machine, step_parser, write_results  # noqa: E402
from stage2_step import MAX_TEXT, _rows  # noqa: E402

# name -> (replicate_frozen, freeze_y_embeddings, y_lr_mult 0)
VARIANTS = {
    "sharded": (False, False, False),
    "frozen_whole": (True, False, False),
    "frozen_whole+freeze_y_embeddings": (True, True, False),
    "frozen_whole+y_encoder_frozen": (True, False, True),
}
WORLD = 2


def _rank(rank: int, init: str, args, out: str) -> None:
    from jepa.config import VLJEPAConfig
    from jepa.loss import get_loss
    from jepa.predictor import encode_queries, query_tokenizer
    from jepa.query_encoder import QueryEncoder
    from jepa.text import load_tokenizer
    from pipelines.train.data import caption_key, pad_ids, query_inputs
    from pipelines.train.joint import JointEmbedding
    from pipelines.train.loop import train_step
    from pipelines.train.parallelize import apply_fsdp, build_mesh, sharding_report

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    torch.set_num_threads(args.threads)
    cfg = VLJEPAConfig.preset("tiny")
    cfg.x_encoder.pool_temporal = args.pool_temporal
    name = cfg.predictor.query_encoder
    ytok, qtok = load_tokenizer(cfg.y_encoder.tokenizer), query_tokenizer(name)
    queries = QueryEncoder(name, MAX_TEXT)
    mesh = build_mesh(False)
    models, optims, reports = {}, {}, {}
    for v, (replicate, freeze, y_frozen) in VARIANTS.items():
        torch.manual_seed(0)
        vcfg = cfg.model_copy(update={"y_lr_mult": 0.0}) if y_frozen else cfg
        m = JointEmbedding(vcfg, train_query_embeddings=True, freeze_y_embeddings=freeze)
        apply_fsdp(m, mesh, replicate_frozen=replicate)
        models[v], reports[v] = m, sharding_report(m)
        optims[v] = torch.optim.AdamW(m.param_groups(1e-3, 0.05), lr=1e-3, fused=True)
    tc = types.SimpleNamespace(mask_duplicate_captions=True, grad_clip=1.0)
    loss_fn = get_loss("infonce")
    rng = np.random.default_rng(rank)
    tokens = cfg.x_encoder.num_tokens
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    for i in range(args.warmup + args.steps):
        rows = _rows(rng, args.batch)
        q = query_inputs(encode_queries(qtok, [r[0] for r in rows], cfg.predictor), None, MAX_TEXT)
        ids, mask = pad_ids([ytok(t)["input_ids"] for _, t in rows], MAX_TEXT)
        batch = {
            "x_tokens": torch.randn(args.batch, tokens, cfg.x_encoder.hidden_size),
            "input_ids": ids,
            "attention_mask": mask,
            "query_mask": q["query_mask"],
            "query_states": queries.states(q["query_ids"], q["query_mask"]),
            "caption_key": torch.tensor([caption_key(ytok(t)["input_ids"]) for _, t in rows]),
        }
        for v in order[i % len(order) :] + order[: i % len(order)]:
            dist.barrier()
            t0 = time.perf_counter()
            train_step(models[v], optims[v], [batch], tc, torch.device("cpu"), loss_fn)
            dist.barrier()
            if i >= args.warmup:
                times[v].append(time.perf_counter() - t0)
    if rank == 0:
        torch.save({"times": times, "reports": reports, "tokens": tokens}, out)
    dist.destroy_process_group()


def main() -> None:
    ap = step_parser(__doc__, steps=10)
    ap.add_argument("--batch", type=int, default=24, help="rows per rank (the suite's stage 2)")
    ap.add_argument(
        "--pool-temporal", type=int, default=2, help="as the suite's features are embedded"
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    scratch = Path(args.out) / ".fsdp_cpu_step"
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / "rank0.pt"
    rendezvous = scratch / "rendezvous"
    rendezvous.unlink(missing_ok=True)
    mp.spawn(_rank, args=(f"file://{rendezvous}", args, str(out)), nprocs=WORLD)
    got = torch.load(out)
    for f in (out, rendezvous):
        f.unlink(missing_ok=True)
    scratch.rmdir()

    med = {v: statistics.median(t) for v, t in got["times"].items()}
    base = med["sharded"]
    result = {
        "benchmark": "fsdp_cpu_step",
        "machine": machine(),
        "torch": torch.__version__,
        "preset": "tiny",
        "ranks": WORLD,
        "threads_per_rank": args.threads,
        "batch_per_rank": args.batch,
        "visual_tokens": got["tokens"],
        "timed_steps": args.steps,
        "seconds_per_step": med,
        "speedup_vs_sharded": {v: base / s for v, s in med.items()},
        "sharding": {
            v: {k: r[k] for k in ("params", "dtensor_params", "replicated_params", "global_numel")}
            for v, r in got["reports"].items()
        },
    }
    rows = "".join(
        f"| {v} | {got['reports'][v]['global_numel'] / 1e6:.1f} M | "
        f"{got['reports'][v]['replicated_params']} | {s:.3f} | {base / s:.2f}x |\n"
        for v, s in med.items()
    )
    table = (
        f"# fsdp_cpu_step: one stage-2 step of the tiny model on {WORLD} gloo ranks, "
        f"{args.threads} thread(s) each, batch {args.batch} per rank, {got['tokens']} visual "
        f"tokens, median of {args.steps} steps, {machine()}\n\n"
        "| variant | sharded parameters | frozen tensors kept whole | seconds per step | "
        "speed-up |\n|---|---:|---:|---:|---:|\n" + rows + "\nBaseline: `sharded` (every "
        "parameter in FSDP, as before frozen weights were left out).\n"
    )
    write_results(args.out, "fsdp_cpu_step", result, table)


if __name__ == "__main__":
    main()
