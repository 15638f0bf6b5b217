"""Off the demo path: the stage commands from a fresh folder with NO MLflow settings at all, on
pretrained backbones given by path.

`vljepa synth`, `embed --mlflow`, `train` and `serve --model models:/vljepa/1` run one after the
other in an empty folder, with no MLFLOW_* variable in their environment and no --tracking-uri:
every one must use the embedded store, `./mlruns/mlflow.db` of that folder. The Serve replicas
run in the Ray cluster's worker processes, whose working directory is NOT that folder: they can
only find the registered model if `vljepa serve` hands them the store (they used to open MLflow's
own default, a new `./mlflow.db`, and report the model missing).

The same run is tests/test_pretrained_by_path.py's acceptance (one embed/train/serve chain costs
~2 minutes on 2 cores, so the two share it): `embed --x-encoder DIR --y-encoder DIR`, `train
--predictor DIR --predictor-layers 2 --y-encoder DIR` (3 steps), the export loaded back, and the
Serve app answering POST /v1/embed as well as POST /v1/caption over HTTP with that model.

(That no library code sets MLflow's process-global URIs is tests/test_layers.py's.)
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.helpers import cli_json
from tests.services import free_port
from tests.test_pretrained_by_path import (
    GEMMA_HIDDEN,
    LLAMA_KEEP,
    saved_weights,
    write_folders,
)

REPO = Path(__file__).resolve().parents[1]


def _vljepa(cwd: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """`vljepa ARGS` in `cwd` with the session env minus every MLFLOW_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    script = Path(sys.executable).parent / "vljepa"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cluster.cli"]
    return subprocess.run(
        [*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _ok(r: subprocess.CompletedProcess, what: str) -> None:
    assert r.returncode == 0, (
        f"{what} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    )


def _no_serve_running() -> None:
    """One Serve per cluster: the shared demo (still serving if only test_browser ran) or any
    app left over must go before `vljepa serve` deploys with its own port."""
    from ray import serve

    from tests import demo_fixture

    if demo_fixture._RUN is not None:
        demo_fixture._RUN.stop()
    serve.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_train_then_serve_from_a_fresh_folder(ray_session, tmp_path: Path):  # noqa: ARG001
    from ray import serve

    from pipelines import tracking_store
    from serve import config as sc
    from serve.streams import drop_store, store_name

    root = tmp_path / "fresh"
    root.mkdir()
    _ok(
        _vljepa(root, "synth", "--out", "corpus", "--clips", "40", "--streams", "1", timeout=300),
        "synth",
    )
    corpus = root / "corpus"
    rows = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines() if x]
    texts = [r["caption"] for r in rows] + [p for r in rows for p in r.get("paraphrases") or []]
    # the "hub" checkpoints live outside the fresh folder
    f = write_folders(tmp_path / "hub", texts)

    _ok(
        _vljepa(
            root,
            "embed",
            "--manifest",
            "corpus/manifest.jsonl",
            "--out",
            "features",
            "--mlflow",
            "--x-encoder",
            f.vjepa,
            "--y-encoder",
            f.gemma,
            "--concurrency",
            "1",
            "--no-progress",
            timeout=900,
        ),  # fmt: skip
        "embed",
    )
    # the features carry the folders' encoders
    import pyarrow.parquet as pq

    data = sorted((root / "features" / "data").glob("*.parquet"))
    schema = pq.read_schema(data[0])
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    x_meta, y_meta = json.loads(meta["vljepa.x_encoder"]), json.loads(meta["vljepa.y_encoder"])
    assert x_meta["name_or_path"] == f.vjepa and x_meta["hidden_size"] == 96
    assert y_meta["name_or_path"] == f.gemma and y_meta["arch"]["model_type"] == "gemma3_text"
    assert schema.field("x_tokens").type.shape == [128, 96]
    assert schema.field("y_embedding").type.shape == [GEMMA_HIDDEN]
    n_rows = sum(pq.read_metadata(p).num_rows for p in data)
    assert n_rows == len(rows)

    export = tmp_path / "export"
    r = _vljepa(
        root,
        "train",
        "--data", "features",
        "--predictor", f.llama,
        "--predictor-layers", str(LLAMA_KEEP),
        "--y-encoder", f.gemma,
        "--steps", "3",
        "--workers", "1",
        "--batch-size", "8",
        "--log-every", "1",
        "--val-every", "3",
        "--checkpoint-every", "3",
        "--export-dir", export,
        timeout=1200,
    )  # fmt: skip
    _ok(r, "train")
    trained = cli_json(r.stdout)
    assert trained["step"] == 3, trained
    assert str(trained["model_version"]) == "1", trained

    # one store, in this folder, holding the embed run, the train run and the registered model
    uri = tracking_store.default_uri(str(root))
    assert (root / "mlruns" / "mlflow.db").exists()
    client = tracking_store.client(uri)
    runs = {}
    for name in ("vljepa-embed", "vljepa"):
        exp = client.get_experiment_by_name(name)
        assert exp is not None, f"no experiment {name!r} in {uri}"
        runs[name] = client.search_runs([exp.experiment_id])
        assert len(runs[name]) == 1, (name, [r.info.run_id for r in runs[name]])
    mv = client.get_model_version("vljepa", "1")
    assert mv.run_id == runs["vljepa"][0].info.run_id == trained["run_id"]

    # the export is the folders' architecture, with both tokenizers
    from jepa.model import VLJEPA

    model = VLJEPA.from_pretrained(export)
    assert type(model.x_encoder.vjepa).__name__ == "VJEPA2Model"
    assert model.config.x_encoder.name_or_path == f.vjepa
    assert type(model.predictor.llama).__name__ == "LlamaModel"
    assert len(model.predictor.llama.layers) == LLAMA_KEEP
    assert model.config.predictor.keep_last_layers == LLAMA_KEEP
    assert type(model.y_encoder.backbone).__name__ == "Gemma3TextModel"
    assert model.y_encoder.backbone.config.use_bidirectional_attention is True
    for part in ("predictor", "y_encoder"):
        assert (export / f"{part}_tokenizer" / "tokenizer.json").is_file(), part
    # The weights came from the folders: the X-encoder and the predictor's token table are
    # frozen (equal); the Y-encoder trained 3 steps at lr x 0.05, in the preset's warmup
    # (close, not equal).
    xw, lw, gw = (saved_weights(d) for d in (f.vjepa, f.llama, f.gemma))
    key = "encoder.layer.0.attention.query.weight"
    assert torch.equal(model.x_encoder.vjepa.state_dict()[key], xw[key])
    assert torch.equal(model.predictor.llama.embed_tokens.weight, lw["model.embed_tokens.weight"])
    trained_w = model.y_encoder.backbone.state_dict()["layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(trained_w, gw["layers.0.self_attn.q_proj.weight"], atol=2e-3, rtol=0)

    _no_serve_running()
    port = free_port()
    try:
        r = _vljepa(
            root,
            "serve",
            "--model",
            "models:/vljepa/1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-block",
            timeout=900,
        )
        _ok(r, "serve")
        assert f"MLflow store {uri}" in r.stdout, r.stdout
        clip = sorted((corpus / "videos").glob("*.mp4"))[0].read_bytes()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            deadline = time.monotonic() + 60
            while True:  # the proxy answers a moment after the app reports RUNNING
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the served app never became ready"
                time.sleep(0.5)
            r = c.post("/v1/caption", files={"clip": ("c.mp4", clip, "video/mp4")})
            assert r.status_code == 200, r.text
            assert isinstance(r.json()["caption"], str)
            clip = (corpus / rows[0]["video"]).read_bytes()
            r = c.post("/v1/embed", json={"clip_b64": base64.b64encode(clip).decode()})
            assert r.status_code == 200, r.text
            body = r.json()
        emb = np.asarray(body["embedding"], np.float32)
        assert body["dim"] == emb.shape[0] == model.config.shared_dim
        assert abs(float(np.linalg.norm(emb)) - 1) < 1e-4
    finally:
        try:
            serve.delete(sc.APP_NAME)
            serve.shutdown()
        finally:
            drop_store(store_name(sc.APP_NAME))
    # nothing here opened MLflow's own default store (a ./mlflow.db beside ./mlruns)
    assert sorted(p.name for p in root.iterdir() if p.suffix == ".db") == []
