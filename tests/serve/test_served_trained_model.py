"""Acceptance 4: a TRAINED model (not the demo's) served from the Model Registry serves itself.

The session's acceptance run (`trained_model`) with its trained Y-decoder (`decoded_model`, a
new registered version) is served as `models:/vljepa-test/N` from the session's MLflow server,
given the way `vljepa serve --tracking-uri` gives it (app args + every replica's runtime env), with
NO detector in the app's args. The detector served must be the one stored in that version's
config.json at registration (calibrated on the validation split), and synthetic live streams
sent clip by clip (2 s clips cut like the demo's, with seq and time_s) must get >= 80% of their
ground-truth events captioned with at most half as many Decoder calls as clips.
"""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest

from tests.serve import _app
from tests.serve.conftest import _wait_ready
from tests.trained_models import REGISTER_NAME

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

APP = "vljepa-trained"
STREAMS = 5  # of the corpus's 10 (~35 clips, 6-10 events each)


@pytest.fixture(scope="module")
def served(ray_session, decoded_model, trained_model, tmp_path_factory):  # noqa: ARG001
    from pipelines import mlflow_uri
    from serve.model_loading import find_model_dir

    uri = f"models:/{REGISTER_NAME}/{decoded_model['model_version']}"
    local = mlflow_uri.download(
        uri, trained_model.tracking_uri, str(tmp_path_factory.mktemp("registered"))
    )
    with open(os.path.join(find_model_dir(local), "config.json")) as f:
        stored = json.load(f).get("detector")
    side = _app.deploy_side(APP, {"model_uri": uri}, tracking_uri=trained_model.tracking_uri)
    try:
        with httpx.Client(base_url=side.base, timeout=120) as c:
            _wait_ready(c, timeout_s=120)
            yield {"client": c, "uri": uri, "stored": stored}
    finally:
        _app.remove_side(side)


def test_serves_the_detector_stored_at_registration(served):
    stored = served["stored"]
    assert stored, f"{served['uri']} carries no calibrated detector in its config.json"
    ready = served["client"].get("/readyz").json()
    assert ready["detector_source"] == "model", ready
    assert ready["detector"] == stored, (ready["detector"], stored)
    assert ready["model"]["detector"] == stored


def test_served_stream_captions_events_with_few_decoder_calls(served, embedded_corpus):
    from cluster.demo import cut_stream

    c = served["client"]
    corpus = embedded_corpus.corpus
    records = [
        json.loads(line) for line in (corpus / "streams.jsonl").read_text().splitlines() if line
    ][:STREAMS]
    before = _app.decoder_calls(APP)
    n_clips = n_events = covered = 0
    for rec in records:
        clips = cut_stream(str(corpus / rec["video"]), rec["fps"])
        sid = f"trained-{rec['id']}"
        for seq, (start, data) in enumerate(clips):
            r = c.post(
                f"/v1/streams/{sid}/clips",
                json={"clip_b64": base64.b64encode(data).decode(), "seq": seq, "time_s": start + 1},
            )
            assert r.status_code == 200, r.text
        n_clips += len(clips)
        events = c.get(f"/v1/streams/{sid}/events").json()["events"]
        assert events and all(e["status"] == "decoded" and e["caption"] for e in events), events
        times = [e["time_s"] for e in events]
        span = 2.0 * len(clips)
        for gt in rec["events"]:
            if gt["start"] >= span:
                continue
            n_events += 1
            covered += any(gt["start"] <= t < gt["end"] for t in times)
        c.delete(f"/v1/streams/{sid}")
    calls = _app.decoder_calls(APP) - before
    print(
        f"served {served['uri']}: {n_clips} clips, {calls} decoder calls, "
        f"{covered}/{n_events} events captioned"
    )
    assert covered >= 0.8 * n_events, (covered, n_events, calls, n_clips)
    assert 2 * calls <= n_clips, (calls, n_clips)
