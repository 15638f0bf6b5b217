"""`vljepa train --objective tokens`: the token-prediction baseline trained by the same FSDP2
trainer (2 Ray Train workers over gloo, DCP checkpoints, MLflow), its loss falling, its export
loadable by `vljepa eval` (captioning CIDEr-D and zero-shot classification, no retrieval), and
its captions coming out of its own LM head. Real CLI processes on the session's Ray cluster,
the session's pre-embedded corpus."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STEPS, LOG_EVERY = 24, 4


@pytest.fixture(scope="module")
def features(embedded_corpus):
    """The session's pre-embedded corpus (the stage-1 tests' features): its own embed run cost
    this module a quarter of its time."""
    return embedded_corpus.features


@pytest.fixture(scope="module")
def token_run(features, cli_module, tmp_path_factory):
    work = tmp_path_factory.mktemp("token-run")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    out = cli_module(
        "train",
        "--data",
        features,
        "--objective",
        "tokens",
        "--workers",
        "2",
        "--steps",
        STEPS,
        "--batch-size",
        "8",
        "--log-every",
        LOG_EVERY,
        "--val-every",
        STEPS,
        "--checkpoint-every",
        STEPS // 2,
        "--storage",
        work / "runs",
        "--export-dir",
        work / "model",
        "--tracking-uri",
        uri,
        "--experiment",
        "tokens",
        "--register-name",
        "",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {"summary": cli_json(out.stdout), "uri": uri, "model": work / "model"}


def test_token_objective_trains_through_the_fsdp2_trainer(token_run):
    from mlflow import MlflowClient

    from pipelines.train.checkpoint import read_state, shard_files

    s = token_run["summary"]
    assert s["step"] == STEPS
    client = MlflowClient(token_run["uri"])
    run = client.get_run(s["run_id"])
    assert run.data.params["objective"] == "tokens"
    assert run.data.tags["vljepa.objective"] == "tokens"
    m = run.data.metrics
    # the same FSDP2 wrapping as the embedding objective: every parameter a DTensor over 2 ranks
    assert m["fsdp/mesh_size"] == 2 and m["fsdp/dtensor_params"] == m["fsdp/params"] > 10
    assert shard_files(s["checkpoint"]) == ["__0_0.distcp", "__1_0.distcp"]
    assert read_state(s["checkpoint"])["objective"] == "tokens"
    # the caption cross-entropy falls (from ~ln(30522) = 10.3 at init)
    hist = sorted((x.step, x.value) for x in client.get_metric_history(s["run_id"], "train/loss"))
    assert [h[0] for h in hist] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    print("token objective train/loss:", hist)
    assert hist[-1][1] < 0.6 * hist[0][1], hist
    assert hist[-1][1] < 5.0, hist
    for key in ("val/loss", "val/zero_shot_acc", "val/zero_shot_top5", "train/samples_per_s"):
        assert key in m, key
    assert "val/t2v_r1" not in m  # no embedding space, no retrieval


def test_captions_come_from_the_lm_head(token_run, features):
    import torch

    from jepa.token_model import TokenVLM
    from pipelines.evaluate import load_split

    cfg = json.loads((token_run["model"] / "config.json").read_text())
    assert cfg["objective"] == "tokens"
    model = TokenVLM.from_pretrained(token_run["model"])
    val = load_split(str(features), "val")
    x = torch.as_tensor(val["x_tokens"]).float()
    ids = model.generate_ids(x, max_new_tokens=12, early_stop=False)
    # greedy decoding = the LM head's argmax at every position of [BOS, generated ...]
    seq = torch.cat([torch.full((len(x), 1), model.bos_id), ids], dim=1)
    with torch.no_grad():
        argmax = model.caption_logits(x, seq, torch.ones_like(seq)).argmax(-1)
    assert torch.equal(argmax, ids)
    texts = model.generate(x, max_new_tokens=12)
    assert texts == [model.decode(row) for row in ids.tolist()]
    # ... and they are the corpus's language, learnt in 24 steps, not noise
    vocab = {w for c in val["captions"] for w in c.split()} | {
        w for ps in val["paraphrases"] for p in ps or [] for w in p.split()
    }
    words = [w for t in texts for w in t.split()]
    assert words and sum(w in vocab for w in words) >= 0.9 * len(words), texts
    # another head, other captions: the head's rows rolled by one move every first token by one
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.roll(model.lm_head.weight, 1, dims=0))
    rolled = model.generate_ids(x, max_new_tokens=1)
    assert torch.equal(rolled[:, 0], (ids[:, 0] + 1) % model.lm_head.weight.shape[0])


def test_eval_dispatches_on_the_saved_objective(token_run, features, cli):
    out = cli("eval", "--model", token_run["model"], "--data", features, "--no-mlflow", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = cli_json(out.stdout)
    assert r["objective"] == "tokens" and "retrieval" not in r
    assert 0.0 <= r["captioning"]["cider"] <= 10.0 and r["captioning"]["samples"]
    c = r["classification"]
    assert 0.0 <= c["zero_shot_acc"] <= c["zero_shot_top5"] <= 1.0
    assert c["clips"] > 0 and c["classes"] > 5
    # selective decoding needs an embedding stream: refused in one line, exit 2
    bad = cli("eval", "--model", token_run["model"], "--corpus", "/nonexistent", timeout=120)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "objective: tokens" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
