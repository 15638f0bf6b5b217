"""One Serve app for the whole tests/serve package (deploying costs more than all the tests):
the HTTP tests run against it with fixed replica counts, the scaling tests then switch it to
short-delay autoscaling in place. It is deleted, with Serve and the stream store, after the
package's last test so later tests get the CPUs back."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve import _app
from tests.services import free_port


@pytest.fixture(scope="package")
def clips(synth_corpus: Path, tmp_path_factory) -> dict:
    """Real mp4 bytes: corpus clips, a one-frame clip, and an allowed directory holding one."""
    from pipelines.synth.writer import encode_mp4

    videos = sorted((synth_corpus / "videos").glob("*.mp4"))
    manifest = [json.loads(x) for x in (synth_corpus / "manifest.jsonl").read_text().splitlines()]
    allowed = tmp_path_factory.mktemp("allowed-clips")
    (allowed / "a.mp4").write_bytes(videos[0].read_bytes())
    secret = tmp_path_factory.mktemp("secret")
    (secret / "s.mp4").write_bytes(videos[0].read_bytes())
    frame = np.zeros((1, 64, 64, 3), np.uint8)
    return {
        "a": videos[0].read_bytes(),
        "b": videos[1].read_bytes(),
        "manifest": manifest,
        "one_frame": encode_mp4(frame, 8),
        "allowed_dir": allowed,
        "secret_file": secret / "s.mp4",
    }


@pytest.fixture(scope="package")
def model_dir(tmp_path_factory) -> str:
    """A saved tiny model (random weights from fixed seeds, a Y-decoder attached), served via
    the same `from_pretrained` path a trained model takes. It declares itself trained with
    queries (so the endpoints' query path is served) and carries a stored detector that the app's
    explicit `detector` overrides (test_query_honesty.py checks both)."""
    from jepa.config import DetectorConfig
    from jepa.model import VLJEPA

    d = tmp_path_factory.mktemp("model")
    model = VLJEPA.from_preset("tiny-text")
    model.attach_decoder()
    model.config.trained_with_queries = True
    model.config.detector = DetectorConfig(**_app.STORED_DETECTOR)
    model.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="package")
def app(ray_session, s3, clips, model_dir):
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
    ).put_object(Bucket=s3.bucket, Key="serve-clips/a.mp4", Body=clips["a"])
    port = free_port()
    args = {
        "model_uri": model_dir,
        "allowed_uri_prefixes": [str(clips["allowed_dir"]), s3.uri("serve-clips")],
        "max_request_bytes": _app.MAX_BYTES,
        "auth_token_env": "VLJEPA_TEST_TOKEN",
        "detector": _app.DETECTOR,
        "decode_retry_budget_s": 60,
    }
    cfg = _app.deploy(port, args=args, deployments=_app.BASE_DEPLOYMENTS)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {_app.TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
        _wait_ready(c)
        yield {
            "client": c,
            "base": base,
            "s3": s3,
            "port": port,
            "args": args,
            "headers": headers,
            "model_dir": model_dir,
        }
    _app.teardown(cfg)


def _wait_ready(c: httpx.Client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if c.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the app never became ready")


@contextlib.contextmanager
def serving(name: str, args: dict, tracking_uri: str | None = None, ready_timeout_s: float = 60):
    """A side app (`_app.deploy_side`) for the block: an httpx client on its route once /readyz
    answers, the app (and its stream store) removed after."""
    side = _app.deploy_side(name, args, tracking_uri=tracking_uri)
    try:
        with httpx.Client(base_url=side.base, timeout=120) as c:
            _wait_ready(c, timeout_s=ready_timeout_s)
            yield c
    finally:
        _app.remove_side(side)
