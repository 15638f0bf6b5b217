"""Benchmark one stage-2 (SFT) training step of the tiny model, with and without reading each
distinct text once.

A stage-2 batch asks a few hundred distinct questions over and over and its targets are a
handful of answers ("yes", "red", ...) plus some captions. Two parts of the step did the same
work again for every row:
  * the frozen query encoder (MiniLM) read every row's question (now `QueryEncoder.states`
    keeps each distinct query's token states);
  * the Y-encoder encoded every row's target (now `JointEmbedding.encode_targets` encodes each
    distinct target once and spreads it back; values and gradients are unchanged).

Both variants run in this process on the same batches (the synthetic corpus's question types,
balanced as `vljepa train --stage sft` balances them, a quarter caption rows), one thread (as a
Ray Train worker on a 2-core machine gets), alternating step by step so machine load hits both
alike: forward, InfoNCE, backward, AdamW. Writes benchmarks/results/stage2_step.{json,md}.

    python benchmarks/stage2_step.py [--steps 12] [--batch 24]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedding_vs_tokens import machine, step_parser, step_table, write_results  # noqa: E402

from jepa.config import VLJEPAConfig  # noqa: E402
from jepa.loss import info_nce  # noqa: E402
from jepa.predictor import encode_queries, query_tokenizer  # noqa: E402
from jepa.query_encoder import QueryEncoder  # noqa: E402
from jepa.text import load_tokenizer  # noqa: E402
from pipelines.synth import questions as Q  # noqa: E402
from pipelines.synth.events import CLASSES  # noqa: E402
from pipelines.train.data import caption_key, pad_ids, query_inputs  # noqa: E402
from pipelines.train.joint import JointEmbedding  # noqa: E402

CAPTION_MIX = 0.25  # TrainConfig.caption_mix's default
MAX_TEXT = 32


def _rows(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """(question or "", target text): the question types drawn uniformly (the balanced stream),
    a phrasing and a colour at random; a caption row (no question) a quarter of the time."""
    types = list(Q.QUESTION_TYPES)
    rows = []
    for _ in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        if rng.random() < CAPTION_MIX:
            rows.append(("", cls.caption))
            continue
        qtype = types[int(rng.integers(len(types)))]
        candidates, templates = Q.QUESTION_TYPES[qtype]
        template = templates[Q.TRAIN_TEMPLATES[int(rng.integers(len(Q.TRAIN_TEMPLATES)))]]
        colour = Q.COLOUR_NAMES[int(rng.integers(len(Q.COLOUR_NAMES)))]
        rows.append((template.format(c=colour), candidates[int(rng.integers(len(candidates)))]))
    return rows


def main() -> None:
    ap = step_parser(__doc__, steps=12)
    ap.add_argument("--batch", type=int, default=24, help="rows per step (the suite's per worker)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    cfg = VLJEPAConfig.preset("tiny")
    name = cfg.predictor.query_encoder
    ytok = load_tokenizer(cfg.y_encoder.tokenizer)
    qtok = query_tokenizer(name)
    models = {v: JointEmbedding(cfg, train_query_embeddings=True) for v in ("every_row", "once")}
    models["once"].load_state_dict(models["every_row"].state_dict())
    optims = {v: torch.optim.AdamW(m.param_groups(1e-3, 0.05)) for v, m in models.items()}
    cached = QueryEncoder(name, MAX_TEXT)  # what `shared()` gives the training data path
    plain = cached.backbone  # the baseline reads every row through the same frozen weights

    def step(variant: str, rows, x) -> float:
        model, opt = models[variant], optims[variant]
        t0 = time.perf_counter()
        qids = encode_queries(qtok, [q for q, _ in rows], cfg.predictor)
        q = query_inputs(qids, None, MAX_TEXT)
        if variant == "once":
            states = cached.states(q["query_ids"], q["query_mask"])
        else:
            with torch.no_grad():
                hidden = plain(input_ids=q["query_ids"], attention_mask=q["query_mask"])
            states = hidden.last_hidden_state.float() * q["query_mask"].unsqueeze(-1)
        ids, mask = pad_ids([ytok(t)["input_ids"] for _, t in rows], MAX_TEXT)
        keys = torch.tensor([caption_key(ytok(t)["input_ids"]) for _, t in rows])
        groups = q["query_mask"].any(dim=1).long()
        pred = model.predictor(x, None, q["query_mask"], states)
        target = (
            model.encode_targets(ids, mask) if variant == "once" else model.y_encoder(ids, mask)
        )
        loss, _ = info_nce(pred, target, model.scale(), keys=keys, groups=groups)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"every_row": [], "once": []}
    distinct = {"questions": [], "targets": []}
    for i in range(args.warmup + args.steps):
        rows = _rows(rng, args.batch)
        x = torch.randn(args.batch, 128, cfg.x_encoder.hidden_size)
        distinct["questions"].append(len({q for q, _ in rows if q}))
        distinct["targets"].append(len({t for _, t in rows}))
        for variant in ("every_row", "once") if i % 2 == 0 else ("once", "every_row"):
            seconds = step(variant, rows, x)
            if i >= args.warmup:
                times[variant].append(seconds)
        print(f"step {i}: " + ", ".join(f"{v} {t[-1]:.2f}s" for v, t in times.items() if t))

    base, new = (statistics.median(times[v]) for v in ("every_row", "once"))
    result = {
        "benchmark": "stage2_step",
        "machine": machine(),
        "preset": "tiny",
        "batch": args.batch,
        "threads": args.threads,
        "timed_steps": args.steps,
        "seconds_per_step": {"every_row": base, "once": new},
        "speedup": base / new,
        "distinct_questions_per_batch_mean": float(np.mean(distinct["questions"])),
        "distinct_targets_per_batch_mean": float(np.mean(distinct["targets"])),
        "query_states_cached_after": len(cached._states),
    }
    table = step_table(
        f"stage2_step: tiny preset, batch {args.batch}, {args.threads} thread(s), "
        f"median of {args.steps} steps",
        ("every row through the query encoder and the Y-encoder (baseline)", base),
        ("each distinct question / target once", new),
        f"Distinct per batch of {args.batch}: "
        f"{result['distinct_questions_per_batch_mean']:.1f} questions, "
        f"{result['distinct_targets_per_batch_mean']:.1f} targets.",
    )
    write_results(args.out, "stage2_step", result, table)


if __name__ == "__main__":
    main()
