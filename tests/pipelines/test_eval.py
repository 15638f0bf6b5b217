"""`vljepa train-decoder` and `vljepa eval` on the model trained in the session's acceptance run:
the decoder is trained through the trained Y-encoder and registered as a new version; evaluation
measures retrieval, captioning CIDEr and selective decoding on real stream videos (decord ->
X-encoder -> predictor), and logs the curve to MLflow."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def decoded_model(cli_module, trained_model, embedded_corpus):
    res = trained_model.result
    out = cli_module(
        "train-decoder",
        "--model",
        f"models:/vljepa-test/{res.model_version}",
        "--data",
        embedded_corpus.features,
        "--steps",
        "250",
        "--tracking-uri",
        trained_model.tracking_uri,
        "--experiment",
        "vljepa-tests",
        "--register-name",
        "vljepa-test",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.JSONDecoder().raw_decode(out.stdout, out.stdout.index("{"))[0]


@pytest.fixture(scope="module")
def cli_module(tmp_path_factory):
    import os
    import subprocess
    import sys
    from pathlib import Path

    cwd = tmp_path_factory.mktemp("evalcli")
    script = Path(sys.executable).parent / "vljepa"

    def run(*args, timeout=600):
        return subprocess.run(
            [str(script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=dict(os.environ),
        )

    return run


def test_decoder_is_trained_saved_with_the_model_and_registered(decoded_model, trained_model):
    from mlflow import MlflowClient

    client = MlflowClient(trained_model.tracking_uri, registry_uri=trained_model.tracking_uri)
    assert int(decoded_model["model_version"]) > int(trained_model.result.model_version)
    mv = client.get_model_version("vljepa-test", decoded_model["model_version"])
    assert mv.run_id == decoded_model["run_id"]
    assert decoded_model["exact_match"] >= 0.6, decoded_model
    hist = client.get_metric_history(decoded_model["run_id"], "decoder/loss")
    assert hist[-1].value < hist[0].value
    from jepa.model import VLJEPA
    from pipelines.train.tracking import resolve_model

    model = VLJEPA.from_pretrained(
        resolve_model(
            f"models:/vljepa-test/{decoded_model['model_version']}", trained_model.tracking_uri
        )
    )
    assert model.y_decoder is not None
    text = model.y_decoder.generate(model.embed_text(["the lamp turns off"]))[0]
    assert "lamp" in text


def test_eval_retrieval_captioning_and_selective_decoding(
    cli_module, decoded_model, trained_model, embedded_corpus
):
    """Eval runs every task through the registered model and logs the selective-decoding curve:
    adaptive decoding at the streams' event rate matches uniform decoding at 2.85x that rate, and
    uniform needs at least 2.85x the calls to reach the adaptive CIDEr (the paper's ratio)."""
    from mlflow import MlflowClient

    out = cli_module(
        "eval",
        "--model",
        f"models:/vljepa-test/{decoded_model['model_version']}",
        "--data",
        embedded_corpus.features,
        "--corpus",
        embedded_corpus.corpus,
        "--tracking-uri",
        trained_model.tracking_uri,
        "--experiment",
        "vljepa-tests",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.JSONDecoder().raw_decode(out.stdout, out.stdout.index("{"))[0]
    assert r["retrieval"]["t2v_r1"] >= 0.9
    assert r["captioning"]["cider"] > 1.0
    s = r["selective"]["summary"]
    print("selective decoding summary:", s)
    assert s["adaptive_matches_uniform_at_ratio"] == 1.0, s
    assert s["call_ratio_at_equal_cider"] >= 2.85, s
    client = MlflowClient(trained_model.tracking_uri)
    names = {a.path for a in client.list_artifacts(r["run_id"], "plots")}
    assert {"plots/selective_decoding.png", "plots/eval_similarity.png"} <= names
    hist = client.get_metric_history(r["run_id"], "selective/adaptive_cider")
    assert len(hist) >= 5
