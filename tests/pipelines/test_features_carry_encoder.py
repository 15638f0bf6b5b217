"""Features carry their encoder: whatever `vljepa embed` was told (frames, size, fps, compute
dtype), `vljepa train` takes the X-encoder and the sampling from the features' metadata and
trains with no flag; `vljepa eval` runs on the result. Only a real incompatibility is refused,
in one line naming both sides. Real CLI processes on the session's Ray cluster."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from tests.helpers import cli_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# One encoder turns all four knobs (a variant is an embed, a train and an eval: a minute on CI).
# `--fps 4` on the corpus's 2 s clips: 8 frames 1/4 s apart fit, the default 16 would not.
VARIANTS = {
    "fps4_frames8_size48_bf16": (
        ["--fps", "4", "--frames", "8", "--size", "48", "--x-dtype", "bfloat16"],
        {"fps": 4.0, "num_frames": 8, "image_size": 48, "dtype": "bfloat16"},
    ),
}
VARIANT = next(iter(VARIANTS))


@pytest.fixture(scope="module")
def variant_features(synth_corpus, cli_module, ray_session, tmp_path_factory):  # noqa: ARG001
    """One features root per variant, embedded once for the module."""
    root = tmp_path_factory.mktemp("variants")
    out = {}
    for name, (flags, _) in VARIANTS.items():
        dest = root / name
        res = cli_module(
            "embed",
            "--manifest",
            synth_corpus / "manifest.jsonl",
            "--out",
            dest,
            "--no-progress",
            *flags,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        out[name] = dest
    return out


def _x_meta(features) -> dict:
    f = next((features / "data").glob("*.parquet"))
    return json.loads(pq.read_schema(f).metadata[b"vljepa.x_encoder"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_features_train_and_evaluate_without_flags(
    name, variant_features, cli, tmp_path, mlflow_server
):
    features = variant_features[name]
    expect = VARIANTS[name][1]
    meta = _x_meta(features)
    assert {k: meta[k] for k in expect} == expect  # the sampling travels in the metadata

    out = cli(
        "train",
        "--data",
        features,
        "--steps",
        "5",
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--val-every",
        "5",
        "--checkpoint-every",
        "5",
        "--storage",
        tmp_path / "runs",
        "--export-dir",
        tmp_path / "model",
        "--tracking-uri",
        mlflow_server.url,
        "--experiment",
        f"variants-{name}",
        "--register-name",
        "",
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert cli_json(out.stdout)["step"] == 5
    # the trained model's X-encoder is the features' one, sampling included
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["x_encoder"]
    assert saved == meta

    ev = cli(
        "eval",
        "--model",
        tmp_path / "model",
        "--data",
        features,
        "--no-mlflow",
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert cli_json(ev.stdout)["retrieval"]["clips"] > 0


def test_mixed_encoders_in_one_root_are_refused_in_one_line(
    variant_features, embedded_corpus, cli, tmp_path
):
    mixed = tmp_path / "mixed"
    shutil.copytree(variant_features[VARIANT], mixed)
    # a file of the session's default-encoder features (16 frames, 64 px, spread sampling)
    intruder = next((embedded_corpus.features / "data").glob("*.parquet"))
    shutil.copy(intruder, mixed / "data" / "part-zzzzz-0.parquet")
    out = cli("train", "--data", mixed, "--steps", "2", timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "mixes two X-encoders" in line and "part-zzzzz-0.parquet" in line
    assert "image_size" in line and "fps" in line


def test_eval_refuses_a_model_trained_on_another_encoder(variant_features, cli, tmp_path):
    """A model whose X-encoder differs from the features' is refused before any scoring."""
    from jepa.config import VLJEPAConfig
    from jepa.model import VLJEPA

    cfg = VLJEPAConfig.preset("tiny")  # 16 frames, 64 px: not what the variant's features hold
    VLJEPA.from_config(cfg).save_pretrained(tmp_path / "m")
    out = cli(
        "eval",
        "--model",
        tmp_path / "m",
        "--data",
        variant_features[VARIANT],
        "--no-mlflow",
        timeout=180,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "image_size" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
