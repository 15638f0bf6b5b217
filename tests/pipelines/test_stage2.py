"""Stage 2 (issue 13): `vljepa train --stage sft --init models:/...` trains the predictor with
queries from the stage-1 model, survives a killed worker, registers a model that says it reads
questions, and answers held-out paraphrases where the stage-1 model cannot.

The acceptance numbers come from `vljepa eval --model <sft> --baseline <stage-1>` over the real
CLI on the session's features (whose questions were stored by the session's real `vljepa embed`).
"""

from __future__ import annotations

import json

import pytest

from pipelines import storage
from pipelines.synth.questions import CAPTION_UNANSWERABLE, VAL_TEMPLATES
from pipelines.train.checkpoint import dir_name
from tests.helpers import cli_json
from tests.stage2_models import meets_vqa_bar

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture(scope="module")
def side_by_side(stage2_model, embedded_corpus, cli_module):
    out = cli_module(
        "eval",
        "--model",
        stage2_model.uri,
        "--baseline",
        stage2_model.init_uri,
        "--data",
        embedded_corpus.features,
        "--worldprediction",
        embedded_corpus.corpus,
        "--tracking-uri",
        stage2_model.cfg.tracking_uri,
        "--experiment",
        "vljepa-tests",
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return cli_json(out.stdout), out.stderr


def test_stage2_answers_held_out_paraphrases(side_by_side, embedded_corpus):
    """Reading the question is worth it where the caption cannot answer, on val questions worded
    only with held-out templates: issue 13's bar (`meets_vqa_bar`, its rule `VQA_BAR_RULE`) and
    +0.3 over stage 1 on the caption-unanswerable types. The per-type table is printed beside
    stage 1's."""
    results, stderr = side_by_side
    (sft_name, sft), (base_name, base) = list(results["vqa"].items())
    print(stderr[-2500:])
    assert sft["reads_query"] and not base["reads_query"]
    assert "reads the question" in sft_name and "generic query" in base_name
    from pipelines.features import read_questions

    val = read_questions(str(embedded_corpus.features), "val").to_pylist()
    assert {q["template"] for q in val} == set(VAL_TEMPLATES)
    assert set(sft["by_type"]) == {q["type"] for q in val} == set(base["by_type"])
    assert sum(sft["counts"].values()) == len(val)
    for qtype in sft["by_type"]:
        assert sft["chance"][qtype] <= (0.5 if "has_" in qtype or "dark" in qtype else 0.25)
    by, base_by = sft["by_type"], base["by_type"]
    assert meets_vqa_bar(by), f"overall {sft['overall']:.3f}, {json.dumps(by)}"
    # yes/no about a named colour: the caption embedding cannot tell "is it red?" from "is it
    # blue?" (the stage-1 model is at chance)
    assert base_by["has_colour"] <= 0.55
    # before/after about one clip: one prediction per clip gets at most one of the pair right
    # (the stage-1 model gets the colour after, never the one before)
    assert (base_by["colour_before"] + base_by["colour_after"]) / 2 <= 0.55, base
    assert by["colour_before"] >= base_by["colour_before"] + 0.3, (sft, base)
    assert by["has_colour"] >= base_by["has_colour"] + 0.3, (sft, base)
    assert set(CAPTION_UNANSWERABLE) == {"has_colour", "colour_before", "colour_after"}

    def mean(r: dict) -> float:
        return sum(r[t] for t in CAPTION_UNANSWERABLE) / len(CAPTION_UNANSWERABLE)

    assert mean(by) >= mean(base_by) + 0.25, (sft, base)
    # the per-type table is printed, both models side by side
    assert "| has_colour |" in stderr and base_name in stderr


def test_worldprediction_beside_the_stage1_model(side_by_side):
    """Which of 4 candidate clips turns the initial state into the final one (chance 0.25)."""
    results, stderr = side_by_side
    wp = results["worldprediction"]
    (sft_name, sft), (base_name, base) = list(wp.items())
    assert sft["items"] >= 50 and sft["chance"] == 0.25
    assert sft["accuracy"] >= 0.8, wp
    for name, r in wp.items():
        assert f"WorldPrediction-style accuracy {r['accuracy']:.3f}" in stderr and name in stderr
    print({n: r["accuracy"] for n, r in wp.items()})


def test_stage2_run_resumed_tracked_and_registered(stage2_model, side_by_side):
    """The killed worker's run resumed from its checkpoint, kept counting, and registered a
    model whose config says it was trained with queries (what lifts Serve's 422).

    The checkpoint race, through S3: rank 1 died hard (os._exit) within 100 ms of a checkpoint
    report, before Ray Train's controller polled it. The restarted worker group resumed from that
    checkpoint (found complete in S3 when the controller never registered it), so the same
    MLflow run has every logged step exactly once, and the first after the restart is the next."""
    res, cfg = stage2_model.result, stage2_model.cfg
    assert stage2_model.death == {
        "rank": cfg.fail_rank,
        "step": cfg.fail_at_step,
        "ms_after_report": stage2_model.death.get("ms_after_report"),
    }
    assert stage2_model.death["ms_after_report"] < 100, stage2_model.death
    assert res.train_state["step"] == cfg.steps
    assert res.train_state["resumed_from"] == cfg.fail_at_step
    assert res.train_state["stage"] == "sft"
    client = _client(cfg.tracking_uri)
    run = client.get_run(res.run_id)
    assert run.data.tags["vljepa.stage"] == "sft"
    assert run.data.params["init"] == stage2_model.init_uri
    resume = run.data.tags["vljepa.resume"]
    print("resumed from", resume)  # "storage: ..." when the controller had not registered it
    assert dir_name(cfg.fail_at_step) in resume
    starts = sorted(
        client.get_metric_history(res.run_id, "resume/start_step"), key=lambda m: m.timestamp
    )
    assert [m.value for m in starts] == [0, cfg.fail_at_step]
    loss = client.get_metric_history(res.run_id, "train/loss")
    assert sorted(m.step for m in loss) == list(range(cfg.log_every, cfg.steps + 1, cfg.log_every))
    after = sorted(m.step for m in loss if m.timestamp >= starts[1].timestamp)
    assert after[0] == cfg.fail_at_step + cfg.log_every, after
    # every rank's shard, the metadata and rank 0's completion mark are on the S3 server
    assert res.checkpoint == storage.join(cfg.storage, cfg.name, dir_name(cfg.steps))
    assert storage.is_s3(res.checkpoint)
    names = set(storage.file_sizes(res.checkpoint))
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "train_state.json", "_COMPLETE"} <= names
    assert "val/vqa_acc" in run.data.metrics
    with open(f"{res.export_dir}/config.json") as f:
        saved = json.load(f)
    assert saved["trained_with_queries"] is True
    version = client.get_model_version(stage2_model.uri.split("/")[1], res.model_version)
    assert version.tags["stage"] == "sft" and version.tags["trained_with_queries"] == "true"
    artifacts = {a.path for a in client.list_artifacts(res.run_id, "plots")}
    assert "plots/vqa.png" in artifacts
    # the eval run logged the side-by-side bar plot and table
    results, _ = side_by_side
    eval_artifacts = {a.path for a in client.list_artifacts(results["run_id"])}
    assert "vqa.md" in eval_artifacts
    plots = {a.path for a in client.list_artifacts(results["run_id"], "plots")}
    assert "plots/vqa_by_type.png" in plots


def test_sft_refuses_features_without_questions(cli, embedded_corpus, tmp_path):
    """A features root with no questions/ fails before any run opens, naming the fix."""
    import shutil

    feats = tmp_path / "feats"
    shutil.copytree(embedded_corpus.features / "data", feats / "data")
    out = cli("train", "--data", feats, "--stage", "sft", "--steps", "2", timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "has no questions" in out.stderr and "questions.jsonl" in out.stderr
