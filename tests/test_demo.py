"""`vljepa demo` end to end at small sizes (issue 8, acceptance 1): every stage's output is checked
where it landed (Parquet on disk, runs and model versions on the MLflow server, a caption stream
served over HTTP), then the demo is stopped the way Ctrl-C stops it.

The run is shared with tests/test_browser.py (see tests/demo_fixture.py); the SIGTERM test,
which ends it, runs after both files' other tests whatever order the files are given in.
"""

from __future__ import annotations

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import demo_fixture
from tests.demo_fixture import SIZES, DemoRun

demo_run = demo_fixture.demo_run  # the shared session fixture
# The first test to ask for the demo waits for its run (the suite-wide timeout is 600 s).
pytestmark = pytest.mark.timeout(demo_fixture.START_TIMEOUT_S + 300)

STAGES = ("synth", "embed", "train", "decoder", "eval", "serve", "stream")


def test_every_stage_announced_with_its_timing(demo_run: DemoRun):
    out = demo_run.stdout
    for name in STAGES:
        assert f"] {name} done in " in out, f"no banner for stage {name}:\n{out[-3000:]}"
        assert demo_run.summary["timings"][name] > 0
    # The components' own progress lines are there too (synth summary, embed summary, decoder).
    assert "wrote 60 clips" in out
    assert "embed: 60 clips written" in out


def test_parquet_features_written(demo_run: DemoRun):
    files = sorted((demo_run.out / "features" / "data").glob("*.parquet"))
    assert files, "no Parquet files under features/data"
    table = pa.concat_tables([pq.read_table(f) for f in files])
    clips = SIZES["clips"]
    assert table.num_rows == demo_run.summary["embed"]["clips_written"] == clips
    x = table.column("x_tokens").combine_chunks()
    assert isinstance(x.type, pa.FixedShapeTensorType)
    arr = x.to_numpy_ndarray().astype("float32")
    assert arr.shape[0] == clips and arr.ndim == 3 and arr.std() > 0
    assert set(table.column("split").to_pylist()) == {"train", "val"}
    meta = pq.read_schema(files[0]).metadata
    assert meta[b"vljepa.preset"] == b"tiny" and meta[b"vljepa.config_hash"]
    assert (demo_run.out / "features" / "_SUCCESS").exists()


def test_mlflow_runs_and_registered_model(demo_run: DemoRun, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    s = demo_run.summary
    train = client.get_run(s["train"]["run_id"])
    assert train.info.status == "FINISHED"
    assert "train/loss" in train.data.metrics
    assert any(k.startswith("val/") for k in train.data.metrics)
    assert len(client.get_metric_history(train.info.run_id, "train/loss")) >= 2
    dec = client.get_run(s["decoder"]["run_id"])
    assert dec.info.status == "FINISHED" and "decoder/loss" in dec.data.metrics
    ev = client.get_run(s["evaluation"]["run_id"])
    assert ev.info.status == "FINISHED"
    assert "eval/zero_shot_acc" in ev.data.metrics
    # Two versions: the trained model, then the same with its decoder; Serve used the latter.
    versions = client.search_model_versions("name='vljepa-demo'")
    by_run = {v.run_id: v.version for v in versions}
    assert s["train"]["run_id"] in by_run and s["decoder"]["run_id"] in by_run
    served = s["serve"]["model_uri"]
    assert served == f"models:/vljepa-demo/{by_run[s['decoder']['run_id']]}"
    assert f"MLflow UI: {mlflow_server.url}" in demo_run.stdout


def test_served_caption_stream_saves_decoder_calls(demo_run: DemoRun):
    s = demo_run.summary
    assert len(s["streams"]) == SIZES["streams"]
    stream = s["streams"][0]
    assert stream["clips"] >= 8
    # Selective decoding: at least one caption (the first clip always decodes), fewer than clips.
    assert 1 <= stream["decodes"] < stream["clips"]
    # Counted by the Decoder deployment itself, not by the client.
    assert s["decoder_calls"] == sum(x["decodes"] for x in s["streams"])
    assert s["decoder_calls"] < s["stream_clips"]
    times = [e["time_s"] for e in stream["events"]]
    assert times == sorted(times) and 0 < times[-1] <= stream["duration_s"]
    assert all(isinstance(e["caption"], str) and e["caption"].strip() for e in stream["events"])
    saved = s["stream_clips"] - s["decoder_calls"]
    assert f"({saved} calls saved" in demo_run.stdout
    assert sum(" caption: " in line for line in demo_run.lines) == len(stream["events"])
    # The stream's state is live on the Serve app the demo still runs.
    r = httpx.get(f"{demo_run.base_url}/v1/streams/{stream['stream_id']}/events", timeout=30)
    assert r.status_code == 200, r.text
    live = r.json()
    assert live["clips"] == stream["clips"]
    assert [e["caption"] for e in live["events"]] == [e["caption"] for e in stream["events"]]
    assert f"Serve: {demo_run.base_url}/v1" in demo_run.stdout


@pytest.mark.parametrize(
    "args, field",
    [
        (["--clips", "5"], "clips"),
        (["--port", "0"], "port"),
        (["--streams", "0"], "streams"),
        (["--out", "s3://bucket/demo"], "out"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(cli, args, field):
    r = cli("demo", *args, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vljepa demo: error:") and field in lines[0]


@pytest.mark.stops_demo
def test_sigterm_stops_serving_cleanly(demo_run: DemoRun):
    """Ctrl-C/SIGTERM tears the Serve app down and exits 0. Marked `stops_demo`: it runs after
    every other test of the shared demo, in any file order (tests/demo_fixture.py)."""
    assert demo_run.stop() == 0, demo_run.stdout[-3000:]
    assert "stopping Serve" in demo_run.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{demo_run.base_url}/healthz", timeout=5).raise_for_status()
