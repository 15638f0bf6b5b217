"""A corpus's questions into the features root: OUT/questions/part-00000.parquet.

The questions file (docs/corpus-formats.md, section 4) sits beside the manifest (or beside the
WebDataset shards folder). The driver reads it after the clips are embedded, tokenises every
question with the predictor's query tokenizer and every answer with the Y-encoder's tokenizer, and
writes one table keyed by `clip_id` (schema: `pipelines.features.questions_schema`). It holds no
visual tokens: training joins it to the clips. Questions are small next to clips, so this is a
single pass on the driver, rewritten whole (atomically) by every run, resumed or not.

A row that cannot be used (no question, an answer outside its candidates, ...) is not fatal: it is
listed with its reason in OUT/_errors/questions.jsonl and counted in the summary.
"""

from __future__ import annotations

import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import features, storage

log = logging.getLogger(__name__)

QUESTIONS_FILE = "questions.jsonl"
MIN_CANDIDATES = 2


def locate(cfg) -> str | None:
    """The questions file this run stores: `cfg.questions`, else one beside the manifest."""
    if cfg.questions is not None:
        return cfg.questions or None
    base = cfg.manifest.rstrip("/")
    here = storage.parent(base)
    places = [storage.join(here, QUESTIONS_FILE)]
    if cfg.is_webdataset and not base.endswith(".tar"):
        places.insert(0, storage.join(base, QUESTIONS_FILE))
    return next((p for p in places if storage.exists(p)), None)


def _check(rec: dict) -> str | None:
    """Why a record cannot be used, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    for key in ("clip_id", "question", "answer"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            return f"{key} missing or empty"
    cands = rec.get("candidates")
    if not isinstance(cands, list) or not all(isinstance(c, str) and c.strip() for c in cands):
        return "candidates must be a list of non-empty strings"
    if len(set(cands)) < MIN_CANDIDATES:
        return f"fewer than {MIN_CANDIDATES} distinct candidates"
    if rec["answer"] not in cands:
        return "answer is not one of the candidates"
    return None


def build_table(records: list[dict], model_cfg, query_tokenizer_name: str) -> pa.Table:
    """Valid records -> the questions table (query and answer token ids included)."""
    from jepa.predictor import encode_queries, query_tokenizer
    from jepa.text import load_tokenizer

    qtok = query_tokenizer(query_tokenizer_name)
    ytok = load_tokenizer(model_cfg.y_encoder.tokenizer)
    questions = [r["question"] for r in records]
    answers = [r["answer"] for r in records]
    query_ids = encode_queries(qtok, questions, model_cfg.predictor)
    answer_ids = ytok(answers, truncation=True, max_length=model_cfg.y_encoder.max_length)[
        "input_ids"
    ]
    meta = {
        features.KEY_SCHEMA_VERSION: features.SCHEMA_VERSION,
        features.KEY_QUERY_TOKENIZER: query_tokenizer_name,
        features.KEY_Y_ENCODER: json.dumps(
            model_cfg.y_encoder.model_dump(mode="json"), sort_keys=True
        ),
    }
    schema = features.questions_schema(meta)
    cols = {
        "clip_id": [r["clip_id"] for r in records],
        "qid": [str(r.get("qid") or f"{r['clip_id']}-{i}") for i, r in enumerate(records)],
        "type": [str(r.get("type") or "question") for r in records],
        "question": questions,
        "query_ids": query_ids,
        "answer": answers,
        "answer_ids": answer_ids,
        "candidates": [list(r["candidates"]) for r in records],
        "template": [int(r["template"]) if r.get("template") is not None else -1 for r in records],
        "split": [str(r.get("split") or "") for r in records],
    }
    return pa.table(cols, schema=schema)


def write(cfg, source: str) -> dict:
    """Store the questions of `source` under cfg.out; returns counts for the run summary."""
    from jepa.predictor import query_tokenizer_name

    model_cfg = cfg.model()
    good, bad = [], []
    for n, line in enumerate(storage.read_text(source).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append({"line": n, "reason": f"not JSON ({e.msg})"})
            continue
        why = _check(rec)
        if why:
            bad.append(
                {"line": n, "qid": rec.get("qid") if isinstance(rec, dict) else None, "reason": why}
            )
        else:
            good.append(rec)
    err_path = storage.join(cfg.out, "_errors", QUESTIONS_FILE)
    if bad:
        storage.write_text(err_path, "".join(json.dumps(b) + "\n" for b in bad))
        log.warning("questions: %d unusable rows in %s (see %s)", len(bad), source, err_path)
    else:
        storage.delete(err_path)
    table = build_table(good, model_cfg, query_tokenizer_name(model_cfg.predictor))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    out = storage.join(cfg.out, features.QUESTIONS_DIR, "part-00000.parquet")
    storage.write_bytes(out, buf.getvalue())
    log.info("questions: %d stored from %s -> %s", len(good), source, out)
    return {"questions": len(good), "questions_rejected": len(bad), "questions_source": source}
