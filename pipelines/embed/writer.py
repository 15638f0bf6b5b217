"""Output layout (docs: brief PARQUET contract): data files, error files, shard records, summary.

    OUT/data/part-<shard>-<k>.parquet   good clips, at most rows_per_file rows each
    OUT/_errors/part-<shard>.parquet    one row per bad input, with stage and reason
    OUT/_state/<shard>.json             written LAST for a shard: "this shard is complete"
    OUT/_state/_run.json                what every shard must agree on to be resumed
    OUT/_SUCCESS                        JSON summary of the whole run, written at the very end

Every object is written whole (local: temp name + rename; S3: one PUT), so a reader never sees
a half-written file. A shard's data files are deleted before it is (re)written, so a shard
interrupted between its files never leaves stale parts behind once it is redone.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage

log = logging.getLogger(__name__)

ERROR_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("seq", pa.int32()),
        ("clip_id", pa.string()),
        ("video", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("transient", pa.bool_()),
    ]
)
_DATA_COLUMNS = ("clip_id", "video", "start_s", "end_s", "caption", "paraphrases", "label", "split")


def data_dir(out: str) -> str:
    return storage.join(out, "data")


def _tensor_column(blobs: pa.Array, ext_type: pa.FixedShapeTensorType) -> pa.Array:
    """Concatenated raw bytes -> a fixed_shape_tensor array, checking every row's size."""
    value_type = ext_type.value_type
    width = int(np.prod(ext_type.shape))
    np_dtype = np.dtype(value_type.to_pandas_dtype())
    want = width * np_dtype.itemsize
    lengths = pc_lengths(blobs)
    if len(lengths) and (lengths.min() != want or lengths.max() != want):
        raise ValueError(f"tensor rows of {sorted(set(lengths.tolist()))} bytes, expected {want}")
    # Equal-length rows sit back to back in the binary array's data buffer: view, do not copy.
    offsets = np.frombuffer(blobs.buffers()[1], np.int32)[
        blobs.offset : blobs.offset + len(blobs) + 1
    ]
    data = np.frombuffer(blobs.buffers()[2], np.uint8) if len(blobs) else np.zeros(0, np.uint8)
    flat = data[offsets[0] : offsets[-1]].view(np_dtype) if len(blobs) else np.zeros(0, np_dtype)
    storage_arr = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), width)
    return pa.ExtensionArray.from_storage(ext_type, storage_arr)


def pc_lengths(blobs: pa.Array) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.binary_length(blobs).to_numpy(zero_copy_only=False)


def to_data_table(good: pa.Table, schema: pa.Schema) -> pa.Table:
    """Worker result rows (raw-byte tensors) -> the published schema, in `seq` order."""
    good = good.sort_by("seq")
    cols = {}
    for name in _DATA_COLUMNS:
        cols[name] = good.column(name).cast(schema.field(name).type)
    for name in ("x_tokens", "y_embedding"):
        cols[name] = _tensor_column(good.column(name).combine_chunks(), schema.field(name).type)
    cols["caption_ids"] = good.column("caption_ids")
    cols["paraphrase_ids"] = good.column("paraphrase_ids")
    return pa.table(cols, schema=schema)


def _parquet_bytes(table: pa.Table, row_group_size: int) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=row_group_size,
        # Float tensors barely compress; do not spend the driver's CPU on them.
        compression={
            n: ("NONE" if n in ("x_tokens", "y_embedding") else "SNAPPY")
            for n in table.column_names
        },
        use_dictionary=[n for n in table.column_names if n in ("label", "split")],
    )
    return sink.getvalue().to_pybytes()


def shard_files(out: str, shard: str) -> list[str]:
    pat = re.compile(rf"part-{re.escape(shard)}-\d+\.parquet$")
    return [f for f in storage.list_files(data_dir(out), suffix=".parquet") if pat.search(f)]


def clear_shard(out: str, shard: str) -> None:
    """Remove whatever an earlier, interrupted attempt left for this shard."""
    for f in shard_files(out, shard):
        storage.delete(f)
    storage.delete(storage.join(out, "_errors", f"part-{shard}.parquet"))


def write_shard(
    out: str,
    shard: str,
    good: pa.Table | None,
    errors: pa.Table | None,
    schema: pa.Schema,
    rows_per_file: int,
) -> list[str]:
    """Write a finished shard's data files and error file; returns the data file URIs."""
    clear_shard(out, shard)
    files: list[str] = []
    if good is not None and good.num_rows:
        table = to_data_table(good, schema)
        for k, start in enumerate(range(0, table.num_rows, rows_per_file)):
            part = table.slice(start, rows_per_file)
            uri = storage.join(data_dir(out), f"part-{shard}-{k:04d}.parquet")
            storage.write_bytes(uri, _parquet_bytes(part, row_group_size=min(rows_per_file, 256)))
            files.append(uri)
    if errors is not None and errors.num_rows:
        uri = storage.join(out, "_errors", f"part-{shard}.parquet")
        storage.write_bytes(
            uri, _parquet_bytes(errors.sort_by("seq").select(ERROR_SCHEMA.names), 10_000)
        )
    return files


def errors_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {k: r.get(k, False if k == "transient" else "") for k in ERROR_SCHEMA.names}
            for r in rows
        ],
        schema=ERROR_SCHEMA,
    )


def state_uri(out: str, shard: str) -> str:
    return storage.join(out, "_state", f"{shard}.json")


def write_state(out: str, shard: str, record: dict[str, Any]) -> None:
    storage.write_text(state_uri(out, shard), json.dumps(record, sort_keys=True))


def read_states(out: str) -> dict[str, dict]:
    """Finished shards' records (a record that cannot be parsed counts as not finished)."""
    states = {}
    for uri in storage.list_files(storage.join(out, "_state"), suffix=".json"):
        name = uri.rsplit("/", 1)[-1][: -len(".json")]
        if name.startswith("_"):
            continue
        try:
            states[name] = json.loads(storage.read_text(uri))
        except (OSError, ValueError):
            log.warning("ignoring unreadable shard record %s", uri)
    return states


def read_run_key(out: str) -> dict | None:
    uri = storage.join(out, "_state", "_run.json")
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def write_run_key(out: str, key: dict) -> None:
    storage.write_text(storage.join(out, "_state", "_run.json"), json.dumps(key, sort_keys=True))


def remove_temp_files(out: str) -> int:
    """Delete hidden temp files a killed writer left behind (local outputs; S3 PUTs leave none)."""
    import os

    if storage.is_s3(out):
        return 0
    removed = 0
    for sub in ("data", "_errors", "_state"):
        d = os.path.join(storage.filesystem(out)[1], sub)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.startswith(".") and name.endswith(".tmp"):
                    os.remove(os.path.join(d, name))
                    removed += 1
    return removed


def clear_outputs(out: str) -> None:
    for sub in ("data", "_errors", "_state", "_SUCCESS"):
        storage.delete(storage.join(out, sub))


def write_success(out: str, summary: dict[str, Any]) -> None:
    storage.write_text(storage.join(out, "_SUCCESS"), json.dumps(summary, indent=2, sort_keys=True))


def read_errors(out: str) -> pa.Table:
    """All error rows of an output (for tests, summaries and humans)."""
    files = storage.list_files(storage.join(out, "_errors"), suffix=".parquet")
    if not files:
        return ERROR_SCHEMA.empty_table()
    tables = []
    for f in files:
        fs, path = storage.filesystem(f)
        tables.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(tables)
