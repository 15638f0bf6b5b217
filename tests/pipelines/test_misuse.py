"""Misuse of `vljepa embed`, `vljepa train` and `vljepa serve` gets one line and exit 2, before
anything is written: no output folder, no MLflow run or store, no Ray job or local Ray. Real CLI
processes; S3 cases against the session's SeaweedFS server (which checks signatures), the
registry case against the session's MLflow server."""

from __future__ import annotations

from pathlib import Path

import pytest


def _one_line_exit_2(out, *needles: str) -> None:
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, err[-2000:])
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def _embed(cli, manifest, out, *extra, env=None):
    return cli("embed", "--manifest", manifest, "--out", out, "--no-progress", *extra, env=env)


@pytest.fixture
def manifest(synth_corpus: Path) -> Path:
    return synth_corpus / "manifest.jsonl"


def test_missing_manifest(cli, tmp_path):
    out = tmp_path / "out"
    _one_line_exit_2(_embed(cli, tmp_path / "nope.jsonl", out), "nope.jsonl", "not found")
    assert not out.exists()


def test_empty_manifest(cli, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "out"
    _one_line_exit_2(_embed(cli, tmp_path / "empty.jsonl", out), "no inputs")
    assert not out.exists()


def test_out_under_a_regular_file(cli, manifest, tmp_path):
    (tmp_path / "a-file").write_text("x")
    _one_line_exit_2(_embed(cli, manifest, tmp_path / "a-file" / "out"), "is a file")
    assert (tmp_path / "a-file").read_text() == "x"


def test_unwritable_folder(cli, manifest):
    # Tests run as root, for whom permission bits do not bind; /proc refuses everyone.
    _one_line_exit_2(_embed(cli, manifest, "/proc/vljepa-out"), "cannot write under /proc")


@pytest.mark.parametrize(
    "flags, field",
    [(["--batch-size", "0"], "batch_size"), (["--concurrency", "3,1"], "concurrency")],
)
def test_bad_numbers(cli, manifest, tmp_path, flags, field):
    out = tmp_path / "out"
    _one_line_exit_2(_embed(cli, manifest, out, *flags), field)
    assert not out.exists()


def test_missing_bucket(cli, manifest, s3):
    _one_line_exit_2(_embed(cli, manifest, "s3://no-such-bucket-vljepa/f"), "does not exist")


def test_wrong_credentials(cli, manifest, s3):
    import boto3

    prefix = "misuse-wrong-creds"
    res = _embed(cli, manifest, s3.uri(prefix), env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    _one_line_exit_2(res, "refused these credentials")
    listed = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
    ).list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    assert listed.get("KeyCount", 0) == 0


def test_train_on_an_empty_features_folder(cli, tmp_path):
    (tmp_path / "features" / "data").mkdir(parents=True)
    _one_line_exit_2(cli("train", "--data", tmp_path / "features"), "no Parquet features")
    # the command ran in tmp_path: no MLflow store, no run folder was created there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]


def test_train_on_features_without_train_rows(cli, tmp_path):
    """Checked from the features before any MLflow run or Ray job exists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jepa.config import VLJEPAConfig
    from pipelines import features

    cfg = VLJEPAConfig.preset("tiny")
    x = cfg.x_encoder
    schema = features.data_schema(
        x.num_tokens, x.hidden_size, 384, "float16", features.metadata(cfg, "tiny", "float16")
    )
    import numpy as np

    n = 4
    table = pa.table(
        {
            "clip_id": [f"c{i}" for i in range(n)],
            "video": ["v.mp4"] * n,
            "start_s": pa.array([0.0] * n, pa.float32()),
            "end_s": pa.array([2.0] * n, pa.float32()),
            "caption": ["a red ball"] * n,
            "paraphrases": [["x"]] * n,
            "label": ["red"] * n,
            "split": ["val"] * n,
            "x_tokens": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.zeros((n, x.num_tokens, x.hidden_size), np.float16)
            ),
            "y_embedding": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.zeros((n, 384), np.float32)
            ),
            "caption_ids": [[101, 102]] * n,
            "paraphrase_ids": [[[101, 102]]] * n,
        },
        schema=schema,
    )
    (tmp_path / "f" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "f" / "data" / "part-0.parquet")
    db = tmp_path / "mlruns" / "mlflow.db"
    out = cli("train", "--data", tmp_path / "f", "--tracking-uri", f"sqlite:///{db}")
    _one_line_exit_2(out, "0 rows with split='train'", "val")
    assert not db.exists()  # no run was opened


# ------------------------------------------------------------------------------ vljepa serve


def _serve(cli, tmp_path: Path, *args: str, tracking_uri: str | None = None):
    """`vljepa serve` as a user on one machine runs it (its own local Ray, not the session's
    cluster), with Ray's temp dir under tmp_path so a start would leave a trace there."""
    from tests.services import free_port

    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    env = {"RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp), "MLFLOW_TRACKING_URI": ""}
    flags = ["--port", str(free_port()), "--host", "127.0.0.1"]
    if tracking_uri:
        flags += ["--tracking-uri", tracking_uri]
    out = cli("serve", *args, *flags, env=env, timeout=180)
    assert not any(ray_tmp.iterdir()), "a Ray was started before the refusal"
    return out


def test_serve_a_model_version_the_registry_does_not_have(cli, tmp_path, mlflow_server):
    out = _serve(cli, tmp_path, "--model", "models:/nope/1", tracking_uri=mlflow_server.url)
    _one_line_exit_2(out, "models:/nope/1", "does not resolve", "nope")


def test_serve_a_registry_uri_without_a_store(cli, tmp_path):
    """The default store (./mlruns/mlflow.db) does not exist: refused, and not created."""
    out = _serve(cli, tmp_path, "--model", "models:/nope/1")
    _one_line_exit_2(out, "models:/nope/1", "no MLflow store")
    assert not (tmp_path / "mlruns").exists()


def test_serve_a_missing_model_folder(cli, tmp_path):
    out = _serve(cli, tmp_path, "--model", str(tmp_path / "no-model"))
    _one_line_exit_2(out, "no-model", "no such folder")
