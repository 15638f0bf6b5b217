"""`vljepa embed` end to end on the session's Ray cluster, real mp4s, real decord, real S3.

One uninterrupted run over the synthetic corpus plus one bad file of each kind is the reference
(module fixture); the resume test must reproduce it exactly after a SIGKILL of the driver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.clips import (
    BAD_CAPTION,
    EMPTY,
    MISSING,
    NOT_VIDEO,
    TOO_SHORT,
    TRUNCATED,
    UNDECODABLE,
)
from pipelines.embed import read_errors

# Small shards so that resuming has something to skip; batches of 4 keep actors busy.
COMMON = ["--shard-size", "8", "--rows-per-file", "5", "--batch-size", "4", "--no-progress"]


def _summary(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("EMBED_SUMMARY "))
    return json.loads(line[len("EMBED_SUMMARY ") :])


def _zero_mdat(mp4: bytes) -> bytes:
    """Same container, stream payload overwritten: opens fine, cannot be decoded."""
    i = mp4.find(b"mdat")
    size = int.from_bytes(mp4[i - 4 : i], "big")
    assert size > 16, "expected an mdat box with payload"
    return mp4[: i + 4] + bytes(size - 8) + mp4[i - 4 + size :]


def _bad_inputs(folder: Path, good_video: Path) -> list[tuple[dict, str]]:
    """(manifest record, expected reason) for one bad input of each kind."""
    from pipelines.synth.writer import encode_mp4

    data = good_video.read_bytes()
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "text.mp4").write_bytes(b"this is a caption file, not a video\n" * 40)
    (folder / "short.mp4").write_bytes(
        encode_mp4(np.full((4, 64, 64, 3), 128, np.uint8), fps=8)  # 4 frames, 16 needed
    )
    (folder / "garbled.mp4").write_bytes(_zero_mdat(data))
    rec = {"start": 0.0, "end": 2.0, "label": "bad", "split": "train", "paraphrases": []}
    return [
        ({**rec, "id": "bad-missing", "video": "nowhere/missing.mp4", "caption": "x"}, MISSING),
        ({**rec, "id": "bad-zero", "video": "zero.mp4", "caption": "x"}, EMPTY),
        ({**rec, "id": "bad-truncated", "video": "truncated.mp4", "caption": "x"}, TRUNCATED),
        ({**rec, "id": "bad-text", "video": "text.mp4", "caption": "x"}, NOT_VIDEO),
        ({**rec, "id": "bad-short", "video": "short.mp4", "caption": "x", "end": None}, TOO_SHORT),
        ({**rec, "id": "bad-garbled", "video": "garbled.mp4", "caption": "x"}, UNDECODABLE),
        ({**rec, "id": "bad-caption", "video": str(good_video), "caption": "  "}, BAD_CAPTION),
    ]


@pytest.fixture(scope="module")
def corpus_with_bad(synth_corpus: Path, tmp_path_factory) -> tuple[Path, int, dict[str, str]]:
    """A manifest: the synthetic clips (absolute paths) with the bad inputs spread between them."""
    folder = tmp_path_factory.mktemp("embed_in")
    good = [json.loads(x) for x in (synth_corpus / "manifest.jsonl").read_text().splitlines() if x]
    for r in good:
        r["video"] = str(synth_corpus / r["video"])
    bad = _bad_inputs(folder, Path(good[0]["video"]))
    rows = list(good)
    for k, (rec, _) in enumerate(bad):  # one bad input every few clips, in several shards
        rows.insert(3 + 6 * k, rec)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, len(good), {rec["id"]: reason for rec, reason in bad}


@pytest.fixture(scope="module")
def reference(
    corpus_with_bad, ray_cluster, tmp_path_factory
) -> tuple[Path, subprocess.CompletedProcess]:  # noqa: ARG001
    manifest, _, _ = corpus_with_bad
    out = tmp_path_factory.mktemp("embed_ref") / "out"
    proc = _run_cli(
        ["--manifest", str(manifest), "--out", str(out), "--concurrency", "2,2", *COMMON]
    )
    return out, proc


def _run_cli(
    args: list[str], timeout: float = 240, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "embed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=str(cwd) if cwd else None,
    )


def _env() -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}


def _read(out: Path | str):
    fs, path = storage.filesystem(storage.join(str(out), "data"))
    return pq.read_table(path, filesystem=fs).sort_by("clip_id")


def test_end_to_end_counts_good_clips_and_reports_each_bad_file(corpus_with_bad, reference):
    _, n_good, bad = corpus_with_bad
    out, proc = reference
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = _read(out)
    assert table.num_rows == n_good
    assert not set(table.column("clip_id").to_pylist()) & set(bad)
    x = table.column("x_tokens").combine_chunks().to_numpy_ndarray()
    assert x.dtype == np.float16 and x.shape == (n_good, 128, 192) and np.isfinite(x).all()
    y = table.column("y_embedding").combine_chunks().to_numpy_ndarray()
    assert y.shape == (n_good, 384) and np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-3)
    ids = table.column("caption_ids").to_pylist()
    assert all(i[0] == 101 and i[-1] == 102 for i in ids)  # [CLS] ... [SEP], unpadded
    assert all(len(p) == 3 for p in table.column("paraphrase_ids").to_pylist())
    meta = pq.read_metadata(next((out / "data").glob("*.parquet"))).metadata
    assert meta[b"vljepa.preset"] == b"tiny" and len(meta[b"vljepa.config_hash"]) == 12
    # rows per file is honoured: 8-row shards -> files of 5 + 3 rows
    sizes = [pq.read_metadata(f).num_rows for f in (out / "data").glob("*.parquet")]
    assert max(sizes) == 5
    errors = read_errors(str(out)).to_pylist()
    assert {e["clip_id"]: e["reason"] for e in errors} == bad
    summary = _summary(proc.stdout)
    assert summary["clips_written"] == n_good and summary["errors"] == len(bad)
    assert summary["errors_by_reason"] == {r: 1 for r in bad.values()}
    assert json.loads((out / "_SUCCESS").read_text())["clips_written"] == n_good


def test_killed_run_resumes_only_missing_shards_and_matches_uninterrupted(
    corpus_with_bad, reference, tmp_path
):
    manifest, n_good, _ = corpus_with_bad
    ref_out, ref_proc = reference
    assert ref_proc.returncode == 0, ref_proc.stderr[-3000:]
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--out", str(out), "--concurrency", "1,1", *COMMON]
    # Slow each batch down so the driver can be killed between shards, not after the last one.
    # Output to a file, not a pipe: a full pipe would block the driver.
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "embed", *args, "--debug-batch-delay-s", "0.6"],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        state = out / "_state"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if len([p for p in state.glob("*.json") if not p.name.startswith("_")]) >= 2:
                break
            time.sleep(0.05)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert still_running, (
        f"run ended before it was interrupted:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
    )
    done = {
        p.stem: json.loads(p.read_text())
        for p in state.glob("*.json")
        if not p.name.startswith("_")
    }
    n_shards = -(-(n_good + 7) // 8)  # manifest rows (good + 7 bad) in shards of 8
    assert 2 <= len(done) < n_shards
    assert not (out / "_SUCCESS").exists()

    again = _run_cli(args)
    assert again.returncode == 0, again.stderr[-3000:]
    s = _summary(again.stdout)
    assert s["shards_skipped"] == len(done)
    assert s["shards_written_this_run"] == n_shards - len(done)
    assert s["clips_embedded_this_run"] == n_good - sum(r["rows"] for r in done.values())
    for shard, rec in done.items():  # finished shards were not rewritten
        assert json.loads((state / f"{shard}.json").read_text()) == rec

    got, want = _read(out), _read(ref_out)
    assert got.column_names == want.column_names
    for name in got.column_names:
        if name not in ("x_tokens", "y_embedding"):
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    for name in ("x_tokens", "y_embedding"):
        a = got.column(name).combine_chunks().to_numpy_ndarray().astype(np.float32)
        b = want.column(name).combine_chunks().to_numpy_ndarray().astype(np.float32)
        # Batches of different composition may round differently in the last fp16 bit.
        np.testing.assert_allclose(a, b, atol=2e-3, rtol=2e-3, err_msg=name)
    assert sorted(e["clip_id"] for e in read_errors(str(out)).to_pylist()) == sorted(
        e["clip_id"] for e in read_errors(str(ref_out)).to_pylist()
    )
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]  # no temp files


def test_manifest_and_videos_on_s3_output_to_s3(synth_corpus, s3, ray_cluster, tmp_path):  # noqa: ARG001
    """Also logs the run to MLflow (a real SQLite-backed store): summary metrics + whole config."""
    import mlflow

    client = storage.s3_client()
    prefix = f"embed-{os.getpid()}-{time.monotonic_ns()}"
    rows = [json.loads(x) for x in (synth_corpus / "manifest.jsonl").read_text().splitlines() if x][
        :6
    ]
    for r in rows:  # relative paths: resolved against the manifest's s3:// folder
        client.put_object(
            Bucket=s3.bucket,
            Key=f"{prefix}/in/{r['video']}",
            Body=(synth_corpus / r["video"]).read_bytes(),
        )
    client.put_object(
        Bucket=s3.bucket,
        Key=f"{prefix}/in/manifest.jsonl",
        Body="".join(json.dumps(r) + "\n" for r in rows).encode(),
    )
    out = s3.uri(prefix, "out")
    proc = _run_cli(
        [
            "--manifest",
            s3.uri(prefix, "in/manifest.jsonl"),
            "--out",
            out,
            "--concurrency",
            "1,1",
            *COMMON,
            "--mlflow",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tracking = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = tracking.search_runs([tracking.get_experiment_by_name("vljepa-embed").experiment_id])
    assert run.data.metrics["clips_written"] == 6
    assert (
        run.data.params["embed.out"] == out
        and run.data.params["model.x_encoder.hidden_size"] == "192"
    )
    fs, path = storage.filesystem(storage.join(out, "data"))
    table = pq.read_table(path, filesystem=fs)  # plain pyarrow, straight from S3
    assert sorted(table.column("clip_id").to_pylist()) == sorted(r["id"] for r in rows)
    assert table.column("x_tokens").combine_chunks().to_numpy_ndarray().shape == (6, 128, 192)
    assert table.column("video").to_pylist()[0].startswith(f"s3://{s3.bucket}/{prefix}/in/videos/")
    keys = {
        o["Key"]
        for o in client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/out/")["Contents"]
    }
    assert f"{prefix}/out/_SUCCESS" in keys and f"{prefix}/out/_state/00000.json" in keys


def test_zero_clips_written_fails_loudly(tmp_path, ray_cluster):  # noqa: ARG001
    (tmp_path / "a.mp4").write_bytes(
        b"\x00\x00\x00\x18ftypisom" + bytes(64)
    )  # mp4 header, no movie
    (tmp_path / "b.mp4").write_bytes(b"not a video at all")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,video,caption\na,a.mp4,a red ball\nb,b.mp4,a blue ball\nc,c.mp4,a lamp\n"
    )
    out = tmp_path / "out"
    proc = _run_cli(
        ["--manifest", str(manifest), "--out", str(out), "--concurrency", "1,1", "--no-progress"]
    )
    assert proc.returncode == 1
    assert "no clips were written: 3 inputs failed" in proc.stderr
    for reason in ("missing_file=1", "not_a_video=1", "truncated=1"):
        assert reason in proc.stderr
    assert not (out / "_SUCCESS").exists()
    assert len(read_errors(str(out))) == 3


# ----------------------------------------------------------------------------- no Ray needed


def test_decode_names_each_failure_and_pads_short_clips(synth_corpus, tmp_path):
    from pipelines.clips import DecodeError, Sampling, decode_clip

    good = next((synth_corpus / "videos").glob("*.mp4"))
    bad = {
        rec["video"]: reason
        for rec, reason in _bad_inputs(tmp_path, good)
        if reason not in (MISSING, BAD_CAPTION)
    }
    s = Sampling(frames=16, size=64)
    for name, reason in bad.items():
        with pytest.raises(DecodeError) as e:
            decode_clip((tmp_path / name).read_bytes(), s)
        assert e.value.reason == reason, (name, e.value)
    frames = decode_clip(good.read_bytes(), s, 0.0, 2.0)
    assert (
        frames.shape == (16, 128, 128, 3) and frames.dtype == np.uint8
    )  # 128 px <= 2 x 64: native
    with pytest.raises(DecodeError) as e:  # 16 frames at 4 fps need ~3.9 s of a 2 s clip
        decode_clip(good.read_bytes(), Sampling(16, 64, fps=4.0), 0.0, 2.0)
    assert e.value.reason == TOO_SHORT
    padded = decode_clip((tmp_path / "short.mp4").read_bytes(), Sampling(16, 64, pad=True))
    assert padded.shape[0] == 16
    small = decode_clip(good.read_bytes(), Sampling(16, 32))  # 128 px > 2 x 32: FFmpeg shrinks it
    assert small.shape == (16, 64, 64, 3)


def test_manifest_formats_shard_by_position_and_reject_bad_records(tmp_path):
    import pyarrow as pa

    from pipelines.embed.manifest import read_inputs

    recs = [
        {
            "id": f"c{i}",
            "video": f"v/{i}.mp4",
            "caption": f"clip {i}",
            "paraphrases": ["p"],
            "start": 0,
            "end": 2,
        }
        for i in range(7)
    ]
    recs[2]["caption"] = ""
    recs[4]["end"] = -1
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "{not json\n")
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text(
        "id,video,caption,paraphrases,start,end\n"
        + "".join(
            f"{r['id']},{r['video']},{r['caption']},p,{r['start']},{r['end']}\n" for r in recs
        )
    )
    for name, total in (("m.jsonl", 8), ("m.parquet", 7), ("m.csv", 7)):
        shards = read_inputs(str(tmp_path / name), webdataset=False, rows_per_shard=3)
        assert [s.shard for s in shards] == [f"{i:05d}" for i in range(-(-total // 3))], name
        assert sum(s.total for s in shards) == total
        items = [i for s in shards for i in s.items]
        assert [i["clip_id"] for i in items] == ["c0", "c1", "c3", "c5", "c6"], name
        assert items[0]["video"] == str(tmp_path / "v/0.mp4") and items[0]["paraphrases"] == ["p"]
        reasons = sorted(e["reason"] for s in shards for e in s.errors)
        assert reasons == sorted(
            [BAD_CAPTION, "bad_record"] + (["bad_record"] if total == 8 else [])
        )
    assert (
        len(read_inputs(str(tmp_path / "m.jsonl"), False, 3, limit=4)[1].items) == 1
    )  # rows 0-3: c3 only


def test_webdataset_tar_is_one_shard_with_ranged_members(tmp_path):
    from pipelines.embed.manifest import read_inputs
    from pipelines.embed.stages import read_source
    from pipelines.synth.writer import build_tar

    video = b"\x00\x00\x00\x08ftyp" + b"v" * 100
    members = [
        ("000000000.mp4", video),
        ("000000000.txt", b"a red ball"),
        ("000000000.json", b'{"id": "a", "start": 0.5}'),
        ("000000001.mp4", video),
        ("000000001.txt", b"\xff\xfe"),  # not UTF-8
        ("000000002.txt", b"no video"),
    ]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00007.tar").write_bytes(build_tar(members))
    [shard] = read_inputs(str(tmp_path / "shards"), webdataset=True, rows_per_shard=100)
    assert shard.shard == "00007" and shard.total == 3
    [item] = shard.items
    assert item["clip_id"] == "a" and item["caption"] == "a red ball" and item["start_s"] == 0.5
    assert item["video"].endswith("00007.tar#000000000.mp4")
    assert read_source(item) == video  # one ranged read of the member
    assert sorted(e["reason"] for e in shard.errors) == [BAD_CAPTION, MISSING]


def test_config_rejects_bad_values_early():
    from pydantic import ValidationError

    from pipelines.embed import EmbedConfig

    cfg = EmbedConfig(manifest="m.jsonl", out="o", concurrency="1,3", frames=8, size=32)
    assert cfg.concurrency == (1, 3) and cfg.sampling().frames == 8 and cfg.sampling().size == 32
    assert cfg.model().hash() != EmbedConfig(manifest="m.jsonl", out="o").model().hash()
    assert EmbedConfig(manifest="s3://b/shards", out="o").is_webdataset
    for bad in ({"concurrency": "3,1"}, {"frames": 7}, {"preset": "nope"}, {"rows_per_file": 0}):
        with pytest.raises((ValidationError, ValueError)):
            EmbedConfig(manifest="m.jsonl", out="o", **bad)


def test_pooling_flags_shape_the_tokens_and_a_bad_factor_names_the_flag():
    """`--pool-temporal` / `--pool-spatial` reach the X-encoder (and so the features' metadata
    and everything trained on them); a factor that does not divide the grid is refused by name."""
    from pydantic import ValidationError

    from pipelines.embed import EmbedConfig

    plain = EmbedConfig(manifest="m.jsonl", out="o").model().x_encoder
    pooled = EmbedConfig(manifest="m.jsonl", out="o", pool_temporal=2, pool_spatial=2)
    x = pooled.model().x_encoder
    assert (x.pool_temporal, x.pool_spatial) == (2, 2)
    assert x.num_tokens * 8 == plain.num_tokens
    assert (
        pooled.resume_key()["config_hash"]
        != EmbedConfig(manifest="m.jsonl", out="o").resume_key()["config_hash"]
    )
    with pytest.raises(ValidationError, match="pool_temporal=3"):
        EmbedConfig(manifest="m.jsonl", out="o", pool_temporal=3)


def test_split_decode_and_encode_stages_match_the_fused_stage(synth_corpus, tmp_path):
    """The GPU layout (decode actors -> encoder actors) computes what the fused CPU stage does;
    run here on the CPU, in-process, as Ray would call the stages."""
    from pipelines.embed import EmbedConfig
    from pipelines.embed.manifest import read_inputs
    from pipelines.embed.stages import EmbedClipsStage, EncodeClipsStage, ReadDecodeStage

    rows = [json.loads(x) for x in (synth_corpus / "manifest.jsonl").read_text().splitlines()[:3]]
    rows.append({**rows[0], "id": "broken", "video": "missing.mp4"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows[:3]:
        (tmp_path / "videos").mkdir(exist_ok=True)
        (tmp_path / r["video"]).write_bytes((synth_corpus / r["video"]).read_bytes())
    cfg = EmbedConfig(
        manifest=str(tmp_path / "m.jsonl"), out=str(tmp_path / "o"), preset="tiny-text"
    )
    items = read_inputs(cfg.manifest, False, 100)[0].table()
    s = cfg.sampling()
    sampling = {"frames": s.frames, "size": s.size, "fps": s.fps, "pad": s.pad}
    model = cfg.model().to_dict()
    fused = EmbedClipsStage(sampling, model)(items)
    split = EncodeClipsStage(model, device="cpu")(ReadDecodeStage(sampling)(items))
    assert (
        fused.column("reason").to_pylist()
        == split.column("reason").to_pylist()
        == ["", "", "", MISSING]
    )
    for name in ("x_tokens", "y_embedding", "caption_ids", "paraphrase_ids", "clip_id"):
        assert fused.column(name).to_pylist() == split.column(name).to_pylist(), name


def test_rerun_with_other_encoder_settings_is_refused(corpus_with_bad, reference):
    manifest, _, _ = corpus_with_bad
    out, proc = reference
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = sorted(p.name for p in (out / "data").iterdir())
    refused = _run_cli(["--manifest", str(manifest), "--out", str(out), *COMMON, "--frames", "8"])
    assert refused.returncode == 2
    assert "different config_hash, frames" in refused.stderr and "--overwrite" in refused.stderr
    assert sorted(p.name for p in (out / "data").iterdir()) == before
