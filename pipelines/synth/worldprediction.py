"""A WorldPrediction-style set: given an initial-state and a final-state image, which of 4 action
clips caused the change?

For the first `SynthConfig.worldprediction` val clips of the manifest, the initial image is the
clip's first rendered frame and the final image its last (PNG, written by the render worker from
the very frames it encoded: no scene logic is re-derived). The 4 candidates are manifest clip ids:
the clip itself and 3 distractors of OTHER classes, chosen where possible among classes whose
first frame looks the same (same ball colour visible, same lighting), so the initial image alone
does not give the answer; where fewer than 3 such classes exist (e.g. `lamp_on`, the only class
starting in the dark) any other class fills in. Distractor clips come from the same split when it
has one of that class, else from any split. The correct index is shuffled by the seed.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .events import BY_LABEL, EventClass


def start_state(cls: EventClass) -> tuple[str | None, bool]:
    """(colour of the ball visible in the first frame or None, room lit in the first frame)."""
    if cls.kind == "lamp_on":
        return None, False
    if cls.kind in ("lamp_off", "appears"):
        return None, True
    return cls.colour, True


def selected(clips: list[dict], limit: int) -> list[int]:
    """Manifest positions of the clips that get a WorldPrediction item (the first val clips)."""
    return [i for i, c in enumerate(clips) if c["split"] == "val"][:limit]


def png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (stdlib zlib at level 1: ~2 ms for 128 px, a few % of a
    clip's render+encode; fixed settings, so the same pixels give the same bytes)."""
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, np.uint8).reshape(h, w * 3)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def image_paths(clip_id: str) -> tuple[str, str]:
    return f"worldprediction/{clip_id}-initial.png", f"worldprediction/{clip_id}-final.png"


def build_items(clips: list[dict], indices: list[int], seed: int) -> list[dict]:
    """`worldprediction.jsonl` rows for the manifest positions `indices`."""
    rng = np.random.default_rng([seed, 4])
    by_label: dict[str, list[dict]] = {}
    for c in clips:
        by_label.setdefault(c["label"], []).append(c)
    rows = []
    for i in indices:
        clip = clips[i]
        cls = BY_LABEL[clip["label"]]
        others = sorted(lab for lab in by_label if lab != cls.label)
        if len(others) < 3:  # a corpus of fewer than 4 classes has no 4-way item
            continue
        same = [lab for lab in others if start_state(BY_LABEL[lab]) == start_state(cls)]
        rest = [lab for lab in others if lab not in same]
        picked = [same[j] for j in rng.permutation(len(same))[:3]]
        if len(picked) < 3:
            picked += [rest[j] for j in rng.permutation(len(rest))[: 3 - len(picked)]]
        candidates = [clip["id"]]
        for lab in picked:
            pool = [c for c in by_label[lab] if c["split"] == clip["split"]] or by_label[lab]
            candidates.append(pool[int(rng.integers(len(pool)))]["id"])
        order = rng.permutation(len(candidates))
        initial, final = image_paths(clip["id"])
        rows.append(
            {
                "id": f"wp-{len(rows):05d}",
                "clip_id": clip["id"],
                "initial": initial,
                "final": final,
                "candidates": [candidates[j] for j in order],
                "answer": int(np.flatnonzero(order == 0)[0]),
                "split": clip["split"],
            }
        )
    return rows
