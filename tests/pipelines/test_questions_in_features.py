"""Questions in the features: stored once per question, keyed by clip, never with the clip's
tokens (issue 13, build 2 and acceptance 5); unusable rows listed with their reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pipelines import features
from pipelines.embed import questions as embed_questions
from pipelines.embed.config import EmbedConfig


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _copy_features(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "data", dst / "data")
    return dst


def _questions_file(corpus: Path, per_clip: int, out: Path) -> tuple[Path, int]:
    """The corpus's questions, each clip asked `per_clip` times as many (new qids, reworded)."""
    rows = [json.loads(x) for x in (corpus / "questions.jsonl").read_text().splitlines() if x]
    lines = []
    for r in rows:
        for k in range(per_clip):
            lines.append(
                json.dumps({**r, "qid": f"{r['qid']}-{k}", "question": f"{r['question']} ({k})"})
            )
    out.write_text("\n".join(lines) + "\n")
    return out, len(lines)


def test_questions_grow_the_features_by_their_text_not_by_the_clips_tokens(
    embedded_corpus, tmp_path
):
    feats = _copy_features(embedded_corpus.features, tmp_path / "feats")
    data_before = {f.name: f.read_bytes() for f in (feats / "data").iterdir()}
    clips = sum(pq.read_metadata(f).num_rows for f in (feats / "data").iterdir())
    x_bytes_per_clip = (
        pq.read_table(next((feats / "data").iterdir()), columns=["x_tokens"]).nbytes
        / pq.read_metadata(next((feats / "data").iterdir())).num_rows
    )
    cfg = EmbedConfig(manifest=str(embedded_corpus.corpus / "manifest.jsonl"), out=str(feats))
    sizes = {}
    for per_clip in (1, 4):
        src, n = _questions_file(embedded_corpus.corpus, per_clip, tmp_path / f"q{per_clip}.jsonl")
        summary = embed_questions.write(cfg, str(src))
        assert summary["questions"] == n and summary["questions_rejected"] == 0
        table = features.read_questions(str(feats))
        assert table.num_rows == n
        assert "x_tokens" not in table.column_names
        sizes[per_clip] = (_size(feats / features.QUESTIONS_DIR), n)
        # The clips' own files are untouched: not one x_tokens row was copied or rewritten.
        assert {f.name: f.read_bytes() for f in (feats / "data").iterdir()} == data_before
    (size1, n1), (size4, n4) = sizes[1], sizes[4]
    grown = size4 - size1
    # 3 more questions per clip cost a few dozen bytes each, where 3 more copies of each clip's
    # tokens would cost 3 x clips x x_bytes_per_clip.
    assert grown / (n4 - n1) < 200, (size1, size4)
    assert grown < 0.01 * (n4 - n1) * x_bytes_per_clip, (grown, x_bytes_per_clip, clips)


def test_embed_stores_the_corpus_questions_keyed_by_clip(embedded_corpus):
    """The session's real `vljepa embed` found questions.jsonl beside the manifest."""
    table = features.read_questions(str(embedded_corpus.features))
    source = [
        json.loads(x)
        for x in (embedded_corpus.corpus / "questions.jsonl").read_text().splitlines()
        if x
    ]
    assert table.num_rows == len(source)
    clip_ids = set(
        pq.read_table(embedded_corpus.features / "data", columns=["clip_id"])["clip_id"].to_pylist()
    )
    assert set(table["clip_id"].to_pylist()) <= clip_ids
    row = table.slice(0, 1).to_pylist()[0]
    assert row["answer"] in row["candidates"] and row["query_ids"] and row["answer_ids"]
    meta, _ = features.file_metadata(features.questions_files(str(embedded_corpus.features))[0])
    assert meta[features.KEY_QUERY_TOKENIZER] == "minilm"


def test_unusable_questions_are_listed_with_their_reason(embedded_corpus, tmp_path):
    feats = _copy_features(embedded_corpus.features, tmp_path / "feats")
    good = {"clip_id": "c1", "question": "is it red?", "answer": "yes", "candidates": ["yes", "no"]}
    bad = [
        ({**good, "answer": "maybe"}, "answer is not one of the candidates"),
        ({**good, "question": "  "}, "question missing or empty"),
        ({**good, "candidates": ["yes"], "answer": "yes"}, "fewer than 2 distinct candidates"),
        ({**good, "candidates": "yes,no"}, "candidates must be a list"),
    ]
    src = tmp_path / "questions.jsonl"
    src.write_text(
        "\n".join([json.dumps(good)] + [json.dumps(b) for b, _ in bad] + ["{not json"]) + "\n"
    )
    cfg = EmbedConfig(manifest=str(tmp_path / "manifest.jsonl"), out=str(feats))
    summary = embed_questions.write(cfg, str(src))
    assert summary["questions"] == 1 and summary["questions_rejected"] == len(bad) + 1
    errors = [
        json.loads(x) for x in (feats / "_errors" / "questions.jsonl").read_text().splitlines()
    ]
    reasons = [e["reason"] for e in errors]
    for (_, why), got in zip(bad, reasons, strict=False):
        assert got.startswith(why), (got, why)
    assert reasons[-1].startswith("not JSON") and errors[-1]["line"] == len(bad) + 2
    assert features.read_questions(str(feats)).num_rows == 1
