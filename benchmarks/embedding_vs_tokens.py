"""Benchmark the paper's controlled comparison: predicting the caption's embedding (VL-JEPA) vs
predicting its tokens (a VLM), at equal frozen encoder, data, batch and samples.

Both objectives train with `vljepa train` (`pipelines.train.run_training`: Ray Train, FSDP2, DCP
checkpoints, MLflow) on the same pre-embedded features (a synthetic corpus through the real
`vljepa embed` pipeline), with the same predictor layers (the tiny preset's Llama stack), batch,
steps, optimizer, schedule and seed; `--objective tokens` swaps the Y-encoder + InfoNCE for a
causal prefix-LM + LM head + cross-entropy on the caption tokens (jepa/token_model.py). Each
run checkpoints every steps/evals steps; every checkpoint is evaluated on the val split:

- captioning CIDEr-D against the caption and its paraphrases: the embedding model through its
  Y-decoder, trained for *that* checkpoint with `pipelines.decoder.run_decoder_training` (text
  only, through the checkpoint's Y-encoder); the token model through its own LM head (greedy);
- zero-shot classification top-1 / top-5 over the corpus's 26 classes, with the same class-name
  texts for both ("red_moves_left" -> "red moves left"): the embedding model by cosine between
  the predicted embedding and the Y-encoder's embedding of each name, the token model by the
  mean per-token log-likelihood of each name as the clip's caption;
- the embedding model's text-to-video R@1 (the token model has no embedding space).

Also reported: trainable parameters of each objective, training samples/s (the trainer's own
MLflow metric, median after the first window) and wall time. Several seeds (model init and data
order), the same corpus and split for all. Writes benchmarks/results/embedding_vs_tokens.{json,
md,png} and logs them, with the curves as metrics, to an MLflow run (experiment
`bench-embedding-vs-tokens` in --tracking-uri's store). The training and Y-decoder runs
themselves (each logs its exported model, ~0.15 GB) go to a scratch store in --work
(`scratch_store`), emptied at the end unless --keep-artifacts.

    python benchmarks/embedding_vs_tokens.py [--steps 150] [--evals 5] [--seeds 0 1 2] ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "vljepa-bench-objectives"
EXPERIMENT = "bench-embedding-vs-tokens"
CORPUS_SEED = 5  # the test suite's corpus: 26 classes x 20 clips, 20% of each class in val
DEFAULT_STEPS = 150  # x batch 32 = 4800 samples (~11.5 epochs of the 416 train clips)


# ----------------------------------------------------------------------------- shared helpers
class LoadSampler:
    """The 1-minute load average every `every` seconds in a background thread (the machine is
    shared: the figures say how busy it was while they were measured)."""

    def __init__(self, every: float = 30.0):
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._t.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        self._stop.set()
        s = self.samples + [os.getloadavg()[0]]
        return {"start": s[0], "end": s[-1], "mean": statistics.fmean(s), "max": max(s)}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def write_results(out: str | Path, name: str, result: dict, table: str) -> None:
    """OUT/NAME.json (the figures) and OUT/NAME.md (the table the docs cite), table printed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print(table)


def step_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """The step benchmarks' shared flags: timed and untimed steps per variant, threads, output."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=steps, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    return ap


def step_table(title: str, baseline: tuple[str, float], new: tuple[str, float], after: str) -> str:
    """The two-variant "seconds per step" table of the step benchmarks, speed-up underneath."""
    (base_label, base), (new_label, fast) = baseline, new
    return (
        f"# {title}, {machine()}\n\n| variant | seconds per step |\n|---|---:|\n"
        f"| {base_label} | {base:.3f} |\n| {new_label} | {fast:.3f} |\n\n"
        f"Speed-up: **{base / fast:.2f}x**. {after}\n"
    )


def prepare_features(work: Path, clips: int, seed: int = CORPUS_SEED) -> Path:
    """The synthetic corpus through the real `vljepa embed` pipeline (tiny preset); reused when a
    finished copy is already in `work` (the ablation benchmark trains on the same features)."""
    from pipelines.embed import EmbedConfig, run_embed
    from pipelines.synth import SynthConfig, generate

    corpus, features = work / f"corpus-{clips}-s{seed}", work / f"features-{clips}-s{seed}"
    if (features / "_SUCCESS").exists():
        print(f"features: reusing {features}", flush=True)
        return features
    t = time.perf_counter()
    generate(
        SynthConfig(
            out=str(corpus), clips=clips, streams=0, seed=seed, val_fraction=0.2, overwrite=True
        )
    )
    run_embed(
        EmbedConfig(
            manifest=str(corpus / "manifest.jsonl"),
            out=str(features),
            preset="tiny",
            progress=False,
            overwrite=True,
        )
    )
    print(f"features: {clips} clips embedded in {time.perf_counter() - t:.0f} s", flush=True)
    return features


def scratch_store(work: Path) -> str:
    """The MLflow store of the benchmark's own training and decoder runs (their metrics are read
    back from it); the summary run goes to the user's store."""
    return f"sqlite:///{(work / 'mlflow' / 'mlflow.db').resolve()}"


def readable(val: dict) -> dict:
    """The val split with class labels as the texts both objectives are scored with."""
    from jepa.token_model import class_text

    return {**val, "labels": [class_text(x) for x in val["labels"]]}


def by_caption(val: dict) -> dict:
    """The val split with each clip's class named by its canonical caption instead of the class
    name: classification among the 26 captions the models were trained on (not zero-shot; it
    tells "cannot be queried with unseen names" apart from "did not learn the events")."""
    return {**val, "labels": list(val["captions"])}


def train_run(
    features: Path,
    work: Path,
    tracking_uri: str,
    experiment: str,
    *,
    name: str,
    steps: int,
    batch: int,
    evals: int,
    seed: int,
    threads: int = 1,
    **overrides,
):
    """One `vljepa train` run with a checkpoint every steps/evals steps (all kept); returns
    (TrainResult, TrainConfig, wall seconds, median samples/s)."""
    from pipelines.train import TrainConfig
    from pipelines.train.tracking import metric_history
    from pipelines.train.trainer import run_training

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    cfg = TrainConfig(
        data=str(features),
        preset="tiny",
        workers=1,
        cpus_per_worker=threads,
        steps=steps,
        batch_size=batch,
        log_every=max(1, steps // 20),
        val_every=steps,
        checkpoint_every=max(1, steps // evals),
        keep_checkpoints=evals + 1,
        storage=str(work / "runs"),
        name=f"{name}-{stamp}",
        seed=seed,
        tracking_uri=tracking_uri,
        experiment=experiment,
        register_name=None,
        export_dir=str(work / "exports" / f"{name}-{stamp}"),
        **overrides,
    )
    t = time.perf_counter()
    res = run_training(cfg)
    wall = time.perf_counter() - t
    sps = [v for _, v in metric_history(tracking_uri, res.run_id, "train/samples_per_s")]
    steady = sps[1:] or sps
    return res, cfg, wall, (statistics.median(steady) if steady else float("nan"))


def checkpoints(res) -> list[tuple[int, str]]:
    """(step, local dir) of every checkpoint the run kept, in step order."""
    out = []
    for d in sorted(Path(res.storage_dir).glob("checkpoint_*")):
        if (d / "train_state.json").exists():
            out.append((json.loads((d / "train_state.json").read_text())["step"], str(d)))
    return out


def trainable(module) -> int:
    seen, n = set(), 0
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


# ----------------------------------------------------------------------------- evaluation
def eval_embedding(model_cfg, ckpt: str, out: Path, features: Path, val: dict, seed: int, args):
    """Export the checkpoint, train its Y-decoder (text only, through this checkpoint's
    Y-encoder), then score captioning, zero-shot and retrieval on val."""
    from jepa.model import VLJEPA
    from pipelines.decoder import DecoderConfig, run_decoder_training
    from pipelines.evaluate import captioning_cider, embedding_metrics
    from pipelines.train.trainer import export

    export(model_cfg, ckpt, str(out / "model"))
    t = time.perf_counter()
    dec = run_decoder_training(
        DecoderConfig(
            model=str(out / "model"),
            data=str(features),
            steps=args.decoder_steps,
            seed=seed,
            out=str(out / "with-decoder"),
            tracking_uri=args.scratch_uri,
            experiment=EXPERIMENT,
            register_name=None,
        )
    )
    dec_s = time.perf_counter() - t
    model = VLJEPA.from_pretrained(out / "with-decoder")
    m, pred, _ = embedding_metrics(model, readable(val))
    cider, texts = captioning_cider(model, val, pred)
    c, _, _ = embedding_metrics(model, by_caption(val))
    return {
        "cider": cider,
        "top1": m["zero_shot_acc"],
        "top5": m["zero_shot_top5"],
        "top1_caption": c["zero_shot_acc"],
        "top5_caption": c["zero_shot_top5"],
        "t2v_r1": m["t2v_r1"],
        "decoder_exact_match": dec["exact_match"],
        "decoder_seconds": dec_s,
        "examples": list(zip(val["captions"], texts, strict=True))[:3],
    }


def eval_tokens(model_cfg, ckpt: str, out: Path, val: dict):
    import torch

    from jepa import metrics
    from pipelines.evaluate import token_model_metrics
    from pipelines.train.trainer import export_tokens

    model = export_tokens(model_cfg, ckpt, str(out / "model"))
    m = token_model_metrics(model, readable(val))
    captions = sorted(set(val["captions"]))
    x = torch.as_tensor(val["x_tokens"]).float()
    scores = torch.cat(
        [model.label_log_likelihood(x[i : i + 64], captions) for i in range(0, len(x), 64)]
    )
    truth = [captions.index(c) for c in val["captions"]]
    return {
        "cider": m["captioning"]["cider"],
        "top1": m["classification"]["zero_shot_acc"],
        "top5": m["classification"]["zero_shot_top5"],
        "top1_caption": metrics.top_k_accuracy(scores, truth, 1),
        "top5_caption": metrics.top_k_accuracy(scores, truth, 5),
        "val_loss": m["classification"]["val_loss"],
        "examples": m["captioning"]["samples"][:3],
    }


# ----------------------------------------------------------------------------- reporting
METRICS = ("cider", "top1", "top5")
EXTRA = ("t2v_r1", "top1_caption", "top5_caption")


def aggregate(runs: list[dict]) -> dict:
    """Per objective and evaluation point: mean and (sample) std over seeds."""
    out: dict = {}
    for obj in ("embedding", "tokens"):
        mine = [r for r in runs if r["objective"] == obj]
        if not mine:
            continue
        points = []
        for i in range(min(len(r["points"]) for r in mine)):
            row = {"step": mine[0]["points"][i]["step"], "samples": mine[0]["points"][i]["samples"]}
            for k in (*METRICS, *EXTRA):
                vals = [r["points"][i][k] for r in mine if k in r["points"][i]]
                if vals:
                    row[k] = statistics.fmean(vals)
                    row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            points.append(row)
        out[obj] = {
            "points": points,
            "samples_per_s": statistics.fmean(r["samples_per_s"] for r in mine),
            "train_wall_s": statistics.fmean(r["train_wall_s"] for r in mine),
            "final_train_loss": statistics.fmean(r["final_train_loss"] for r in mine),
        }
    return out


def verdict(agg: dict, runs: list[dict]) -> dict:
    """The paper's direction at the last point: embedding > tokens, by how much, every seed?"""
    e, t = agg["embedding"]["points"][-1], agg["tokens"]["points"][-1]
    out = {}
    for k in METRICS:
        per_seed = {}
        for r in runs:
            per_seed.setdefault(r["seed"], {})[r["objective"]] = r["points"][-1][k]
        wins = [v["embedding"] > v["tokens"] for v in per_seed.values() if len(v) == 2]
        out[k] = {
            "embedding": e[k],
            "tokens": t[k],
            "difference": e[k] - t[k],
            "ratio": e[k] / t[k] if t[k] else float("inf"),
            "embedding_better": e[k] > t[k],
            "seeds_where_embedding_better": f"{sum(wins)}/{len(wins)}",
        }
    return out


def write_md(r: dict, path: Path) -> None:
    a, v, p = r["aggregate"], r["verdict"], r["params"]
    ld = r["load_average"]

    def pm(row, k, scale=1.0):
        if k not in row:
            return "-"
        return f"{scale * row[k]:.2f} ± {scale * row[k + '_std']:.2f}"

    lines = [
        "# Embedding prediction (VL-JEPA) vs token prediction (VLM), same encoder, data, samples",
        "",
        f"Tiny preset; {r['corpus']['clips']} synthetic clips ({r['corpus']['train']} train / "
        f"{r['corpus']['val']} val, {r['corpus']['classes']} classes) embedded by `vljepa embed`; "
        f"`vljepa train` with 1 worker, batch {r['batch']}, {r['steps']} steps "
        f"({r['steps'] * r['batch']} samples), lr {r['lr']} cosine, evaluated every "
        f"{r['steps'] // r['evals']} steps; seeds {', '.join(map(str, r['seeds']))} (mean ± std "
        f"over seeds). Y-decoder per embedding checkpoint: {r['decoder_steps']} steps. "
        f"CIDEr-D ceiling (every val clip given its own canonical caption): "
        f"{r['cider_ceiling']:.2f}. "
        f"{r['machine']}; torch threads per worker {r['torch_threads']}. 1-min load average "
        f"start/mean/max/end: {ld['start']:.1f} / {ld['mean']:.1f} / {ld['max']:.1f} / "
        f"{ld['end']:.1f} (a shared machine: wall times and samples/s include other jobs). "
        f"Total {r['seconds'] / 60:.1f} min.",
        "",
        "| samples seen | CIDEr-D embedding | CIDEr-D tokens | top-1 embedding | top-1 tokens | "
        "top-5 embedding | top-5 tokens | t2v R@1 embedding |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pe, pt in zip(a["embedding"]["points"], a["tokens"]["points"], strict=False):
        lines.append(
            f"| {pe['samples']} | {pm(pe, 'cider')} | {pm(pt, 'cider')} | "
            f"{pm(pe, 'top1', 100)} | {pm(pt, 'top1', 100)} | {pm(pe, 'top5', 100)} | "
            f"{pm(pt, 'top5', 100)} | {pm(pe, 't2v_r1', 100)} |"
        )
    if "top1_caption" in a["tokens"]["points"][0]:
        lines += [
            "",
            "Not zero-shot, a diagnostic: the same clips classified among the 26 canonical "
            "*captions* (the training targets) instead of the class names: embedding = nearest "
            "Y-encoder caption embedding, tokens = highest mean log-likelihood of the caption.",
            "",
            "| samples seen | top-1 embedding | top-1 tokens | top-5 embedding | top-5 tokens |",
            "|---:|---:|---:|---:|---:|",
        ]
        for pe, pt in zip(a["embedding"]["points"], a["tokens"]["points"], strict=False):
            lines.append(
                f"| {pe['samples']} | {pm(pe, 'top1_caption', 100)} | "
                f"{pm(pt, 'top1_caption', 100)} | {pm(pe, 'top5_caption', 100)} | "
                f"{pm(pt, 'top5_caption', 100)} |"
            )
    lines += [
        "",
        "| | embedding (VL-JEPA) | tokens (VLM) |",
        "|---|---:|---:|",
        f"| trainable parameters | {p['embedding']['trainable']:,} (predictor "
        f"{p['embedding']['predictor']:,} + Y-encoder {p['embedding']['y_encoder']:,} at "
        f"{p['embedding']['y_lr_mult']}x lr) | {p['tokens']['trainable']:,} (predictor layers + "
        f"token table {p['tokens']['predictor']:,} + LM head {p['tokens']['lm_head']:,}) |",
        f"| Y-decoder (trained separately, text only) | {p['embedding']['y_decoder']:,} | - |",
        f"| training samples/s (median, 1 worker) | {a['embedding']['samples_per_s']:.1f} | "
        f"{a['tokens']['samples_per_s']:.1f} |",
        f"| training wall time per run | {a['embedding']['train_wall_s']:.0f} s | "
        f"{a['tokens']['train_wall_s']:.0f} s |",
        f"| final train loss | {a['embedding']['final_train_loss']:.3f} (InfoNCE) | "
        f"{a['tokens']['final_train_loss']:.3f} (cross-entropy/token) |",
        "",
        f"At {a['embedding']['points'][-1]['samples']} samples: "
        + "; ".join(
            f"{name} {x['embedding']:.3g} vs {x['tokens']:.3g} "
            f"({'embedding ahead' if x['embedding_better'] else 'tokens ahead'} by "
            f"{abs(x['difference']):.3g}, {x['seeds_where_embedding_better']} seeds)"
            for name, x in (
                ("CIDEr-D", v["cider"]),
                ("top-1", v["top1"]),
                ("top-5", v["top5"]),
            )
        )
        + f". CIDEr-D as a share of the ceiling: embedding "
        f"{v['cider']['embedding'] / r['cider_ceiling']:.0%}, tokens "
        f"{v['cider']['tokens'] / r['cider_ceiling']:.0%} (the val clips carry the same 26 "
        "canonical captions the training clips do). Paper (15M samples, 0.5B vs 1B): CIDEr "
        "14.8 vs 7.1, top-5 41.0 vs 27.2.",
        "",
        "Protocols: CIDEr-D (jepa.metrics, coco-caption's) of one greedy caption per val clip "
        "against its caption and 3 paraphrases; the embedding model's caption comes from its "
        "Y-decoder fed the predicted embedding, the token model's from its LM head. Zero-shot: "
        "the same 26 class names for both; embedding = nearest Y-encoder name embedding "
        "(cosine), tokens = highest mean log-likelihood of the name as the caption. Both "
        "objectives read the same Parquet features, with the same seed (init and data order), "
        "batch, schedule and optimizer; per-seed numbers are in embedding_vs_tokens.json.",
    ]
    path.write_text("\n".join(lines) + "\n")


def figure(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    colours = {"embedding": "tab:blue", "tokens": "tab:orange"}
    for ax, k, title in zip(
        axes, METRICS, ("captioning CIDEr-D", "zero-shot top-1", "zero-shot top-5"), strict=True
    ):
        for run in r["runs"]:
            xs = [p["samples"] for p in run["points"]]
            ax.plot(xs, [p[k] for p in run["points"]], color=colours[run["objective"]], alpha=0.3)
        for obj, agg in r["aggregate"].items():
            xs = [p["samples"] for p in agg["points"]]
            ax.plot(
                xs, [p[k] for p in agg["points"]], color=colours[obj], marker="o", lw=2, label=obj
            )
        ax.set_xlabel("training samples seen")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(
        f"embedding vs token prediction (tiny preset, seeds {r['seeds']}: thin = one seed, "
        "thick = mean)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_mlflow(r: dict, files: list[Path], tracking_uri: str, name: str) -> str:
    from pipelines import tracking_store
    from pipelines.train import tracking

    params = {
        k: r[k] for k in ("steps", "batch", "evals", "seeds", "decoder_steps", "lr", "machine")
    }
    run_id = tracking.start_run(
        tracking_uri, EXPERIMENT, name, params, {"vljepa.job": "benchmark", "benchmark": name}
    )
    logger = tracking.StepLogger(tracking_uri, run_id, system_metrics=False)
    for obj, agg in r["aggregate"].items():
        for p in agg["points"]:
            logger.log(
                {f"{obj}/{k}": p[k] for k in (*METRICS, *EXTRA) if k in p}, step=p["samples"]
            )
    client = tracking_store.client(tracking_uri)
    for f in files:
        client.log_artifact(run_id, str(f))
    client.set_terminated(run_id, "FINISHED")
    return run_id


# ----------------------------------------------------------------------------- main
def cider_ceiling(val: dict) -> float:
    """CIDEr-D of the val split's own captions against its references (caption + paraphrases):
    what a captioner that always names the right event in its canonical words would score."""
    from jepa.metrics import cider

    refs = [[c, *(p or [])] for c, p in zip(val["captions"], val["paraphrases"], strict=True)]
    return cider(val["captions"], refs)


def render(path: Path) -> None:
    """Rewrite the .md and .png next to a results JSON (after a change to the report only)."""
    from pipelines.evaluate import load_split

    r = json.loads(path.read_text())
    if "cider_ceiling" not in r:
        r["cider_ceiling"] = cider_ceiling(load_split(r["corpus"]["features"], "val"))
        path.write_text(json.dumps(r, indent=2, default=str))
    write_md(r, path.with_suffix(".md"))
    figure(r, path.with_suffix(".png"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=520, help="synthetic clips (20%% val)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps per run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--evals", type=int, default=5, help="evaluation points along training")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--decoder-steps", type=int, default=250, help="Y-decoder steps per point")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per train worker")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="features, runs, exports")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store (default: the resolver's)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--keep-artifacts", action="store_true", help="keep checkpoints and exports in --work"
    )
    ap.add_argument("--render", type=Path, help="only rewrite .md/.png from this results JSON")
    args = ap.parse_args()
    if args.render:
        render(args.render)
        return 0

    from pipelines import features as feats
    from pipelines import tracking_store
    from pipelines.evaluate import load_split
    from pipelines.train.tracking import metric_history

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.tracking_uri = tracking_store.resolve(args.tracking_uri)
    args.scratch_uri = scratch_store(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    load = LoadSampler()
    t0 = time.perf_counter()

    features = prepare_features(args.work, args.clips)
    val = load_split(str(features), "val")
    n_train = args.clips - len(val["captions"])
    runs: list[dict] = []
    model_cfg = params = None
    lr = None
    partial = args.out / "embedding_vs_tokens.json"
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for objective in ("embedding", "tokens"):
            res, cfg, wall, sps = train_run(
                features,
                args.work,
                args.scratch_uri,
                EXPERIMENT,
                name=f"{objective}-s{seed}",
                steps=args.steps,
                batch=args.batch,
                evals=args.evals,
                seed=seed,
                threads=args.threads,
                objective=objective,
            )
            if model_cfg is None:
                model_cfg = cfg.build_model_config(feats.load(str(features)))
                params = count_params(model_cfg)
                lr = cfg.lr
            loss = metric_history(args.scratch_uri, res.run_id, "train/loss")
            run = {
                "objective": objective,
                "seed": seed,
                "run_id": res.run_id,
                "train_wall_s": wall,
                "samples_per_s": sps,
                "final_train_loss": loss[-1][1],
                "train_loss": loss,
                "points": [],
            }
            for step, ckpt in checkpoints(res):
                out = args.work / "evals" / f"{cfg.name}-{step}"
                t = time.perf_counter()
                if objective == "embedding":
                    m = eval_embedding(model_cfg, ckpt, out, features, val, seed, args)
                else:
                    m = eval_tokens(model_cfg, ckpt, out, val)
                m.update(step=step, samples=step * args.batch, eval_seconds=time.perf_counter() - t)
                run["points"].append(m)
                if not args.keep_artifacts:
                    shutil.rmtree(out, ignore_errors=True)
                print(
                    f"{objective} seed {seed} step {step}: CIDEr {m['cider']:.3f} top-1 "
                    f"{m['top1']:.3f} top-5 {m['top5']:.3f} ({m['eval_seconds']:.0f} s)",
                    flush=True,
                )
            runs.append(run)
            if not args.keep_artifacts:  # ~0.3 GB per checkpoint (weights + AdamW state)
                shutil.rmtree(res.storage_dir, ignore_errors=True)
                shutil.rmtree(res.export_dir, ignore_errors=True)
            partial.write_text(json.dumps({"partial": True, "runs": runs}, indent=2, default=str))

    agg = aggregate(runs)
    result = {
        "benchmark": "embedding_vs_tokens",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch_threads": args.threads,
        "corpus": {
            "clips": args.clips,
            "train": n_train,
            "val": len(val["captions"]),
            "classes": len(set(val["labels"])),
            "seed": CORPUS_SEED,
            "features": str(features),
        },
        "steps": args.steps,
        "batch": args.batch,
        "evals": args.evals,
        "seeds": args.seeds,
        "decoder_steps": args.decoder_steps,
        "lr": lr,
        "cider_ceiling": cider_ceiling(val),
        "params": params,
        "aggregate": agg,
        "verdict": verdict(agg, runs),
        "runs": runs,
        "seconds": time.perf_counter() - t0,
        "load_average": load.summary(),
    }
    files = [args.out / "embedding_vs_tokens.json", args.out / "embedding_vs_tokens.md"]
    files.append(args.out / "embedding_vs_tokens.png")
    files[0].write_text(json.dumps(result, indent=2, default=str))
    write_md(result, files[1])
    figure(result, files[2])
    result["mlflow_run_id"] = log_mlflow(result, files, args.tracking_uri, "embedding_vs_tokens")
    files[0].write_text(json.dumps(result, indent=2, default=str))
    if not args.keep_artifacts:
        shutil.rmtree(args.work / "mlflow", ignore_errors=True)
    print(files[1].read_text())
    return 0


def count_params(model_cfg) -> dict:
    from jepa.token_model import TokenVLM
    from jepa.y_decoder import YDecoder
    from pipelines.train.joint import JointEmbedding

    joint = JointEmbedding(model_cfg, load_pretrained=False)
    tok = TokenVLM.from_config(model_cfg, load_pretrained=False)
    counts = tok.param_counts()
    return {
        "embedding": {
            "trainable": trainable(joint),
            "predictor": trainable(joint.predictor),
            "y_encoder": trainable(joint.y_encoder),
            "y_lr_mult": model_cfg.y_lr_mult,
            "y_decoder": trainable(YDecoder.from_config(model_cfg.y_decoder, model_cfg.shared_dim)),
        },
        "tokens": {
            "trainable": trainable(tok),
            "predictor": counts["predictor"]["trainable"],
            "lm_head": counts["lm_head"]["trainable"],
        },
    }


if __name__ == "__main__":
    sys.exit(main())
