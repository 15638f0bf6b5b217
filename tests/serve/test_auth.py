"""Auth fails closed (issue 14, acceptance 4), with real processes and real HTTP.

- `auth_token_env` naming an unset variable: `vljepa serve` exits 2 with one line, before any
  Ray starts.
- Naming an empty one: the build-time check refuses it with the same kind of line, and an
  Ingress replica that finds its variable empty refuses to start, so the app (deployed as a
  RayService would be, with no CLI in between) never serves open.
- With a token, /docs, /redoc and /openapi.json need it (401 without, 200 with); the health
  checks do not. `public_docs: true` opens the docs, not the API.

The side apps here run only their Ingress (the model deployments sit at zero replicas: nothing
here needs a model), so each costs one replica start.
"""

from __future__ import annotations

import argparse

import httpx
import pytest
import yaml

from serve import config as sc
from tests.serve import _app

UNSET = "VLJEPA_TEST_UNSET_TOKEN"
EMPTY = "VLJEPA_TEST_EMPTY_TOKEN"
ZERO = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}


def _ingress_only(env: dict[str, str]) -> dict:
    """Side-app deployments: one Ingress with `env`, the models at zero replicas."""
    return {
        "Ingress": {
            "num_replicas": 1,
            "ray_actor_options": {**_app.SMALL, "runtime_env": {"env_vars": env}},
        },
        **{
            d: {"autoscaling_config": ZERO, "ray_actor_options": _app.SMALL}
            for d in ("Encoder", "TextEncoder", "Decoder")
        },
    }


def test_serve_refuses_an_unset_token_variable(cli, tmp_path, monkeypatch):
    monkeypatch.delenv(UNSET, raising=False)
    cfg = sc.apply_overrides(sc.load_config(), args={"auth_token_env": UNSET})
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # no RAY_ADDRESS: `vljepa serve` would start its own Ray, whose replicas inherit this env
    out = cli("serve", "--config", str(path), env={"RAY_ADDRESS": ""}, timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert UNSET in lines[0] and "not set" in lines[0], lines
    assert "deploying" not in out.stdout  # refused before anything started


def test_build_time_check_refuses_an_empty_token_variable(monkeypatch):
    from cluster.cli import UsageError
    from cluster.commands import serve as serve_cmd

    cfg = sc.apply_overrides(sc.load_config(), args={"auth_token_env": EMPTY})
    with pytest.raises(ValueError, match=f"{EMPTY}.*empty") as e:
        sc.check_auth(cfg, {EMPTY: ""})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="empty"):
        sc.check_auth(cfg, {EMPTY: "  \n"})
    # the config's own env for the Ingress counts, whatever the replicas inherit
    given = sc.apply_overrides(
        cfg,
        deployments={"Ingress": {"ray_actor_options": {"runtime_env": {"env_vars": {EMPTY: ""}}}}},
    )
    with pytest.raises(ValueError, match="empty"):
        sc.check_auth(given, None)
    sc.check_auth(cfg, {EMPTY: "t0k"})
    sc.check_auth(cfg, None)  # a cluster's own env: its replicas check it at start
    sc.check_auth(sc.load_config(), {})  # no variable named: auth off by choice

    # `vljepa serve` runs the check while building its config (local Ray: this env)
    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    path = _write(cfg)
    monkeypatch.setenv(EMPTY, "")
    monkeypatch.setenv("RAY_ADDRESS", "")
    with pytest.raises(UsageError, match=f"{EMPTY}.*empty"):
        serve_cmd.build_config(p.parse_args(["--config", path]))
    monkeypatch.setenv(EMPTY, "t0k")
    serve_cmd.build_config(p.parse_args(["--config", path]))


def _write(cfg: dict) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    return f.name


def test_ingress_with_an_empty_token_variable_does_not_start(ray_session):
    """Deployed straight to Serve (as a RayService does): the Ingress refuses to start, the
    app fails to deploy, and the reason is the one line."""
    from ray import serve
    from ray.serve.context import _get_global_client

    name = "authempty"
    serve_was_running = _get_global_client(raise_if_no_controller_running=False) is not None
    try:
        with pytest.raises(RuntimeError) as e:
            _app.deploy_side(name, {"auth_token_env": EMPTY}, _ingress_only({EMPTY: ""}))
        # the reason, in one line, where `vljepa serve` and the tests report a failed deploy
        assert (
            f"Ingress: serve.security.AuthMisconfigured: auth_token_env names '{EMPTY}', but that variable is empty"
            in str(e.value)
        )
        assert "\n" not in str(e.value)
        # nothing answers for the app: no open API, not even briefly
        port = _get_global_client().get_serve_details()["http_options"]["port"]
        r = httpx.get(f"http://127.0.0.1:{port}/{name}/openapi.json", timeout=10)
        assert r.status_code in (404, 503) and "paths" not in r.text, r.text
    finally:
        serve.delete(name)
        if not serve_was_running:
            serve.shutdown()


def test_docs_need_the_token(app):
    """The package app has a token and no public_docs: the docs pages are API surface too."""
    base = app["base"]
    with httpx.Client(base_url=base, timeout=30) as anon:
        for path in ("/docs", "/openapi.json", "/redoc"):
            r = anon.get(path)
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert r.json()["error"] == "unauthorized"
            r = anon.get(path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
    with httpx.Client(base_url=base, headers=app["headers"], timeout=30) as c:
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert c.get(path).status_code == 200, path
        assert "/v1/caption" in c.get("/openapi.json").json()["paths"]


def test_public_docs_open_the_docs_not_the_api(ray_session):
    name = "authdocs"
    side = _app.deploy_side(
        name,
        {"auth_token_env": "VLJEPA_SIDE_TOKEN", "public_docs": True},
        _ingress_only({"VLJEPA_SIDE_TOKEN": "side-token"}),
    )
    try:
        with httpx.Client(base_url=side.base, timeout=30) as anon:
            for path in ("/docs", "/openapi.json", "/redoc"):
                assert anon.get(path).status_code == 200, path
            assert "/v1/embed" in anon.get("/openapi.json").json()["paths"]
            r = anon.get("/v1/streams/s-1/events")
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            r = anon.post("/v1/embed", json={"clip_b64": "AAAA"})
            assert r.status_code == 401
    finally:
        _app.remove_side(side)
