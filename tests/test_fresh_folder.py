"""Off the demo path: the stage commands from a fresh folder with NO MLflow settings at all.

`vljepa synth`, `embed --mlflow`, `train` and `serve --model models:/vljepa/1` run one after the
other in an empty folder, with no MLFLOW_* variable in their environment and no --tracking-uri:
every one must use the embedded store, `./mlruns/mlflow.db` of that folder. The Serve replicas
run in the Ray cluster's worker processes, whose working directory is NOT that folder: they can
only find the registered model if `vljepa serve` hands them the store (they used to open MLflow's
own default, a new `./mlflow.db`, and report the model missing).

(That no library code sets MLflow's process-global URIs is tests/test_layers.py's.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import cli_json
from tests.services import free_port

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
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
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
    _ok(
        _vljepa(
            root,
            "embed",
            "--manifest",
            "corpus/manifest.jsonl",
            "--out",
            "features",
            "--mlflow",
            timeout=900,
        ),
        "embed",
    )
    r = _vljepa(
        root,
        "train",
        "--data",
        "features",
        "--steps",
        "5",
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--warmup-steps",
        "1",
        "--log-every",
        "1",
        "--val-every",
        "5",
        "--checkpoint-every",
        "5",
        timeout=1200,
    )
    _ok(r, "train")
    trained = cli_json(r.stdout)
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
        clip = sorted((root / "corpus" / "videos").glob("*.mp4"))[0].read_bytes()
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
    finally:
        try:
            serve.delete(sc.APP_NAME)
            serve.shutdown()
        finally:
            drop_store(store_name(sc.APP_NAME))
    # nothing here opened MLflow's own default store (a ./mlflow.db beside ./mlruns)
    assert sorted(p.name for p in root.iterdir() if p.suffix == ".db") == []
