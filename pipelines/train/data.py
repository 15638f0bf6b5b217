"""Ray Data ingest of the pre-embedded Parquet features for training and validation.

The driver reads `OUT/data/*.parquet` once and materialises the train and val splits in Ray's
object store: features are small next to the video they came from (a tiny-preset clip is 48 KB of
fp16 tokens), and a materialised dataset starts every epoch in milliseconds, where re-reading
Parquet costs seconds of task start-up per epoch on a small machine. The train split is sharded
across workers (`streaming_split` through `get_dataset_shard`); validation is not split, because
every FSDP rank must run the same forward passes. Torch batches carry tensor columns only (Ray's
tensor conversion fails on strings); captions become padded token ids in `collate`.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from pipelines import storage
from pipelines.features import data_files
from pipelines.train.config import QuestionSampling

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["x_tokens", "caption_ids", "paraphrase_ids"]
VAL_COLUMNS = ["clip_id", "x_tokens", "caption_ids", "caption", "label"]


class AttachQuestions:
    """map_batches: add each clip's questions (query and answer ids) as two list columns, so a
    clip's tokens travel once however many questions it has; the collate picks one per step."""

    def __init__(self, by_clip: dict[str, tuple[list, list, list]]) -> None:
        self.by_clip = by_clip

    def __call__(self, batch):
        ids = batch.column("clip_id").to_pylist()
        empty: tuple[list, list, list] = ([], [], [])
        q = [self.by_clip.get(c, empty)[0] for c in ids]
        a = [self.by_clip.get(c, empty)[1] for c in ids]
        return _with_questions(batch, q, a)


def _with_questions(batch, queries: list, answers: list):
    """The clip batch with its rows' question lists as the two columns the collate reads."""
    import pyarrow as pa

    t = pa.list_(pa.list_(pa.int32()))
    return (
        batch.append_column("q_query_ids", pa.array(queries, t))
        .append_column("q_answer_ids", pa.array(answers, t))
        .drop_columns(["clip_id"])
    )


class BalancedQuestionRows:
    """map_batches: one row per (clip, question type), repeated `repeats[type]` times, so every
    type is about equally common among the rows. A row carries all of its clip's questions of
    that type (the phrasings it was asked in, the colours named) in the list columns
    `AttachQuestions` fills, and the collate draws one of them each time the row is read.

    Why: with one row per clip, a type asked of few clips is seldom seen. Colour changes are 4
    of the synthetic corpus's 26 classes, so "what colour was it first?" was ~5% of the rows and
    stayed at chance after 160 steps, on training clips too. Rows per (clip, type) rather than
    per question keep the stream as long whatever number of phrasings a corpus asks each clip in
    (the clip's tokens are repeated in the stream, never in the stored features).

    Caption rows (stage-1 data, no question, empty list columns) come on top: about
    `captions_per_clip` per clip, every clip alike (`caption_copies`), so they follow the corpus
    and not the question balance. Drawing them from the balanced rows instead gave the clips of
    rare types (colour changes: 4 of 26 classes, ~16 rows each against ~5) about 40% of the
    caption rows, and the caption space the WorldPrediction-style eval reads drifted (0.80 and
    0.875 in two runs, its stage-1 model 0.93).
    """

    def __init__(
        self,
        by_clip: dict[str, tuple[list, list, list]],
        repeats: dict[str, int],
        captions_per_clip: float = 0.0,
    ):
        self.by_clip, self.repeats = by_clip, repeats
        self.captions_per_clip = captions_per_clip

    def __call__(self, batch):
        import pyarrow as pa

        take, queries, answers = [], [], []
        for i, clip in enumerate(batch.column("clip_id").to_pylist()):
            qs, ans, types = self.by_clip.get(clip, ([], [], []))
            by_type: dict[str, tuple[list, list]] = {}
            for q, a, kind in zip(qs, ans, types, strict=True):
                by_type.setdefault(kind, ([], []))
                by_type[kind][0].append(q)
                by_type[kind][1].append(a)
            for kind, (type_qs, type_answers) in by_type.items():
                for _ in range(self.repeats[kind]):
                    take.append(i)
                    queries.append(type_qs)
                    answers.append(type_answers)
            for _ in range(caption_copies(clip, self.captions_per_clip)):
                take.append(i)
                queries.append([])
                answers.append([])
        return _with_questions(batch.take(pa.array(take, pa.int64())), queries, answers)


def caption_copies(clip_id: str, rate: float) -> int:
    """floor(rate) or ceil(rate) caption rows for a clip, ceil for a fixed `frac(rate)` share of
    clip ids (a hash, so a rerun or a resumed run builds the same stream), averaging `rate`."""
    whole = int(rate)
    unit = zlib.crc32(clip_id.encode()) / 2**32
    return whole + int(unit < rate - whole)


def captions_per_clip(
    counts: dict[str, int], repeats: dict[str, int], clips: int, caption_mix: float
) -> float:
    """Caption rows per clip that make them `caption_mix` of the balanced stream (whose question
    rows are sum(counts x repeats)); with caption_mix 1 every clip trains on its caption once."""
    if caption_mix >= 1.0:
        return 1.0
    question_rows = sum(counts[k] * repeats[k] for k in counts)
    return question_rows * caption_mix / (1.0 - caption_mix) / max(clips, 1)


def type_counts(by_clip: dict[str, tuple[list, list, list]]) -> Counter:
    """How many clips are asked each question type (the unit `BalancedQuestionRows` repeats)."""
    return Counter(kind for _, _, kinds in by_clip.values() for kind in set(kinds))


def balanced_repeats(
    counts: dict[str, int], weights: dict[str, int] | None = None
) -> dict[str, int]:
    """Copies of each type's rows so every type has about as many rows as the commonest, times
    the type's weight (`TrainConfig.question_weights`; 1 where unnamed)."""
    weights = weights or {}
    unknown = sorted(set(weights) - set(counts))
    if unknown:
        raise ValueError(
            f"question_weights names {unknown}, which these features do not ask "
            f"(their types: {sorted(counts)})"
        )
    most = max(counts.values())
    return {kind: max(1, round(most / n)) * weights.get(kind, 1) for kind, n in counts.items()}


def questions_by_clip(root: str, split: str) -> dict[str, tuple[list, list, list]]:
    """{clip_id: ([query ids...], [answer ids...], [type...])} of one split's questions."""
    from pipelines.features import read_questions

    t = read_questions(root, split)
    out: dict[str, tuple[list, list, list]] = {}
    for c, q, a, kind in zip(
        t["clip_id"].to_pylist(),
        t["query_ids"].to_pylist(),
        t["answer_ids"].to_pylist(),
        t["type"].to_pylist(),
        strict=True,
    ):
        out.setdefault(c, ([], [], []))
        out[c][0].append(q)
        out[c][1].append(a)
        out[c][2].append(kind)
    return out


def load_splits(
    root: str,
    train_split: str = "train",
    val_split: str = "val",
    questions: bool = False,
    question_sampling: QuestionSampling = "balanced",
    question_weights: dict[str, int] | None = None,
    caption_mix: float = 0.0,
    workers: int = 1,
):
    """(train, val) materialised Ray Datasets of one features root. With `questions`, train rows
    carry questions: "uniform", every clip once with all its questions (`AttachQuestions`), the
    collate choosing caption or question per read; "balanced", one row per (clip, question
    type), types balanced, plus `caption_mix` of caption rows spread evenly over the clips
    (`BalancedQuestionRows`). The train split is laid out in equal blocks for `workers` shards
    (`equal_blocks`)."""
    import ray.data

    files = data_files(root)
    fs, _ = storage.filesystem(root)
    paths = [storage.filesystem(f)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs)
    train = ds.filter(expr=f"split == '{train_split}'")
    if questions:
        by_clip = questions_by_clip(root, train_split)
        if not by_clip:
            raise ValueError(f"no questions with split={train_split!r} in {root}")
        if question_sampling == "balanced":
            counts = type_counts(by_clip)
            repeats = balanced_repeats(counts, question_weights)
            per_clip = captions_per_clip(counts, repeats, len(by_clip), caption_mix)
            fn = BalancedQuestionRows
            kwargs = {"by_clip": by_clip, "repeats": repeats, "captions_per_clip": per_clip}
            log.info(
                "balanced question rows: copies per type %s, %.2f caption rows per clip",
                repeats,
                per_clip,
            )
        else:
            fn, kwargs = AttachQuestions, {"by_clip": by_clip}
        train = train.select_columns(["clip_id", *TRAIN_COLUMNS]).map_batches(
            fn,
            fn_constructor_kwargs=kwargs,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
        )
        train = train.materialize()
    else:
        train = train.select_columns(TRAIN_COLUMNS).materialize()
    train = equal_blocks(train, workers)
    val = ds.filter(expr=f"split == '{val_split}'").select_columns(VAL_COLUMNS).materialize()
    for d in (train, val):  # per-epoch bars from every worker would drown the training log
        d.context.enable_progress_bars = False
        d.context.enable_operator_progress_bars = False
    n_train, n_val = train.count(), val.count()
    if n_train == 0:
        raise ValueError(f"no rows with split={train_split!r} in {root}")
    log.info("features %s: %d train rows, %d val rows, %d files", root, n_train, n_val, len(files))
    return train, val


def pad_ids(seqs, max_len: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ragged token id lists into (ids, mask), truncating to max_len."""
    seqs = [np.asarray(s, dtype=np.int64)[:max_len] for s in seqs]
    width = max(1, max(len(s) for s in seqs))
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class Collate(NumpyBatchCollateFn):
    """numpy batch -> torch tensors; a paraphrase replaces the caption with `paraphrase_prob`.

    Stage 2 (`caption_mix` set, rows carrying `q_query_ids`): each row trains on one of its clip's
    questions (query -> answer), or on its caption with probability `caption_mix`. The query goes
    out as ids, or as the frozen query encoder's token states when the predictor has one
    (`query_encoder`): that encoder runs here, in the data path, like the X-encoder ran in embed.
    A callable object (Ray's collate protocol) so Ray can run it in its prefetching threads.
    """

    def __init__(
        self,
        max_len: int = 32,
        paraphrase_prob: float = 0.0,
        seed: int = 0,
        caption_mix: float | None = None,
        query_encoder: str | None = None,
        max_query_length: int = 32,
    ) -> None:
        self.max_len = max_len
        self.paraphrase_prob = paraphrase_prob
        self.caption_mix = caption_mix
        self.query_encoder = query_encoder
        self.max_query_length = max_query_length
        self._rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        texts = list(batch["caption_ids"])
        queries: list = [[] for _ in texts]
        if self.caption_mix is not None and "q_query_ids" in batch:
            for i, (qs, answers) in enumerate(
                zip(batch["q_query_ids"], batch["q_answer_ids"], strict=True)
            ):
                if qs is not None and len(qs) and self._rng.random() >= self.caption_mix:
                    j = int(self._rng.integers(len(qs)))
                    queries[i], texts[i] = qs[j], answers[j]
        # The target text (before any paraphrase swap) names what a row describes: rows sharing
        # it are not each other's negatives in InfoNCE.
        keys = torch.tensor([caption_key(t) for t in texts], dtype=torch.int64)
        if self.paraphrase_prob > 0 and "paraphrase_ids" in batch:
            for i, paras in enumerate(batch["paraphrase_ids"]):
                if len(queries[i]):
                    continue
                if paras is not None and len(paras) and self._rng.random() < self.paraphrase_prob:
                    texts[i] = paras[self._rng.integers(len(paras))]
        ids, mask = pad_ids(texts, self.max_len)
        x = torch.from_numpy(np.array(batch["x_tokens"], copy=True))
        out = {"x_tokens": x, "input_ids": ids, "attention_mask": mask, "caption_key": keys}
        if self.caption_mix is not None:
            out.update(query_inputs(queries, self.query_encoder, self.max_query_length))
        return out


def query_inputs(queries, query_encoder: str | None, max_query_length: int = 32) -> dict:
    """Ragged query id lists -> the predictor's query inputs: padded ids and mask, plus the
    frozen query encoder's token states when the predictor reads queries through one."""
    from jepa.predictor import pad_queries

    q = pad_queries([list(np.asarray(s, dtype=np.int64)[:max_query_length]) for s in queries])
    out = {"query_ids": q["input_ids"], "query_mask": q["attention_mask"]}
    if query_encoder:
        from jepa.query_encoder import shared

        out["query_states"] = shared(query_encoder, max_query_length).states(
            q["input_ids"], q["attention_mask"]
        )
        del out["query_ids"]
    return out


def collate_caption_mix(cfg) -> float | None:
    """The collate's chance of training a question row on its caption: none in stage 1 (no
    queries at all); 0 with balanced rows, whose caption rows are already in the stream."""
    if cfg.stage != "sft":
        return None
    return 0.0 if cfg.question_sampling == "balanced" else cfg.caption_mix


def caption_key(token_ids) -> int:
    """A stable id of a tokenised caption (equal captions -> equal ids)."""
    return zlib.crc32(np.asarray(token_ids, dtype=np.int32).tobytes())


def event_key(text: str) -> int:
    """A stable integer per caption/label (hits in retrieval are 'same event', not 'same clip')."""
    return zlib.crc32(text.strip().lower().encode())


def iter_train_batches(shard, cfg, epoch: int, query_encoder: str | None = None):
    """One epoch of a rank's train shard as torch batches, prefetched in the background."""
    return shard.iter_torch_batches(
        batch_size=cfg.batch_size,
        collate_fn=Collate(
            cfg.max_text_len,
            cfg.paraphrase_prob,
            seed=cfg.seed * 1000 + epoch,
            caption_mix=collate_caption_mix(cfg),
            query_encoder=query_encoder,
        ),
        drop_last=True,
        local_shuffle_buffer_size=max(4 * cfg.batch_size, 64),
        local_shuffle_seed=cfg.seed * 1000 + epoch,
        prefetch_batches=2,
    )


def read_val(shard_or_ds, batch_size: int = 256) -> dict[str, object]:
    """The whole val split as numpy (it is small): tokens, caption ids, event keys, labels."""
    xs, ids, captions, labels, clip_ids = [], [], [], [], []
    for b in shard_or_ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        xs.append(np.asarray(b["x_tokens"]))
        ids.extend(list(b["caption_ids"]))
        captions.extend(str(c) for c in b["caption"])
        labels.extend(str(lbl) for lbl in b["label"])
        clip_ids.extend(str(c) for c in b["clip_id"])
    order = np.argsort(clip_ids, kind="stable")  # every rank sees the same order
    x = np.concatenate(xs)[order] if xs else np.zeros((0,))
    return {
        "x_tokens": x,
        "caption_ids": [ids[i] for i in order],
        "captions": [captions[i] for i in order],
        "labels": [labels[i] for i in order],
        "clip_ids": [clip_ids[i] for i in order],
    }


# A train block's size cap: Ray Data's own default target block size. A worker fetches a whole
# block at a time, so at paper scale (~16 MiB of tokens a clip) blocks must stay bounded.
MAX_BLOCK_BYTES = 128 * 1024 * 1024


def equal_blocks(train, workers: int, max_block_bytes: int = MAX_BLOCK_BYTES):
    """The materialised train split as `workers x k` blocks of exactly the same row count.

    Why: Ray Train shards it with `streaming_split(workers, equal=True)` and runs that split again
    every epoch. Blocks that do not divide evenly are cut by a Ray task each epoch, and on a small
    machine Ray keeps no idle worker process for it (its pool is capped at the CPU count, which
    the training workers already hold): every epoch paid a fresh Python process, ~3 s on 2 cores,
    more than two training steps of the tiny preset. Equal blocks are dealt out whole, in any
    order, so no epoch cuts one (every share `OutputSplitter` computes is then a multiple of the
    block size). The even split always left out the rows that do not divide across the workers;
    here the rows that do not fill a block are left out too (the same ones every epoch, said
    once): none at the tiny preset's sizes, fewer than a block a worker at any size.
    """
    n = train.count()
    per_worker = n // workers
    if workers == 1 or per_worker == 0:
        # One shard takes every block whole; fewer rows than workers: the run refuses them.
        return train
    row_bytes = max(1, train.size_bytes() // n)
    cap = max(1, min(per_worker, max_block_bytes // row_bytes))
    sizes = [m.num_rows for bundle in train.iter_internal_ref_bundles() for m in bundle.metadata]
    if len(set(sizes)) == 1 and len(sizes) % workers == 0 and sizes[0] <= cap:
        return train
    # The block size in [cap/2, cap] that leaves the fewest of a worker's rows out.
    rows = min(range(max(1, cap // 2), cap + 1), key=lambda r: (per_worker % r, -r))
    used = per_worker // rows * rows * workers
    if used < n:
        log.info(
            "train split: %d of %d rows, in blocks of %d for %d workers (%d left out: an even "
            "split of whole blocks)",
            used,
            n,
            rows,
            workers,
            n - used,
        )
    return train.limit(used).repartition(target_num_rows_per_block=rows, strict=True).materialize()
