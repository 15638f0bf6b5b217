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
