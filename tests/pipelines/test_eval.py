"""`vljepa train-decoder` and `vljepa eval` on the model trained in the session's acceptance run:
the decoder is trained through the trained Y-encoder and registered as a new version; evaluation
measures retrieval, captioning CIDEr and selective decoding on real stream videos (decord ->
X-encoder -> predictor), and logs the curve to MLflow."""

from __future__ import annotations

import pytest

from tests.helpers import cli_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# `decoded_model` (train-decoder on the acceptance run's model, a new registered version) is a
# session fixture in tests/trained_models.py: tests/serve serves the same version.


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
    # no --out: the MLflow copy is the model (nothing left behind in a temp folder)
    assert decoded_model["model_dir"] == f"runs:/{decoded_model['run_id']}/model"


def test_eval_retrieval_captioning_and_selective_decoding(
    cli_module, decoded_model, trained_model, embedded_corpus
):
    """Eval runs every task through the registered model and logs the selective-decoding curves
    on 10 streams by the paper's protocol: uniform and adaptive at absolute rates, the model's
    calibrated online detector as one more point, and the call ratio at equal CIDEr with a
    bootstrap interval over streams.

    What is asserted is the computation on the model's own curves (each point's ratio is the
    linear reading of the printed uniform curve; the interval holds the point), not a ratio the
    model must reach: on a few dozen events that reading moves by a rate step when one event
    decodes differently (the figures are printed; tests/pipelines/test_selective_summary.py pins
    the arithmetic on fixed inputs)."""
    from mlflow import MlflowClient

    from pipelines.selective_eval import DEFAULT_RATES_HZ, uniform_calls_to_match

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
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = cli_json(out.stdout)
    assert r["retrieval"]["t2v_r1"] >= 0.9
    assert r["captioning"]["cider"] > 1.0
    sel = r["selective"]
    s = sel["summary"]
    print(out.stderr[out.stderr.find("selective decoding:") :])
    print("selective decoding summary:", s)
    assert sel["segment_pool"] == "mean" and sel["detector_source"] == "model"
    assert "rows" not in sel and "references" not in sel  # the bulky parts stay in MLflow
    curves = sel["curves"]
    assert [p["target_rate_hz"] for p in curves["uniform"]] == list(DEFAULT_RATES_HZ)
    assert [p["target_rate_hz"] for p in curves["adaptive"]] == list(DEFAULT_RATES_HZ)
    assert curves["online"]["calls"] >= sel["streams"]  # the detector fires at each start
    uniform = [(p["calls"], p["cider"]) for p in curves["uniform"]]
    for p in sel["points"]:
        needed, bound = uniform_calls_to_match(uniform, p["cider"])
        assert p["uniform_calls_to_match"] == needed and p["bound"] == bound, p
        assert p["call_ratio"] == needed / p["calls"], p
        if not bound:
            assert p["ci_low"] <= p["call_ratio"] <= p["ci_high"], p
    assert s["headline_rate_hz"] == 0.35 and s["bootstrap_resamples"] == 1000
    assert s["adaptive_call_ratio_ci_low"] <= s["adaptive_call_ratio_ci_high"]
    assert "online_call_ratio" in s
    assert "call ratio at equal CIDEr, adaptive at 0.35 Hz" in out.stderr
    client = MlflowClient(trained_model.tracking_uri)
    names = {a.path for a in client.list_artifacts(r["run_id"], "plots")}
    assert {"plots/selective_decoding.png", "plots/eval_similarity.png"} <= names
    hist = client.get_metric_history(r["run_id"], "selective/adaptive_cider")
    assert len(hist) >= 5
    metrics = client.get_run(r["run_id"]).data.metrics
    assert metrics["selective/adaptive_call_ratio"] == pytest.approx(s["adaptive_call_ratio"])
    assert "selective/online_cider" in metrics


def test_eval_segment_pool_and_rates_flags_reach_the_curve(
    cli_module, decoded_model, trained_model, embedded_corpus
):
    """`--segment-pool trimmed` (the option; the paper's mean is the default), `--rates` and
    `--bootstrap` are what the curves were computed with."""
    out = cli_module(
        "eval",
        "--model",
        f"models:/vljepa-test/{decoded_model['model_version']}",
        "--corpus",
        embedded_corpus.corpus,
        "--max-streams",
        "2",
        "--segment-pool",
        "trimmed",
        "--rates",
        "0.5,0.35,0.1",
        "--bootstrap",
        "0",
        "--tracking-uri",
        trained_model.tracking_uri,
        "--no-mlflow",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = cli_json(out.stdout)
    sel = r["selective"]
    assert sel["segment_pool"] == "trimmed"
    assert sel["streams"] == 2
    assert sel["events"] < 30  # two streams of 6-10 events, not all ten
    assert [p["target_rate_hz"] for p in sel["curves"]["adaptive"]] == [0.5, 0.35, 0.1]
    assert all(p["ci_low"] is None for p in sel["points"])
    assert "adaptive_call_ratio" in sel["summary"]
    assert "adaptive_call_ratio_ci_low" not in sel["summary"]
    assert "retrieval" not in r and "run_id" not in r
