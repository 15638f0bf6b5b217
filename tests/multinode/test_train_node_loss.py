"""`vljepa train` loses the node of one of its two workers and resumes from its last checkpoint.

The two Ray Train workers sit on the two worker nodes (one logical CPU each); features, run
storage and checkpoints are on S3, MLflow's artifacts too (the export is the MLflow copy). Once a
checkpoint is complete on S3 (every rank's shard there, marked by rank 0:
`pipelines.train.checkpoint`), one worker's node is killed like a lost machine and a replacement
node joins; the restarted worker group loads the newest complete checkpoint from S3 and the step
count goes on from there, not from 0.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.train import checkpoint as ckpt
from tests.helpers import cli_json
from tests.trained_models import EMBED_POOL_TEMPORAL, embed_in_process

TRAIN_WORKER = "ray::RayTrainWorker"
STEPS, CHECKPOINT_EVERY = 12, 4

# Waits are on conditions; a busy machine can stretch them past the suite's 600 s default.
pytestmark = pytest.mark.timeout(1800)


def _upload(local: Path, uri: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.write_bytes(storage.join(uri, f.relative_to(local).as_posix()), f.read_bytes())


def _complete_step(run_dir: str) -> int | None:
    """The step of the newest checkpoint that is complete in storage (every rank's shard is
    there and rank 0 has marked it): from then on the run must never restart below it."""
    newest, _ = ckpt.newest_complete(run_dir)
    return None if newest is None else newest.step


def test_train_resumes_from_s3_checkpoint_after_node_loss(
    cluster, vljepa, synth_corpus, s3, mlflow_server_s3, tmp_path
):
    from mlflow import MlflowClient

    prefix = s3.uri("multinode", uuid.uuid4().hex[:8])
    embed_in_process(synth_corpus, tmp_path / "features", "tiny", EMBED_POOL_TEMPORAL)
    features = storage.join(prefix, "features")
    _upload(tmp_path / "features", features)
    name = "node-loss"
    run_dir = storage.join(prefix, "runs", name)

    proc = vljepa(
        "train",
        "--data",
        features,
        "--workers",
        "2",
        "--steps",
        STEPS,
        "--batch-size",
        "4",
        "--log-every",
        "1",
        "--val-every",
        STEPS,
        "--checkpoint-every",
        CHECKPOINT_EVERY,
        "--max-failures",
        "2",
        "--storage",
        storage.join(prefix, "runs"),
        "--name",
        name,
        "--tracking-uri",
        mlflow_server_s3.url,
        "--experiment",
        "vljepa-multinode",
        "--register-name",
        "",
    )
    deadline = time.monotonic() + 900
    on_s3 = None
    while time.monotonic() < deadline and proc.poll() is None:
        on_s3 = _complete_step(run_dir)
        if on_s3 is not None:
            break
        time.sleep(0.2)
    placed = cluster.node_running(TRAIN_WORKER)
    assert on_s3 is not None and proc.poll() is None, (
        f"no complete checkpoint while the run was alive:\n{proc.log.read_text()[-3000:]}"
    )
    assert len(placed) == 2, f"the workers are not on two nodes: {[n.name for n in placed]}"
    cluster.kill(placed[0])
    cluster.add_worker()  # a replacement node: the restarted group needs two workers' CPUs

    rc = proc.wait(timeout=900)
    log = proc.log.read_text()
    assert rc == 0, f"train failed after the node loss:\n{log[-4000:]}\n{cluster.log_tails()}"
    summary = cli_json(log[log.index("{\n") :])
    assert summary["step"] == STEPS, summary

    client = MlflowClient(mlflow_server_s3.url)
    starts = sorted(
        client.get_metric_history(summary["run_id"], "resume/start_step"), key=lambda m: m.timestamp
    )
    # two starts: the first from 0, the restart from the checkpoint complete at the kill or later
    assert [s.value for s in starts][:1] == [0] and len(starts) == 2, starts
    resumed = int(starts[1].value)
    assert on_s3 <= resumed < STEPS and resumed % CHECKPOINT_EVERY == 0, (on_s3, starts)
    # after the restart the steps go on from the checkpoint's: resumed+1 .. STEPS
    loss = client.get_metric_history(summary["run_id"], "train/loss")
    after = sorted(m.step for m in loss if m.timestamp >= starts[1].timestamp)
    assert after == list(range(resumed + 1, STEPS + 1)), after
    assert {m.step for m in loss} == set(range(1, STEPS + 1))
    assert summary["checkpoint"] == storage.join(run_dir, f"checkpoint_{STEPS:07d}")
    # S3 run storage takes no save_pretrained: the export is the MLflow copy, whose artifacts
    # the tracking server keeps on the S3 server
    assert summary["export_dir"] == f"runs:/{summary['run_id']}/model", summary
    assert client.get_run(summary["run_id"]).info.artifact_uri.startswith("mlflow-artifacts:")
    stored = storage.list_files(s3.uri("mlartifacts"), recursive=True)
    assert any(k.endswith(f"{summary['run_id']}/artifacts/model/model.safetensors") for k in stored)
    print(f"killed {placed[0].name} once step {on_s3} was on S3; resumed at step {resumed}")
