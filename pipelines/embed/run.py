"""The pre-embedding job: pending shards -> streaming Ray Data pipeline -> Parquet, resumably.

Design (why it is safe to kill at any moment):
- The driver cuts the inputs into shards and skips every shard that has a `_state` record.
- Workers (an autoscaling actor pool) read, decode and encode clips and stream their result
  rows back through `iter_batches`; each row carries its shard id and position.
- The driver buffers rows per shard; once all of a shard's rows are accounted for (good +
  errors) it writes the shard's Parquet file(s), its error file, and only then its `_state`
  record. A crash before the record means the shard is simply redone on the next run.
- Only small per-shard buffers live on the driver, and Ray Data's backpressure bounds what is in
  flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipelines import storage
from pipelines.embed import writer
from pipelines.embed.config import EmbedConfig
from pipelines.embed.manifest import InputShard, read_inputs
from pipelines.embed.writer import errors_table

log = logging.getLogger(__name__)


class EmbedError(Exception):
    """The job cannot proceed or produced nothing: the CLI exits non-zero with this message."""


class ResumeMismatch(EmbedError):
    """The output folder holds shards made with a different config."""


class BadInput(EmbedError):
    """The manifest is missing or empty, or --out cannot be written: a usage error (exit 2),
    reported before anything is created."""


@dataclass
class Progress:
    """Counters and clocks of one run (what `_SUCCESS` and the log summary report)."""

    t0: float = field(default_factory=time.perf_counter)
    t_first: float | None = None  # first embedded row back at the driver
    t_last: float | None = None
    first_batch_rows: int = 0
    clips_embedded: int = 0
    errors: Counter = field(default_factory=Counter)
    transient: int = 0
    shards_written: int = 0
    files_written: int = 0
    decode_s: float = 0.0
    decode_cpu_s: float = 0.0
    encode_s: float = 0.0


def file_metadata(cfg: EmbedConfig) -> dict[str, str]:
    from pipelines import features

    return features.metadata(cfg.model(), cfg.preset, cfg.dtype)


def output_schema(cfg: EmbedConfig) -> pa.Schema:
    m = cfg.model()
    from pipelines import features

    return features.data_schema(
        m.x_encoder.num_tokens,
        m.x_encoder.hidden_size,
        m.y_encoder.hidden_size,
        cfg.dtype,
        file_metadata(cfg),
    )


def _check_resume(cfg: EmbedConfig) -> None:
    key = json.loads(json.dumps(cfg.resume_key()))
    old = writer.read_run_key(cfg.out)
    if old is not None and old != key:
        diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
        raise ResumeMismatch(
            f"{cfg.out} holds shards made with a different {', '.join(diff)}; "
            "use --overwrite to redo them, or another --out"
        )
    writer.write_run_key(cfg.out, key)


class ShardAssembler:
    """Collects result rows per shard and writes a shard the moment it is complete."""

    def __init__(self, cfg: EmbedConfig, pending: list[InputShard], progress: Progress) -> None:
        self.cfg = cfg
        self.schema = output_schema(cfg)
        self.expected = {s.shard: s.total for s in pending}
        self.pre_errors = {s.shard: list(s.errors) for s in pending}
        # Positions seen per shard: a shard is complete when every position is accounted for,
        # and a row delivered twice (a retried block) is dropped, never written twice.
        self.seen: dict[str, set[int]] = {s.shard: {e["seq"] for e in s.errors} for s in pending}
        self.good: dict[str, list[pa.Table]] = defaultdict(list)
        self.bad: dict[str, list[dict]] = defaultdict(list)
        self.started = {s.shard: None for s in pending}
        self.progress = progress
        self.records: dict[str, dict] = {}

    def add(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        now = time.perf_counter()
        p = self.progress
        reasons = batch.column("reason").to_pylist()
        n_good = sum(1 for r in reasons if not r)
        if n_good:
            if p.t_first is None:
                p.t_first, p.first_batch_rows = now, n_good
            p.t_last = now
            p.clips_embedded += n_good
        p.decode_s += sum(batch.column("decode_s").to_pylist())
        p.decode_cpu_s += sum(batch.column("decode_cpu_s").to_pylist())
        p.encode_s += sum(batch.column("encode_s").to_pylist())
        by_shard: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        shards, seqs = batch.column("shard").to_pylist(), batch.column("seq").to_pylist()
        for i, (shard, seq, reason) in enumerate(zip(shards, seqs, reasons, strict=True)):
            seen = self.seen.get(shard)
            if seen is None or seq in seen:
                log.warning("dropping a duplicate result row (shard %s, position %s)", shard, seq)
                continue
            seen.add(seq)
            by_shard[shard][1 if reason else 0].append(i)
        for shard, (good_idx, bad_idx) in by_shard.items():
            if good_idx:
                self.good[shard].append(
                    batch.take(good_idx).drop_columns(["reason", "detail", "stage", "transient"])
                )
            if bad_idx:
                self.bad[shard].extend(
                    batch.take(bad_idx).select(writer.ERROR_SCHEMA.names).to_pylist()
                )
            if self.started[shard] is None:
                self.started[shard] = now
            if len(self.seen[shard]) >= self.expected[shard]:
                self.finish(shard)

    def finish(self, shard: str) -> None:
        """All rows of the shard are in: write data, errors, then the record that says so."""
        t = time.perf_counter()
        good = pa.concat_tables(self.good.pop(shard)) if self.good.get(shard) else None
        errs = self.pre_errors.pop(shard, []) + self.bad.pop(shard, [])
        files = writer.write_shard(
            self.cfg.out,
            shard,
            good,
            errors_table(errs) if errs else None,
            self.schema,
            self.cfg.rows_per_file,
        )
        reasons = Counter(e["reason"] for e in errs)
        transient = sum(1 for e in errs if e.get("transient"))
        self.progress.errors.update(reasons)
        self.progress.shards_written += 1
        self.progress.files_written += len(files)
        rows = 0 if good is None else good.num_rows
        record = {
            "shard": shard,
            "rows": rows,
            "errors": len(errs),
            "errors_by_reason": dict(reasons),
            "files": [f.rsplit("/", 1)[-1] for f in files],
            "config_hash": self.cfg.model().hash(),
            "seconds": round(time.perf_counter() - (self.started.get(shard) or t), 3),
            "finished_at": time.time(),
        }
        self.records[shard] = record
        if transient:
            # Retry on the next run: no record, so the shard counts as pending.
            self.progress.transient += transient
            log.warning(
                "shard %s: %d transient failures; it will be redone by a rerun", shard, transient
            )
        else:
            writer.write_state(self.cfg.out, shard, record)
        self.expected.pop(shard, None)
        self.seen.pop(shard, None)
        log.info(
            "shard %s done: %d clips, %d errors -> %d file(s)%s",
            shard,
            rows,
            len(errs),
            len(files),
            f" {dict(reasons)}" if reasons else "",
        )

    @property
    def open_shards(self) -> list[str]:
        return sorted(self.expected)


def _runtime_env(cfg: EmbedConfig) -> dict[str, Any] | None:
    from pipelines.connect import forwarded_env

    env = forwarded_env()
    env.setdefault("HF_HUB_OFFLINE", "1")
    return {"env_vars": env}


def build_dataset(
    cfg: EmbedConfig, pending: list[InputShard], cluster_cpus: float, cluster_gpus: float
):
    """The streaming pipeline over the pending shards' items (small rows: URIs and captions)."""
    import ray

    from pipelines.embed.stages import EmbedClipsStage, EncodeClipsStage, ReadDecodeStage

    tables = [s.table() for s in pending if s.items]
    items = pa.concat_tables(tables)
    block = max(cfg.batch_size, cfg.batch_size * 2)
    blocks = [items.slice(i, block) for i in range(0, items.num_rows, block)]
    ds = ray.data.from_arrow(blocks)
    s = cfg.sampling()
    sampling = {"frames": s.frames, "size": s.size, "fps": s.fps, "pad": s.pad}
    model = cfg.model().to_dict()
    lo, hi, initial = cfg.resolved_concurrency(cluster_cpus, cluster_gpus)
    common = {
        "model_config": model,
        "torch_threads": cfg.torch_threads,
        "dtype": cfg.dtype,
        "debug_delay_s": cfg.debug_batch_delay_s,
    }
    if cfg.gpus > 0:
        decoders = max(1, int(cluster_cpus) - hi)
        ds = ds.map_batches(
            ReadDecodeStage,
            batch_size=ReadDecodeStage.batch_size,
            batch_format="pyarrow",
            # Decoders are cheap to start (no model): all of them from the first block on.
            compute=ray.data.ActorPoolStrategy(
                min_size=1, max_size=decoders, initial_size=decoders
            ),
            num_cpus=ReadDecodeStage.resources.cpus,
            fn_constructor_kwargs={"sampling": sampling},
        )
        return ds.map_batches(
            EncodeClipsStage,
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, initial_size=initial),
            num_cpus=EncodeClipsStage.resources.cpus,
            num_gpus=cfg.gpus,
            fn_constructor_kwargs={**common, "device": "cuda"},
        ), (lo, hi)
    return ds.map_batches(
        EmbedClipsStage,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, initial_size=initial),
        num_cpus=EmbedClipsStage.resources.cpus,
        fn_constructor_kwargs={**common, "sampling": sampling, "device": "cpu"},
    ), (lo, hi)


def run(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed every pending shard of `cfg.manifest` into `cfg.out`; returns the run summary.

    Raises EmbedError when nothing at all was written (never a quiet success).
    """
    progress = Progress()
    # Inputs and the output location first: a wrong --manifest or --out fails before anything
    # is created under --out.
    try:
        storage.check_output(cfg.out)
    except storage.OutputUnusable as e:
        raise BadInput(str(e)) from None
    try:
        shards = read_inputs(cfg.manifest, cfg.is_webdataset, cfg.rows_per_shard, cfg.limit)
    except FileNotFoundError as e:
        raise BadInput(f"{cfg.manifest}: not found ({_first_line(e)})") from None
    if not shards:
        raise BadInput(f"{cfg.manifest}: no inputs found (an empty manifest?)")
    storage.makedirs(cfg.out)
    storage.check_writable(cfg.out)
    if cfg.overwrite:
        log.info("--overwrite: removing earlier outputs under %s", cfg.out)
        writer.clear_outputs(cfg.out)
    _check_resume(cfg)
    if writer.remove_temp_files(cfg.out):
        log.info("removed temp files of an interrupted earlier run")
    done = writer.read_states(cfg.out)
    pending = [s for s in shards if s.shard not in done]
    skipped = [s for s in shards if s.shard in done]
    to_embed = sum(len(s.items) for s in pending)
    log.info(
        "embed: %d input shards (%d already done, %d pending, %d clips to embed) -> %s",
        len(shards),
        len(skipped),
        len(pending),
        to_embed,
        cfg.out,
    )
    if pending:
        storage.delete(storage.join(cfg.out, "_SUCCESS"))  # the output is incomplete again
    assembler = ShardAssembler(cfg, pending, progress)
    for s in pending:
        if not s.items:  # every record was rejected up front: the shard is complete already
            assembler.finish(s.shard)
    concurrency = None
    if to_embed:
        import ray

        from pipelines.connect import connect

        connect(cfg.address, runtime_env=_runtime_env(cfg))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = cfg.progress
        res = ray.cluster_resources()
        ds, concurrency = build_dataset(
            cfg, [s for s in pending if s.items], res.get("CPU", 1), res.get("GPU", 0)
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            assembler.add(batch)
        if assembler.open_shards:
            raise EmbedError(f"pipeline ended with shards still open: {assembler.open_shards[:5]}")
    from pipelines.embed import questions

    source = questions.locate(cfg)
    asked = questions.write(cfg, source) if source else {"questions": 0}
    return _summarise(cfg, shards, done, assembler, progress, concurrency, asked)


def _summarise(
    cfg, shards, done, assembler: ShardAssembler, p: Progress, concurrency, extra: dict
) -> dict[str, Any]:
    wall = time.perf_counter() - p.t0
    records = {**done, **assembler.records}
    total_rows = sum(r.get("rows", 0) for r in records.values())
    errors_total: Counter = Counter()
    for r in records.values():
        errors_total.update(r.get("errors_by_reason", {}))
    steady = None
    if p.t_first is not None and p.t_last is not None and p.t_last > p.t_first:
        steady = (p.clips_embedded - p.first_batch_rows) / (p.t_last - p.t_first)
    files = sum(len(r.get("files", [])) for r in records.values())
    summary = {
        "ok": total_rows > 0 and p.transient == 0,
        "out": cfg.out,
        "clips_written": total_rows,
        "clips_embedded_this_run": p.clips_embedded,
        "errors": sum(errors_total.values()),
        "errors_by_reason": dict(sorted(errors_total.items())),
        "errors_this_run_by_reason": dict(sorted(p.errors.items())),
        "transient_failures": p.transient,
        "shards_total": len(shards),
        "shards_skipped": len(done),
        "shards_written_this_run": p.shards_written,
        "files": files,
        "seconds": round(wall, 3),
        "clips_per_s": round(p.clips_embedded / wall, 3) if wall > 0 else None,
        "startup_s": None if p.t_first is None else round(p.t_first - p.t0, 3),
        "last_row_s": None if p.t_last is None else round(p.t_last - p.t0, 3),
        "first_batch_rows": p.first_batch_rows,
        "steady_clips_per_s": None if steady is None else round(steady, 3),
        "decode_s_total": round(p.decode_s, 3),
        "decode_cpu_s_total": round(p.decode_cpu_s, 3),
        "encode_s_total": round(p.encode_s, 3),
        "concurrency": list(concurrency) if concurrency else None,
        "config": json.loads(cfg.model_dump_json()),
        "config_hash": cfg.model().hash(),
        "finished_at": time.time(),
        **extra,
    }
    if total_rows == 0:
        summary["ok"] = False
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(errors_total.items())) or "no inputs"
        raise EmbedError(
            f"no clips were written: {sum(errors_total.values())} inputs failed ({reasons}); "
            f"see {storage.join(cfg.out, '_errors')}",
        )
    if summary["ok"]:
        writer.write_success(cfg.out, summary)
    return summary


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def log_to_mlflow(cfg: EmbedConfig, summary: dict[str, Any]) -> str:
    """One MLflow run, in the store `tracking_store.resolve` picks, with the whole config as
    params and the summary as metrics and an artifact."""
    from mlflow.entities import Metric, Param, RunTag

    from pipelines import tracking_store

    uri = tracking_store.resolve(cfg.tracking_uri)
    client = tracking_store.client(uri)
    exp_id = tracking_store.experiment_id(uri, cfg.experiment)
    run = client.create_run(
        exp_id,
        run_name=f"embed-{os.path.basename(cfg.out.rstrip('/'))}",
        tags={"vljepa.job": "embed", "vljepa.config_hash": summary["config_hash"]},
    )
    run_id = run.info.run_id
    params = _flatten({"embed": json.loads(cfg.model_dump_json()), "model": cfg.model().to_dict()})
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    now = int(time.time() * 1000)
    metrics = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    metrics.update({f"errors.{k}": float(v) for k, v in summary["errors_by_reason"].items()})
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag("mlflow.source.type", "JOB")],
    )
    client.log_dict(run_id, summary, "embed_summary.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"embed: {s['clips_written']} clips written to {s['out']} in {s['files']} file(s) "
        f"({s['clips_embedded_this_run']} embedded this run in {s['seconds']:.1f} s, "
        f"{s['clips_per_s'] or 0:.1f} clips/s; steady state {s['steady_clips_per_s'] or 0:.1f} clips/s "
        f"after {s['startup_s'] or 0:.1f} s start-up)",
        f"embed: shards: {s['shards_total']} total, {s['shards_skipped']} already done, "
        f"{s['shards_written_this_run']} written now",
    ]
    if s["errors"]:
        lines.append(
            f"embed: {s['errors']} inputs skipped: "
            + ", ".join(f"{k}={v}" for k, v in s["errors_by_reason"].items())
            + f" (see {storage.join(s['out'], '_errors')})"
        )
    if s["transient_failures"]:
        lines.append(
            f"embed: {s['transient_failures']} transient failures: rerun the same command to retry them"
        )
    return "\n".join(lines)
