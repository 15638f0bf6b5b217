"""The serve package's parts that need no running app: the config file and its overrides, the
URI guard, model loading through real MLflow (SQLite store) and the `vljepa serve` flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve import config as sc
from serve.security import ApiError, check_uri


def test_packaged_config_is_a_valid_serve_deploy_file():
    cfg = sc.load_config()
    schema = sc.validate(cfg)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app"
    names = [d.name for d in app.deployments]
    assert sorted(names) == sorted(sc.DEPLOYMENTS)
    by = {d.name: d for d in app.deployments}
    assert by["Encoder"].autoscaling_config["min_replicas"] >= 1  # warm minimum
    assert by["Decoder"].autoscaling_config["min_replicas"] == 0  # may scale to zero


def test_overrides_and_validation():
    cfg = sc.apply_overrides(
        sc.load_config(),
        args={"model_uri": "models:/vljepa/3"},
        deployments={"Decoder": {"num_replicas": 2}},
        port=9123,
    )
    sc.validate(cfg)
    app = sc.app_entry(cfg)
    assert app["args"]["model_uri"] == "models:/vljepa/3"
    dec = next(d for d in app["deployments"] if d["name"] == "Decoder")
    assert dec["num_replicas"] == 2 and "autoscaling_config" not in dec
    assert sc.urls(cfg)["docs"] == "http://127.0.0.1:9123/docs"
    with pytest.raises(ValueError, match="unknown deployment"):
        sc.apply_overrides(sc.load_config(), deployments={"Encodr": {}})
    with pytest.raises(ValidationError, match="detectr"):
        sc.validate(sc.apply_overrides(sc.load_config(), args={"detectr": {}}))
    with pytest.raises(ValidationError, match="threshold"):
        sc.validate(sc.apply_overrides(sc.load_config(), args={"detector": {"threshold": -1}}))


def test_uri_guard(tmp_path: Path):
    allowed = tmp_path / "clips"
    allowed.mkdir()
    (allowed / "a.mp4").write_bytes(b"x")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (allowed / "link.mp4").symlink_to(outside)
    prefixes = sc.AppArgs(
        allowed_uri_prefixes=[str(allowed), "s3://bucket/clips"]
    ).allowed_uri_prefixes
    assert check_uri(str(allowed / "a.mp4"), prefixes) == str(allowed / "a.mp4")
    assert check_uri("s3://bucket/clips/x/a.mp4", prefixes) == "s3://bucket/clips/x/a.mp4"
    cases = {
        f"{allowed}/../secret.mp4": 400,
        f"{allowed}/%2E%2E/secret.mp4": 400,
        str(allowed / "link.mp4"): 403,  # a symlink out of the prefix
        str(outside): 403,
        f"{allowed}-evil/a.mp4": 403,  # prefix matches whole path segments only
        "s3://bucket/clips-private/a.mp4": 403,
        "s3://other/clips/a.mp4": 403,
        "clips/a.mp4": 400,  # relative
        "http://example.com/a.mp4": 400,
        "": 422,
    }
    for uri, status in cases.items():
        with pytest.raises(ApiError) as e:
            check_uri(uri, prefixes)
        assert e.value.status == status, uri
    with pytest.raises(ApiError) as e:
        check_uri(str(allowed / "a.mp4"), [])
    assert e.value.status == 403


def test_model_loads_from_directory_runs_and_models_uris(tmp_path: Path):
    """A saved model logged to real MLflow (SQLite store), loaded back by runs:/, models:/<v> and
    models:/<name>@alias from the store named explicitly, while the process-global MLflow URIs
    point at another (empty) store and are left as they were."""
    import mlflow
    import numpy as np
    import torch
    from mlflow import MlflowClient

    from jepa.model import VLJEPA
    from serve.model_loading import load_model, local_model_dir

    model = VLJEPA.from_preset("tiny-text")
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking, registry_uri=tracking)
    exp = client.create_experiment("serve-test", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(saved), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("vljepa-serve-test")
    client.create_model_version(
        "vljepa-serve-test", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("vljepa-serve-test", "champion", "1")

    decoy = f"sqlite:///{tmp_path / 'other.db'}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(decoy)
    mlflow.set_registry_uri(decoy)
    try:
        for uri in (
            str(saved),
            f"runs:/{run.info.run_id}/model",
            "models:/vljepa-serve-test/1",
            "models:/vljepa-serve-test@champion",
        ):
            d = local_model_dir(uri, tracking)
            assert os.path.exists(os.path.join(d, "config.json")), uri
        loaded = load_model(
            "models:/vljepa-serve-test/1", tracking_uri=tracking, keep=("y_encoder",)
        )
        assert mlflow.get_tracking_uri() == decoy and mlflow.get_registry_uri() == decoy
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    assert loaded.x_encoder is None and loaded.predictor is None
    with torch.inference_mode():
        a = loaded.embed_text(["a red circle moves left"]).numpy()
        b = model.embed_text(["a red circle moves left"]).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        local_model_dir(str(tmp_path / "nothing-here"))


def test_cli_rejects_bad_flags(cli, tmp_path: Path):
    r = cli("serve", "--port", "70000")
    assert r.returncode == 2 and "--port" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "applications:\n  - name: vljepa\n    import_path: serve.app:build_app\n    args: {max_request_bytes: -1}\n"
    )
    r = cli("serve", "--config", str(bad))
    assert r.returncode == 2 and "max_request_bytes" in r.stderr
    r = cli("serve", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


# --------------------------------------------------------------------- a model serves itself


def test_app_args_detector_is_the_models_unless_given():
    """`detector` is optional: absent (the packaged config has none) the app serves the model's
    stored detector, else the defaults; a value in the config overrides the model's."""
    from jepa.config import DetectorConfig

    packaged = sc.AppArgs.model_validate(sc.app_entry(sc.load_config()).get("args") or {})
    assert packaged.detector is None
    stored = {"threshold": 0.0123, "min_gap": 1.5, "smoothing": 0.25}
    assert sc.served_detector(packaged.detector, stored) == (stored, "model")
    assert sc.served_detector(None, None) == (DetectorConfig().model_dump(), "default")
    explicit = sc.AppArgs.model_validate({"detector": {"threshold": 0.3}}).detector
    assert isinstance(explicit, DetectorConfig)
    assert sc.served_detector(explicit, stored) == (
        {"threshold": 0.3, "min_gap": 2.0, "smoothing": 0.5},
        "config",
    )
    with pytest.raises(ValidationError, match="threshold"):
        sc.served_detector(None, {"threshold": 0})
    with pytest.raises(ValidationError, match="extra"):
        sc.AppArgs.model_validate({"detector": {"threshold": 0.3, "gap": 1}})


def test_stream_store_configure_keeps_streams_and_switches_the_detector():
    """Configuring the store (every ingress replica does, on first need) keeps each stream's
    state; clips after it are judged with the new settings; `advance(detector=...)` does the same
    for a store restarted from its creation arguments."""
    import numpy as np

    from serve.streams import StreamStore

    store = StreamStore.__ray_actor_class__({"threshold": 0.5, "min_gap": 0.0, "smoothing": 0.0})
    a, b = np.array([1.0, 0, 0, 0]), np.array([1.0, 0.3, 0, 0])  # 1 - cos(a, b) = 0.042
    assert store.advance("s", 0, a, 2.0)["event_ids"] == [0]  # the first clip always decodes
    assert store.advance("s", 1, a, 2.0)["event_ids"] == []
    assert store.advance("s", 2, b, 2.0)["event_ids"] == []  # 0.042 < 0.5
    before = store.events("s")
    state = dict(store.streams["s"]["det"])
    low = {"threshold": 0.01, "min_gap": 0.0, "smoothing": 0.0}
    assert store.configure(low) == low == store.settings()
    assert store.events("s") == before and store.stats()["streams"] == 1
    assert store.streams["s"]["det"].keys() == state.keys()
    assert store.advance("s", 3, b, 2.0)["event_ids"] == [1]  # 0.042 >= 0.01: a decode
    high = {"threshold": 0.9, "min_gap": 0.0, "smoothing": 0.0}
    store.advance("s", 4, a, 2.0, detector=high)
    assert store.settings() == high and store.events("s")["clips"] == 5
    with pytest.raises(ValueError, match="threshold"):
        store.configure({"threshold": 0.0, "min_gap": 0.0, "smoothing": 0.0})
    assert store.settings() == high


def _serve_args(*argv: str):
    import argparse

    from cluster.commands import serve as serve_cmd

    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    return serve_cmd.build_config(p.parse_args(list(argv)))


def test_vljepa_serve_gives_every_replica_one_store(tmp_path: Path, monkeypatch):
    """The store is resolved by `vljepa serve` (flag, else the config's, else
    MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db of ITS folder, absolute) and travels in the
    app's args and in the runtime env of every replica."""
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def store_of(cfg: dict) -> str:
        app = sc.app_entry(cfg)
        env = app["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"]
        assert env == app["args"]["mlflow_tracking_uri"]
        return env

    cfg, uri = _serve_args("--model", "models:/vljepa/1")
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db" == store_of(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store_of(_serve_args()[0]) == "http://127.0.0.1:5999"
    cfg, _ = _serve_args("--tracking-uri", "sqlite:///rel/m.db")
    assert store_of(cfg) == f"sqlite:///{tmp_path}/rel/m.db"
    # a config naming its store keeps it (unless the flag says otherwise); its other env vars
    # and the deployments' own runtime envs stay
    own = sc.load_config()
    app = sc.app_entry(own)
    app["args"]["mlflow_tracking_uri"] = "http://mlflow.example:5000"
    app["runtime_env"] = {"env_vars": {"X": "1"}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(own))
    cfg, _ = _serve_args("--config", str(tmp_path / "own.yaml"))
    assert store_of(cfg) == "http://mlflow.example:5000"
    assert sc.app_entry(cfg)["runtime_env"]["env_vars"]["X"] == "1"
    cfg, _ = _serve_args("--config", str(tmp_path / "own.yaml"), "--tracking-uri", "http://a:1")
    assert store_of(cfg) == "http://a:1"


def test_replica_without_tracking_uri_reads_the_resolved_store(tmp_path: Path, monkeypatch):
    """A replica given no tracking URI (a config deployed with `serve deploy`) resolves it like
    every command: MLFLOW_TRACKING_URI (what `vljepa serve` puts in its env), never MLflow's own
    default, a ./mlflow.db in whatever folder the replica runs in."""
    from mlflow import MlflowClient

    from serve.model_loading import local_model_dir

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text("{}")
    (saved / "model.safetensors").write_bytes(b"")
    store = f"sqlite:///{tmp_path / 'store' / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "store" / "mlruns").mkdir(parents=True)
    client = MlflowClient(store, registry_uri=store)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(saved), "model")
    client.create_registered_model("m")
    client.create_model_version("m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)

    elsewhere = tmp_path / "replica-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("VLJEPA_CACHE", str(tmp_path / "cache"))
    d = local_model_dir("models:/m/1", "")
    assert os.path.exists(os.path.join(d, "config.json"))
    assert list(elsewhere.iterdir()) == []  # no ./mlflow.db, no ./mlruns
    # no env var: the embedded default of the folder it runs in (./mlruns/mlflow.db), as
    # `vljepa train` registered it there; MLflow's own default would open a new ./mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path / "store")
    d = local_model_dir("models:/m/1", "")
    assert os.path.exists(os.path.join(d, "config.json"))
    assert not (tmp_path / "store" / "mlflow.db").exists()


def test_wait_running_does_not_take_the_replaced_deploy_for_the_new_one(app):
    """A redeploy over a running app: until Serve has accepted the new config, the old one's
    RUNNING must not count (`vljepa serve` and the tests pass `replaced`)."""
    current = sc.deployed_at(sc.APP_NAME)
    assert current is not None and sc.deployed_at("no-such-app") is None
    sc.wait_running(sc.APP_NAME, timeout_s=5)  # the running app itself
    with pytest.raises(TimeoutError, match="previous deploy"):
        sc.wait_running(sc.APP_NAME, timeout_s=1.5, replaced=current)
