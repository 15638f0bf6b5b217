"""Acceptance: one clip sampler. The X-tokens `vljepa embed` stores for a clip and the ones the
Serve Encoder computes for the same clip agree to the stored dtype's rounding, and `POST
/v1/embed` over real HTTP predicts what the model predicts from the stored tokens, for spread
and for fps sampling, on a synthetic 64x64 clip (start/end as `vljepa synth` writes them) and on
176x144 and 1280x720 H.264 clips with motion (the last one shrunk by FFmpeg on decode).

Each sampling's model is saved from that embed config's own model config, so its X-encoder
config (sampling included) is the features' one, and is served by its own Serve application
(`_app.deploy_side`: next to the package's app if that is up, which is left as it is).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.pipelines.test_clips import moving_clip
from tests.serve import _app

# Two samplings -> two model configs: spread (the tiny preset's 16 frames) and 4 fps x 8 frames.
SAMPLINGS = {"spread": {}, "fps4": {"frames": 8, "fps": 4.0}}
# name -> (width, height, frames, fps) of the clips made here (the synth clip is 64 px, 16 @ 8)
SOURCES = {"cif": (176, 144, 45, 15), "hd": (1280, 720, 30, 12)}
DEPLOYMENTS = {
    "Ingress": {"num_replicas": 1, "ray_actor_options": _app.SMALL},
    "Encoder": {"autoscaling_config": _app.ONE, "ray_actor_options": _app.SMALL},
    "TextEncoder": {"autoscaling_config": _app.ONE, "ray_actor_options": _app.SMALL},
    # captions are not asked for here: no Decoder replica
    "Decoder": {
        "autoscaling_config": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1},
        "ray_actor_options": _app.SMALL,
    },
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """A manifest of three whole-file clips (start 0, end = duration) and their bytes."""
    from pipelines.synth import SynthConfig, generate

    d = tmp_path_factory.mktemp("parity")
    generate(SynthConfig(out=str(d / "synth"), clips=1, streams=0, size=64, workers=1, seed=3))
    rec = json.loads((d / "synth" / "manifest.jsonl").read_text().splitlines()[0])
    assert (rec["start"], rec["end"]) == (0.0, 2.0)  # what synth writes for a 16-frame clip
    rec["video"] = str(d / "synth" / rec["video"])
    records = [rec]
    for name, (w, h, n, fps) in SOURCES.items():
        path = d / f"{name}.mp4"
        path.write_bytes(moving_clip(w, h, n, fps))
        records.append(
            {
                "id": name,
                "video": str(path),
                "caption": f"a yellow box crosses a {w}x{h} gradient",
                "start": 0.0,
                "end": n / fps,
                "label": "box",
                "split": "val",
            }
        )
    manifest = d / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {
        "dir": d,
        "manifest": manifest,
        "bytes": {r["id"]: Path(r["video"]).read_bytes() for r in records},
        "frames": {r["id"]: round((r["end"] - r["start"]) * _fps(r)) for r in records},
    }


def _fps(rec: dict) -> float:
    return SOURCES[rec["id"]][3] if rec["id"] in SOURCES else 8.0


@pytest.fixture(scope="module")
def embedded(sources, ray_session) -> dict:  # noqa: ARG001 - embeds on the session cluster
    """Per sampling: the stored tokens (by clip id), the features' metadata and a saved model
    built from the same embed config."""
    import pyarrow.parquet as pq

    from jepa.model import VLJEPA
    from pipelines.embed import EmbedConfig, run_embed

    out = {}
    for name, extra in SAMPLINGS.items():
        cfg = EmbedConfig(
            manifest=str(sources["manifest"]),
            out=str(sources["dir"] / f"features-{name}"),
            preset="tiny-text",
            concurrency=(1, 1),
            progress=False,
            **extra,
        )
        summary = run_embed(cfg)
        table = pq.read_table(sources["dir"] / f"features-{name}" / "data")
        assert table.num_rows == len(sources["bytes"]), summary
        tokens = table.column("x_tokens").combine_chunks().to_numpy_ndarray()
        model_dir = sources["dir"] / f"model-{name}"
        VLJEPA.from_config(cfg.model()).save_pretrained(model_dir)
        out[name] = {
            "tokens": dict(zip(table.column("clip_id").to_pylist(), tokens, strict=True)),
            "meta": {k.decode(): v.decode() for k, v in table.schema.metadata.items()},
            "model_dir": str(model_dir),
            "sampling": cfg.sampling(),
        }
    return out


@pytest.fixture(scope="module")
def serving(embedded, ray_session) -> dict:  # noqa: ARG001
    """`app(name)`: a Serve application serving that sampling's model, deployed on first use
    next to whatever Serve runs (the package's app, if up, is left as it is)."""
    sides: dict[str, _app.SideApp] = {}

    def app(name: str) -> _app.SideApp:
        if name not in sides:
            args = {"model_uri": embedded[name]["model_dir"]}
            sides[name] = _app.deploy_side(f"parity-{name}", args, deployments=DEPLOYMENTS)
        return sides[name]

    client = httpx.Client(timeout=120)
    yield {"app": app, "client": client}
    client.close()
    # the app that started Serve (if one did) goes last: removing it stops Serve
    for side in sorted(sides.values(), key=lambda s: s.started_serve):
        _app.remove_side(side)


def _encoder_tokens(app_name: str, data: bytes) -> np.ndarray:
    from ray import serve

    out = serve.get_deployment_handle("Encoder", app_name).tokens.remote(data).result(timeout_s=120)
    assert "error" not in out, out
    return out["tokens"]


@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_served_tokens_and_embeddings_match_the_pre_embedded_ones(name, sources, embedded, serving):
    import torch

    from jepa.model import VLJEPA
    from pipelines.clips import Sampling

    feats = embedded[name]
    model = VLJEPA.from_pretrained(feats["model_dir"])
    # The sampling travels with the features and with the saved model: one and the same.
    stored_x = json.loads(feats["meta"]["vljepa.x_encoder"])
    assert stored_x == model.config.x_encoder.model_dump(mode="json")
    assert Sampling.of(model.config.x_encoder) == feats["sampling"]
    want_fps = "" if feats["sampling"].fps is None else f"{feats['sampling'].fps:g}"
    assert (feats["meta"]["vljepa.frames"], feats["meta"]["vljepa.fps"]) == (
        str(feats["sampling"].frames),
        want_fps,
    )

    side = serving["app"](name)
    for clip_id, data in sources["bytes"].items():
        stored = feats["tokens"][clip_id]
        assert stored.dtype == np.float16
        live = _encoder_tokens(side.name, data)
        assert live.shape == stored.shape and live.dtype == np.float32, (clip_id, live.shape)
        # equal up to float16 storage: at most one float16 step apart, element by element
        live16 = live.astype(np.float16)
        diff = np.abs(live16.astype(np.float32) - stored.astype(np.float32))
        step = np.spacing(np.maximum(np.abs(live16), np.abs(stored))).astype(np.float32)
        worst = float((diff / step).max())
        assert worst <= 1.0, f"{name}/{clip_id}: tokens differ by {worst:.1f} float16 steps"
        assert diff.max() <= 2e-3 * np.abs(stored).max(), (name, clip_id, diff.max())

        r = serving["client"].post(
            f"{side.base}/v1/embed",
            json={"clip_b64": base64.b64encode(data).decode()},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["frames"] == sources["frames"][clip_id]
        served = np.asarray(body["embedding"], np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(stored.astype(np.float32))[None]
            local = model.predict_queries(x)[0].numpy()  # no query, as the request
        cos = float(served @ local / (np.linalg.norm(served) * np.linalg.norm(local)))
        assert cos >= 0.999, f"{name}/{clip_id}: cosine {cos:.5f}"


def test_bad_clips_map_to_http_statuses(sources):
    """The adapter's table: reasons from the shared sampler -> the API's 4xx (no Ray needed)."""
    from pipelines.clips import Sampling
    from serve.clips import ClipError, decode_clip

    good = sources["bytes"]["cif"]
    s = Sampling(16, 64)
    clip = decode_clip(good, s)
    assert (clip.source_frames, clip.fps) == (45, 15.0) and clip.duration_s == pytest.approx(3.0)
    assert clip.frames.shape[0] == 16 and min(clip.frames.shape[1:3]) <= 128
    one_frame = moving_clip(64, 64, 1, 8)
    cases = [
        (b"", s, 400, "empty clip"),
        (b"not a video at all" * 30, s, 415, "not a video"),
        (good[: len(good) // 2], s, 415, "not a video"),
        (one_frame, s, 422, "clip too short"),
        # padding would make a still clip of it, but the server's minimum comes first
        (one_frame, Sampling(16, 64, pad=True), 422, "clip too short"),
        (moving_clip(64, 64, 6, 8), Sampling(8, 64, fps=4.0), 422, "clip too short"),
    ]
    for data, sampling, status, error in cases:
        with pytest.raises(ClipError) as e:
            decode_clip(data, sampling, min_frames=2)
        assert (e.value.status, e.value.error) == (status, error), e.value
