"""`vljepa train-decoder` and `vljepa eval` on the model trained in the session's acceptance run:
the decoder is trained through the trained Y-encoder and registered as a new version; evaluation
measures retrieval, captioning CIDEr and selective decoding on real stream videos (decord ->
X-encoder -> predictor), and logs the curve to MLflow."""

from __future__ import annotations

import pytest

from tests.helpers import cli_json

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
    return cli_json(out.stdout)


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
    """Eval runs every task through the registered model and logs the selective-decoding curve on
    10 streams (87 events): adaptive decoding at the streams' event rate matches uniform decoding
    at 2.85x that rate (the paper's ratio).

    Reported, not asserted: the call ratio at equal CIDEr and adaptive against uniform at the same
    rate. The uniform curve is not monotonic on 87 events (on every model trained while building
    this it was lower at 2.85x, a 3-window stride, than at 2x or no higher than at 4x), and on those
    five models the two readings went either way by one to three events."""
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
    r = cli_json(out.stdout)
    assert r["retrieval"]["t2v_r1"] >= 0.9
    assert r["captioning"]["cider"] > 1.0
    s = r["selective"]["summary"]
    print("selective decoding summary:", s)
    assert s["adaptive_matches_uniform_at_ratio"] == 1.0, s
    client = MlflowClient(trained_model.tracking_uri)
    names = {a.path for a in client.list_artifacts(r["run_id"], "plots")}
    assert {"plots/selective_decoding.png", "plots/eval_similarity.png"} <= names
    hist = client.get_metric_history(r["run_id"], "selective/adaptive_cider")
    assert len(hist) >= 5


def test_eval_segment_pool_flag_reaches_the_curve(
    cli_module, decoded_model, trained_model, embedded_corpus
):
    """`--segment-pool mean` (the paper's plain average) is what the curve was computed with."""
    out = cli_module(
        "eval",
        "--model",
        f"models:/vljepa-test/{decoded_model['model_version']}",
        "--corpus",
        embedded_corpus.corpus,
        "--max-streams",
        "2",
        "--segment-pool",
        "mean",
        "--tracking-uri",
        trained_model.tracking_uri,
        "--no-mlflow",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = cli_json(out.stdout)
    assert r["selective"]["segment_pool"] == "mean"
    assert r["selective"]["events"] < 30  # two streams of 6-10 events, not all ten
    assert "retrieval" not in r and "run_id" not in r
