"""The pre-embedded features as every stage after `vljepa embed` reads them.

What a features root holds is written by `pipelines/embed/writer.py` (the Parquet layout) with the
`vljepa.*` key-value metadata named here. Training and evaluation take the X-encoder side of the
model (encoder and clip sampling) from that metadata rather than from a preset: the features say
what made them, so features from `embed --gpus`, `--frames`, `--size`, `--fps`, `--x-dtype` or
`--x-encoder PATH` train with no flag. Only a real incompatibility is refused, in one line that
names both sides and the fix: two encoders mixed in one root, a token column whose shape is not
the one the metadata's encoder produces, captions tokenised for another Y-encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from jepa.config import PredictorConfig, XEncoderConfig, YEncoderConfig
from pipelines import storage

META_PREFIX = "vljepa."
# The metadata keys (without the prefix) every data file carries.
KEY_SCHEMA_VERSION = "schema_version"
KEY_X_ENCODER = "x_encoder"  # XEncoderConfig JSON: the encoder and the clip sampling
KEY_Y_ENCODER = "y_encoder"  # YEncoderConfig JSON: whose tokenizer made caption_ids
KEY_PRESET = "preset"
KEY_CONFIG_HASH = "config_hash"
KEY_MODEL_CONFIG = "model_config"
KEY_DTYPE = "dtype"  # stored x_tokens dtype
# Convenience copies of the sampling for readers that do not parse the X-encoder JSON.
KEY_FRAMES, KEY_SIZE, KEY_FPS, KEY_PAD = "frames", "size", "fps", "pad"
X_TOKENS = "x_tokens"
SCHEMA_VERSION = "1"


def data_schema(
    num_tokens: int, hidden: int, y_dim: int, dtype: str, metadata: dict[str, str]
) -> pa.Schema:
    x_type = pa.float16() if dtype == "float16" else pa.float32()
    schema = pa.schema(
        [
            ("clip_id", pa.string()),
            ("video", pa.string()),
            ("start_s", pa.float32()),
            ("end_s", pa.float32()),
            ("caption", pa.string()),
            ("paraphrases", pa.list_(pa.string())),
            ("label", pa.string()),
            ("split", pa.string()),
            (X_TOKENS, pa.fixed_shape_tensor(x_type, [num_tokens, hidden])),
            ("y_embedding", pa.fixed_shape_tensor(pa.float32(), [y_dim])),
            ("caption_ids", pa.list_(pa.int32())),
            ("paraphrase_ids", pa.list_(pa.list_(pa.int32()))),
        ]
    )
    return schema.with_metadata({f"{META_PREFIX}{k}": v for k, v in metadata.items()})


def metadata(model_cfg, preset: str, dtype: str) -> dict[str, str]:
    """The metadata every data file of one embed run carries (keys without the prefix)."""
    x = model_cfg.x_encoder
    return {
        KEY_SCHEMA_VERSION: SCHEMA_VERSION,
        KEY_X_ENCODER: json.dumps(x.model_dump(mode="json"), sort_keys=True),
        KEY_Y_ENCODER: json.dumps(model_cfg.y_encoder.model_dump(mode="json"), sort_keys=True),
        KEY_PRESET: preset,
        KEY_CONFIG_HASH: model_cfg.hash(),
        KEY_MODEL_CONFIG: model_cfg.to_json(),
        KEY_FRAMES: str(x.num_frames),
        KEY_SIZE: str(x.image_size),
        KEY_FPS: "" if x.fps is None else f"{x.fps:g}",
        KEY_PAD: str(x.pad).lower(),
        KEY_DTYPE: dtype,
    }


class IncompatibleFeatures(ValueError):
    """The features cannot feed this model or job (the message says why and what to do)."""


def data_files(root: str) -> list[str]:
    """The Parquet files of a features root (OUT/data/*.parquet, no hidden or temp files)."""
    base = storage.join(root, "data")
    files = _parquet_files(base)
    if not files:
        raise FileNotFoundError(f"no Parquet files under {base} (run `vljepa embed` first)")
    return files


def _parquet_files(base: str) -> list[str]:
    """The Parquet files directly under `base`, sorted, without hidden or temp files."""
    return sorted(
        f
        for f in storage.list_files(base)
        if f.endswith(".parquet") and not f.rsplit("/", 1)[-1].startswith((".", "_"))
    )


def file_metadata(path: str) -> tuple[dict[str, str], tuple[int, ...] | None]:
    """(the `vljepa.*` metadata without its prefix, the x_tokens tensor shape) of one file."""
    fs, p = storage.filesystem(path)
    schema = pq.read_schema(p, filesystem=fs)
    meta = {
        k.decode()[len(META_PREFIX) :]: v.decode()
        for k, v in (schema.metadata or {}).items()
        if k.startswith(META_PREFIX.encode())
    }
    shape = None
    if X_TOKENS in schema.names:
        shape = tuple(getattr(schema.field(X_TOKENS).type, "shape", ()) or ()) or None
    return meta, shape


@dataclass(frozen=True)
class Features:
    """What made a features root: its encoders (with the sampling) and where it lives."""

    root: str
    files: list[str]
    x_encoder: XEncoderConfig
    y_encoder: YEncoderConfig | None
    preset: str | None
    metadata: dict[str, str]

    def describe(self) -> str:
        x = self.x_encoder
        sampling = f"fps {x.fps:g}" if x.fps else "spread"
        return (
            f"{len(self.files)} file(s); X-encoder {x.name_or_path or 'random(seed ' + str(x.seed) + ')'} "
            f"{x.num_tokens}x{x.hidden_size} tokens, {x.num_frames} frames at {x.image_size} px "
            f"({sampling}{', pad' if x.pad else ''}), {x.dtype}; embedded with preset {self.preset}"
        )


def _x_config(meta: dict[str, str], where: str) -> XEncoderConfig:
    raw = meta.get(KEY_X_ENCODER)
    if not raw:
        raise IncompatibleFeatures(
            f"{where} has no vljepa.{KEY_X_ENCODER} metadata: it was not written by `vljepa "
            "embed`; re-embed it"
        )
    return XEncoderConfig.model_validate(json.loads(raw))


def load(root: str) -> Features:
    """Read every data file's metadata once and check that they agree with each other and with
    their token column. Raises IncompatibleFeatures (one line) or FileNotFoundError."""
    files = data_files(root)
    first_meta, first_shape = file_metadata(files[0])
    x = _x_config(first_meta, files[0])
    for f in files[1:]:
        meta, shape = file_metadata(f)
        if meta.get(KEY_X_ENCODER) != first_meta.get(KEY_X_ENCODER) or shape != first_shape:
            other = _x_config(meta, f)
            diff = sorted(
                k for k, v in x.model_dump().items() if other.model_dump().get(k) != v
            ) or ["x_tokens shape"]
            raise IncompatibleFeatures(
                f"{root} mixes two X-encoders: {files[0].rsplit('/', 1)[-1]} and "
                f"{f.rsplit('/', 1)[-1]} differ in {', '.join(diff)}; embed them into separate "
                "--out folders (or rerun `vljepa embed --overwrite`)"
            )
    want = (x.num_tokens, x.hidden_size)
    if first_shape is not None and tuple(first_shape) != want:
        raise IncompatibleFeatures(
            f"{files[0]}: x_tokens are {first_shape[0]}x{first_shape[1]} but its X-encoder "
            f"metadata gives {want[0]}x{want[1]}; the file was not written by this version of "
            "`vljepa embed`: re-embed"
        )
    raw_y = first_meta.get(KEY_Y_ENCODER)
    y = YEncoderConfig.model_validate(json.loads(raw_y)) if raw_y else None
    return Features(root, files, x, y, first_meta.get(KEY_PRESET), first_meta)


def split_counts(features: Features) -> dict[str, int]:
    """Rows per value of the split column (one small column read per file)."""
    from collections import Counter

    counts: Counter = Counter()
    for f in features.files:
        fs, path = storage.filesystem(f)
        counts.update(pq.read_table(path, filesystem=fs, columns=["split"])["split"].to_pylist())
    return dict(counts)


def check_tokenizer(features: Features, y_encoder: YEncoderConfig) -> None:
    """Captions were tokenised by the features' Y-encoder tokenizer; the model's must be the same."""
    from jepa.text import resolve

    if features.y_encoder is None:
        return
    have, want = features.y_encoder.tokenizer, y_encoder.tokenizer
    if resolve(have) != resolve(want):
        raise IncompatibleFeatures(
            f"the captions in {features.root} were tokenised with {have!r} (the Y-encoder they "
            f"were embedded with) but the model's Y-encoder uses {want!r}: train with "
            f"--y-encoder {features.y_encoder.name_or_path or have}, or re-embed with "
            f"--y-encoder {y_encoder.name_or_path or want}"
        )


def check_caption_tokenizer(features: Features, predictor: PredictorConfig) -> None:
    """The token-prediction baseline (`--objective tokens`) learns the stored `caption_ids` as its
    output vocabulary: they must be in the predictor's tokenizer and fit its token table. The
    tiny, tiny-text and bench presets use MiniLM's tokenizer on both sides; for another pairing
    (the paper preset: Llama vs EmbeddingGemma) re-embed the captions with a Y-encoder that
    shares the predictor's tokenizer rather than train on ids of another vocabulary."""
    from jepa.text import load_tokenizer, resolve

    have = features.y_encoder.tokenizer if features.y_encoder is not None else None
    want = predictor.tokenizer
    if have is None or resolve(have) != resolve(want):
        raise IncompatibleFeatures(
            f"--objective tokens trains the predictor to emit the stored caption_ids, but the "
            f"captions in {features.root} were tokenised with {have!r} and the predictor's "
            f"tokenizer is {want!r}: use a preset whose predictor and Y-encoder share a tokenizer "
            "(tiny, tiny-text, bench), or re-embed with --y-encoder set to a model with the "
            "predictor's tokenizer"
        )
    vocab = int(predictor.arch.get("vocab_size", 0))
    size = len(load_tokenizer(want))
    if vocab < size:
        raise IncompatibleFeatures(
            f"--objective tokens: the predictor's token table has {vocab} rows but its tokenizer "
            f"{want!r} has {size} tokens"
        )


def check_model_x_encoder(features: Features, model_x: XEncoderConfig, model: str) -> None:
    """A model evaluated on stored tokens must have been trained on tokens of the same encoder
    and sampling (the compute dtype only rounds them)."""
    a = features.x_encoder.model_dump(exclude={"dtype"})
    b = model_x.model_dump(exclude={"dtype"})
    if a != b:
        diff = sorted(k for k in a if a[k] != b.get(k))
        raise IncompatibleFeatures(
            f"model {model} was trained on tokens of another X-encoder than {features.root} holds "
            f"(they differ in {', '.join(diff)}: model "
            f"{ {k: b.get(k) for k in diff} }, features { {k: a[k] for k in diff} }); evaluate it "
            "on features embedded the way its training data was"
        )


# ---------------------------------------------------------------------------------- questions
# Stage-2 data: question-answer pairs about the clips, in their own table under OUT/questions/.
# A row holds the question's text and ids, the answer's text and ids, and the closed candidate
# set, keyed by `clip_id`, never the clip's tokens: training joins them to the data table, so N
# questions about a clip cost N x (text + ids), not N x x_tokens (~16 MiB a clip at paper scale).
QUESTIONS_DIR = "questions"
KEY_QUERY_TOKENIZER = "query_tokenizer"  # whose tokenizer made query_ids (the predictor's)


def questions_schema(metadata: dict[str, str]) -> pa.Schema:
    schema = pa.schema(
        [
            ("clip_id", pa.string()),
            ("qid", pa.string()),
            ("type", pa.string()),
            ("question", pa.string()),
            ("query_ids", pa.list_(pa.int32())),
            ("answer", pa.string()),
            ("answer_ids", pa.list_(pa.int32())),
            ("candidates", pa.list_(pa.string())),
            ("template", pa.int32()),
            ("split", pa.string()),
        ]
    )
    return schema.with_metadata({f"{META_PREFIX}{k}": v for k, v in metadata.items()})


def questions_files(root: str) -> list[str]:
    """The Parquet files of a features root's questions table ([] when it has none)."""
    return _parquet_files(storage.join(root, QUESTIONS_DIR))


def read_questions(root: str, split: str | None = None) -> pa.Table:
    """The questions table (one split, or all), with its metadata. Raises IncompatibleFeatures
    when the root has none."""
    files = questions_files(root)
    if not files:
        raise IncompatibleFeatures(
            f"{root} has no questions (no {QUESTIONS_DIR}/*.parquet): embed a corpus that has a "
            "questions.jsonl beside its manifest (docs/corpus-formats.md, section 4)"
        )
    tables = []
    for f in files:
        fs, path = storage.filesystem(f)
        t = pq.read_table(path, filesystem=fs)
        if split is not None:
            import pyarrow.compute as pc

            t = t.filter(pc.equal(t["split"], split))
        tables.append(t)
    return pa.concat_tables(tables, promote_options="none")


def check_query_tokenizer(root: str, predictor: PredictorConfig) -> None:
    """query_ids were made by the features' predictor tokenizer; the model's must be the same."""
    from jepa.predictor import query_tokenizer_name
    from jepa.text import resolve

    files = questions_files(root)
    if not files:
        return
    meta, _ = file_metadata(files[0])
    have, want = meta.get(KEY_QUERY_TOKENIZER), query_tokenizer_name(predictor)
    if have is not None and resolve(have) != resolve(want):
        raise IncompatibleFeatures(
            f"the questions in {root} were tokenised with {have!r} but this model's predictor "
            f"reads queries with {want!r}: re-embed with the same --preset/--predictor"
        )
