"""Discriminative VQA on a features root's questions: the paper's protocol, per question type.

Each question's answer is the candidate whose Y-encoder embedding is nearest (cosine) to the
predicted embedding of (clip, question). A model trained with queries (stage 2) reads the
question; a stage-1 model never saw one, so it is evaluated as the paper evaluates it, with its
fixed generic query (`retrieval_prompt`, empty for our presets): one prediction per clip, whatever
is asked. Types whose answer is not in the caption (docs/corpus-formats.md, section 4) are where
the two must differ.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def questions_with_tokens(data: str, split: str) -> tuple[list[dict], dict]:
    """The split's questions and the clips they ask about ({clip_id: row} into x_tokens)."""
    from pipelines.evaluate import load_split
    from pipelines.features import read_questions

    rows = read_questions(data, split).to_pylist()
    clips = load_split(data, split)
    index = {c: i for i, c in enumerate(clips["clip_ids"])}
    missing = sum(1 for q in rows if q["clip_id"] not in index)
    if missing:
        log.info("vqa: %d questions ask about clips that are not in the features", missing)
    return [q for q in rows if q["clip_id"] in index], {"x_tokens": clips["x_tokens"], **index}


def vqa_accuracy(model, data: str, split: str = "val", batch_size: int = 64) -> dict:
    """{"overall", "by_type": {type: acc}, "counts": {type: n}, "reads_query": bool}."""
    import torch

    questions, clips = questions_with_tokens(data, split)
    if not questions:
        raise ValueError(f"no {split} questions about embedded clips in {data}")
    reads_query = bool(model.config.trained_with_queries)
    x_all = clips["x_tokens"]
    cands = sorted({c for q in questions for c in q["candidates"]})
    with torch.no_grad():
        cand = model.embed_text(cands)
        preds = []
        for i in range(0, len(questions), batch_size):
            part = questions[i : i + batch_size]
            x = torch.as_tensor(np.stack([x_all[clips[q["clip_id"]]] for q in part])).float()
            asked = [q["question"] for q in part] if reads_query else None
            preds.append(model.predict_queries(x, asked))
    from jepa.metrics import vqa_hits

    hits = vqa_hits(torch.cat(preds), cand, cands, questions)
    return {
        "overall": float(np.mean([h for hs in hits.values() for h in hs])),
        "by_type": {t: float(np.mean(h)) for t, h in sorted(hits.items())},
        "counts": {t: len(h) for t, h in sorted(hits.items())},
        "chance": {
            t: float(np.mean([1 / len(q["candidates"]) for q in questions if q["type"] == t]))
            for t in sorted(hits)
        },
        "reads_query": reads_query,
        "questions": len(questions),
    }


def accuracy_figure(results: dict[str, dict], title: str = "discriminative VQA (val)"):
    """Grouped bars: accuracy per question type for each model, with each type's chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    types = sorted({t for r in results.values() for t in r["by_type"]})
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(types) + 2), 4))
    for i, name in enumerate(names):
        ys = [results[name]["by_type"].get(t, 0.0) for t in types]
        xs = np.arange(len(types)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, ys, width, label=name)
    chance = next(iter(results.values())).get("chance", {})
    for j, t in enumerate(types):
        if t in chance:
            ax.hlines(chance[t], j - 0.4, j + 0.4, colors="k", linestyles="dashed")
    ax.set_xticks(np.arange(len(types)), types, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (dashed: chance)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def format_table(results: dict[str, dict]) -> str:
    """A markdown table: one row per question type, one column per model."""
    names = list(results)
    types = sorted({t for r in results.values() for t in r["by_type"]})
    first = results[names[0]]
    lines = [
        "| type | n | chance | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for t in types:
        cells = " | ".join(f"{results[n]['by_type'].get(t, float('nan')):.3f}" for n in names)
        lines.append(
            f"| {t} | {first['counts'].get(t, 0)} | {first['chance'].get(t, 0):.2f} | {cells} |"
        )
    lines.append(
        "| **all** | | | " + " | ".join(f"{results[n]['overall']:.3f}" for n in names) + " |"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------- WorldPrediction


def read_image(path: str) -> np.ndarray:
    import io

    from PIL import Image

    from pipelines import storage

    with Image.open(io.BytesIO(storage.read_bytes(path))) as im:
        return np.asarray(im.convert("RGB"))


def worldprediction_accuracy(
    model, corpus: str, data: str, split: str = "val", batch_size: int = 32
) -> dict:
    """Given the initial and final state images, which of the candidate action clips caused the
    change? The states become one clip (`pipelines.clips.state_pair`: before, then after, the
    action left out) whose predicted embedding is compared with each candidate clip's; the
    nearest wins. Chance is 1 / candidates (0.25). Every model is asked with its generic query
    (what the clip shows, in caption space): no stage-2 question teaches a state-pair query, and
    one it never trained on pulled a stage-2 model away from what the states show (measured on
    the synthetic set: 0.67 with "which action turns the first picture into the second?",
    where its stage-1 model scored 0.97 with none)."""
    import json

    import torch

    from pipelines import storage
    from pipelines.clips import state_pair
    from pipelines.evaluate import load_split

    src = storage.join(corpus, "worldprediction.jsonl")
    items = [json.loads(x) for x in storage.read_text(src).splitlines() if x.strip()]
    items = [i for i in items if i.get("split", split) == split]
    if not items:
        raise ValueError(f"no {split} items in {src}")
    tokens: dict[str, np.ndarray] = {}
    for part in ("train", "val"):
        try:
            rows = load_split(data, part)
        except ValueError:
            continue
        tokens.update(zip(rows["clip_ids"], rows["x_tokens"], strict=True))
    items = [i for i in items if all(c in tokens for c in i["candidates"])]
    n = model.config.x_encoder.num_frames
    ids = sorted({c for i in items for c in i["candidates"]})
    with torch.no_grad():
        cand = torch.cat(
            [
                model.predict_queries(torch.as_tensor(np.stack([tokens[c] for c in part])).float())
                for part in (ids[k : k + batch_size] for k in range(0, len(ids), batch_size))
            ]
        )
        states = []
        for k in range(0, len(items), batch_size):
            part = items[k : k + batch_size]
            pairs = np.stack(
                [
                    state_pair(
                        read_image(storage.resolve(corpus, i["initial"])),
                        read_image(storage.resolve(corpus, i["final"])),
                        n,
                    )
                    for i in part
                ]
            )
            states.append(model.predict_queries(model.x_encoder(torch.from_numpy(pairs))))
    state = torch.cat(states)
    index = {c: k for k, c in enumerate(ids)}
    right = [
        int((cand[[index[c] for c in i["candidates"]]] @ state[k]).argmax()) == int(i["answer"])
        for k, i in enumerate(items)
    ]
    return {
        "accuracy": float(np.mean(right)),
        "items": len(right),
        "chance": float(np.mean([1 / len(i["candidates"]) for i in items])),
    }
