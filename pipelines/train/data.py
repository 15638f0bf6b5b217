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

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from pipelines import storage
from pipelines.features import data_files

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["x_tokens", "caption_ids", "paraphrase_ids"]
VAL_COLUMNS = ["clip_id", "x_tokens", "caption_ids", "caption", "label"]


def load_splits(root: str, train_split: str = "train", val_split: str = "val"):
    """(train, val) materialised Ray Datasets of one features root."""
    import ray.data

    files = data_files(root)
    fs, _ = storage.filesystem(root)
    paths = [storage.filesystem(f)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs)
    train = ds.filter(expr=f"split == '{train_split}'").select_columns(TRAIN_COLUMNS).materialize()
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

    A callable object (Ray's collate protocol) so Ray can run it in its prefetching threads.
    """

    def __init__(self, max_len: int = 32, paraphrase_prob: float = 0.0, seed: int = 0) -> None:
        self.max_len = max_len
        self.paraphrase_prob = paraphrase_prob
        self._rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        texts = list(batch["caption_ids"])
        # The caption (before any paraphrase swap) names the event: rows sharing it are not
        # each other's negatives in InfoNCE.
        keys = torch.tensor([caption_key(t) for t in texts], dtype=torch.int64)
        if self.paraphrase_prob > 0 and "paraphrase_ids" in batch:
            for i, paras in enumerate(batch["paraphrase_ids"]):
                if paras is not None and len(paras) and self._rng.random() < self.paraphrase_prob:
                    texts[i] = paras[self._rng.integers(len(paras))]
        ids, mask = pad_ids(texts, self.max_len)
        x = torch.from_numpy(np.array(batch["x_tokens"], copy=True))
        return {"x_tokens": x, "input_ids": ids, "attention_mask": mask, "caption_key": keys}


def caption_key(token_ids) -> int:
    """A stable id of a tokenised caption (equal captions -> equal ids)."""
    return zlib.crc32(np.asarray(token_ids, dtype=np.int32).tobytes())


def event_key(text: str) -> int:
    """A stable integer per caption/label (hits in retrieval are 'same event', not 'same clip')."""
    return zlib.crc32(text.strip().lower().encode())


def iter_train_batches(shard, cfg, epoch: int):
    """One epoch of a rank's train shard as torch batches, prefetched in the background."""
    return shard.iter_torch_batches(
        batch_size=cfg.batch_size,
        collate_fn=Collate(cfg.max_text_len, cfg.paraphrase_prob, seed=cfg.seed * 1000 + epoch),
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
