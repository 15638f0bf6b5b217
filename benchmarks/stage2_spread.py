"""How far the suite's stage-2 VQA bar sits from what its stage-2 run scores, across seeds.

tests/pipelines/test_stage2.py asks the suite's stage-2 model for discriminative VQA accuracy
>= 0.9 overall on held-out paraphrases, with at most two question types under 0.9 and none under
0.7 (tests/stage2_models.py's `meets_vqa_bar`; issue 13 reads "every type"). One passing run says little about the margin: the run's data
order and the held-out phrasings decide which types land under 0.9, and a type's val set is
small (32 to 384 questions). This script makes the suite's corpus and stage-1 model once
(tests/trained_models.py's `embed_corpus` and `train_stage1`, the same configs), then trains
the suite's stage-2 config (tests/stage2_models.py's `stage2_config`) once per seed and scores
every model on the val split (held-out templates) and on the train split. The baseline is the
stage-1 model it started from, asked with the generic query (as `vljepa eval --baseline` shows
it). Use it to judge a change meant to widen the margin: run it before and after.

    python benchmarks/stage2_spread.py [--seeds 3] [--kill] [--work DIR]
Writes benchmarks/results/stage2_spread.json and stage2_spread.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedding_vs_tokens import RESULTS, machine, scratch_store, write_results  # noqa: E402


def score(model, features: str) -> dict:
    from pipelines.vqa_eval import vqa_accuracy
    from tests.stage2_models import VQA_BAR, meets_vqa_bar

    val, train = vqa_accuracy(model, features, "val"), vqa_accuracy(model, features, "train")
    by = val["by_type"]
    below = sorted(t for t, a in by.items() if a < VQA_BAR)
    lowest = min(by.values())
    return {
        "val_overall": val["overall"],
        "val_by_type": by,
        "val_counts": val["counts"],
        "lowest_type": min(by, key=by.get),
        "lowest": lowest,
        "types_below_bar": below,
        "every_type_at_bar": not below,
        "suite_bar": meets_vqa_bar(val["overall"], by),
        "train_overall": train["overall"],
    }


# The suite's bar before tests/stage2_models.py's VQA_BAR_RULE was recorded with the results.
OLD_RULE = "overall >= 0.9, at most one type under 0.9, none under 0.7"


def table(r: dict) -> str:
    lines = [
        f"# stage2_spread: the suite's stage-2 run over {len(r['runs'])} seeds, one stage-1 "
        f"model, {r['machine']}",
        "",
        f"{r['train_templates']} train phrasings a question type, {r['val_templates']} held out "
        f"for val; {r['stage2_steps']} steps of {r['stage2_batch_per_worker']} rows a worker; "
        f"rank 1 {'killed half-way and resumed' if r['kill'] else 'not killed'}.",
        "",
        "| model | val overall | lowest type (val) | types < 0.9 | suite bar | train overall "
        "| wall s |",
        "|---|---:|---|---|---|---:|---:|",
    ]
    b = r["baseline"]
    lines.append(
        f"| stage 1, generic query (baseline) | {b['val_overall']:.3f} | {b['lowest_type']} "
        f"{b['lowest']:.3f} | {', '.join(b['types_below_bar']) or '-'} | - | "
        f"{b['train_overall']:.3f} | {r['stage1_seconds']:.0f} |"
    )
    for run in r["runs"]:
        lines.append(
            f"| stage 2, seed {run['seed']} | {run['val_overall']:.3f} | {run['lowest_type']} "
            f"{run['lowest']:.3f} | {', '.join(run['types_below_bar']) or '-'} | "
            f"{'pass' if run['suite_bar'] else 'FAIL'} | {run['train_overall']:.3f} | "
            f"{run['seconds']:.0f} |"
        )
    s = r["summary"]
    counts = ", ".join(f"{t} {n}" for t, n in b["val_counts"].items())
    lines += [
        "",
        f"Stage 2 over stage 1 (val overall): mean {s['mean_val_overall']:.3f} against "
        f"{b['val_overall']:.3f}; every type >= 0.9 in {s['every_type_at_bar']} of "
        f"{len(r['runs'])} runs; the suite's bar ({r.get('suite_bar_rule', OLD_RULE)}) in "
        f"{s['suite_bar']} of {len(r['runs'])}.",
        f"Val questions per type: {counts}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="stage-2 runs, seeds 0..N-1")
    ap.add_argument("--kill", action="store_true", help="kill rank 1 half-way, as the suite does")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="stage2-spread-"))
    work.mkdir(parents=True, exist_ok=True)

    from jepa.model import VLJEPA
    from pipelines.train.trainer import run_training
    from tests.stage2_models import VQA_BAR_RULE, stage2_config
    from tests.trained_models import REGISTER_NAME, embed_corpus, train_stage1

    store = scratch_store(work)
    embedded = embed_corpus(work)
    stage1 = train_stage1(embedded, store, work)
    features = str(embedded.features)
    baseline = score(VLJEPA.from_pretrained(stage1.result.export_dir).eval(), features)
    init = f"models:/{REGISTER_NAME}/{stage1.result.model_version}"
    runs = []
    for seed in range(args.seeds):
        run_dir = work / f"seed{seed}"
        run_dir.mkdir(exist_ok=True)
        cfg = stage2_config(
            init,
            embedded,
            run_dir,
            str(run_dir / "runs"),
            store,
            seed=seed,
            kill=args.kill,
            name=f"sft-seed{seed}",
            register_name="",
        )
        t0 = time.monotonic()
        result = run_training(cfg)
        seconds = time.monotonic() - t0
        model = VLJEPA.from_pretrained(result.export_dir).eval()
        runs.append({"seed": seed, "seconds": seconds, **score(model, features)})
        print(runs[-1], flush=True)

    from pipelines.synth.questions import TRAIN_TEMPLATES, VAL_TEMPLATES

    r = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "train_templates": len(TRAIN_TEMPLATES),
        "val_templates": len(VAL_TEMPLATES),
        "stage2_steps": cfg.steps,
        "stage2_batch_per_worker": cfg.batch_size,
        "kill": args.kill,
        "suite_bar_rule": VQA_BAR_RULE,
        "stage1_seconds": stage1.seconds,
        "baseline": baseline,
        "runs": runs,
        "summary": {
            "mean_val_overall": statistics.fmean(x["val_overall"] for x in runs),
            "lowest_val_accuracy": min(x["lowest"] for x in runs),
            "every_type_at_bar": sum(x["every_type_at_bar"] for x in runs),
            "suite_bar": sum(x["suite_bar"] for x in runs),
        },
    }
    write_results(args.out, "stage2_spread", r, table(r))


if __name__ == "__main__":
    main()
