"""`vljepa demo`: the whole platform end to end on one machine, in one Ray cluster.

synthesize a corpus -> pre-embed it (Ray Data) -> train (Ray Train, FSDP2, 2 workers) -> train the
Y-decoder -> evaluate -> serve (Ray Serve) -> play a synthetic stream into `/v1/streams/{id}/clips`
clip by clip and print the captions selective decoding emitted, with the moment each was decoded
and how many decoder calls it saved.

Every stage calls the same Python entry point its own subcommand uses (no subprocesses), so the
demo exercises exactly the code a user runs stage by stage; only the glue lives here. Each stage
prints a banner with its timing; the components print their own progress bars. Everything lands
under `out` (corpus, features, runs, model, MLflow store) and `demo_summary.json` records what
each stage produced, for people and for tests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines import storage

log = logging.getLogger(__name__)

STAGES = ("synth", "embed", "train", "decoder", "eval", "serve", "stream")


class DemoConfig(BaseModel):
    """The demo's sizes and where things go. The defaults finish in under 15 minutes on 2 cores."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field("./vljepa-demo", description="local folder for every output")
    clips: int = Field(520, ge=20, description="short captioned clips in the corpus")
    streams: int = Field(2, ge=1, description="long event streams (played through Serve)")
    steps: int = Field(150, ge=1, description="training steps")
    decoder_steps: int = Field(300, ge=1, description="Y-decoder training steps")
    workers: int = Field(2, ge=1, description="Ray Train workers")
    batch_size: int = Field(32, ge=2, description="per-worker batch (shrunk to fit a small corpus)")
    preset: str = "tiny"
    seed: int = Field(0, ge=0)
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: SQLite under OUT/mlruns)"
    )
    experiment: str = "vljepa-demo"
    register_name: str = "vljepa-demo"
    address: str | None = Field(None, description="Ray address (default: RAY_ADDRESS or local)")
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    no_serve: bool = Field(False, description="stop after the evaluation")
    serve_seconds: float | None = Field(
        None, ge=0, description="keep serving this long after the stream (None: until Ctrl-C)"
    )
    progress: bool = True

    @field_validator("out")
    @classmethod
    def _local(cls, v: str) -> str:
        if storage.is_s3(v):
            raise ValueError("the demo writes to a local folder; use the stage commands for S3")
        return v

    @property
    def root(self) -> str:
        return os.path.abspath(os.path.expanduser(self.out))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            from pipelines.tracking_store import absolute

            return absolute(self.tracking_uri)
        return "sqlite:///" + self.path("mlruns", "mlflow.db")


@dataclass
class StreamReport:
    stream_id: str
    clips: int
    duration_s: float
    decodes: int
    events: list[dict] = field(default_factory=list)  # time_s, caption, truth
    ground_truth_events: int = 0


@dataclass
class DemoResult:
    out: str
    tracking_uri: str
    timings: dict[str, float] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    decoder: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
    streams: list[StreamReport] = field(default_factory=list)
    decoder_calls: int | None = None
    stream_clips: int = 0

    def save(self) -> str:
        path = os.path.join(self.out, "demo_summary.json")
        storage.write_text(path, json.dumps(asdict(self), indent=2, default=str))
        return path


class Banner:
    """Stage banners with timings: the demo's own progress, between the components' bars."""

    def __init__(self, total: int, write: Callable[[str], None]):
        self.total = total
        self.n = 0
        self.write = write
        self.t0 = time.monotonic()

    @contextlib.contextmanager
    def stage(self, name: str, what: str, timings: dict[str, float]) -> Iterator[None]:
        self.n += 1
        self.write(f"\n=== [{self.n}/{self.total}] {name}: {what}")
        t = time.monotonic()
        yield
        dt = time.monotonic() - t
        timings[name] = round(dt, 1)
        self.write(
            f"=== [{self.n}/{self.total}] {name} done in {dt:.1f} s "
            f"(total {time.monotonic() - self.t0:.1f} s)"
        )


def _say(line: str) -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------------------ stages


def _synth(cfg: DemoConfig) -> dict[str, Any]:
    from pipelines.synth import SynthConfig, generate

    summary = generate(
        SynthConfig(
            out=cfg.path("corpus"),
            clips=cfg.clips,
            streams=cfg.streams,
            seed=cfg.seed,
            overwrite=True,
        ),
        progress=cfg.progress,
    )
    _say(summary.line())
    return asdict(summary)


def _embed(cfg: DemoConfig, tracking_uri: str) -> dict[str, Any]:
    from pipelines.embed import EmbedConfig, run_embed
    from pipelines.embed.run import format_summary, log_to_mlflow

    ecfg = EmbedConfig(
        manifest=cfg.path("corpus", "manifest.jsonl"),
        out=cfg.path("features"),
        preset=cfg.preset,
        overwrite=True,
        address=cfg.address,
        tracking_uri=tracking_uri,
        experiment=cfg.experiment,
        progress=cfg.progress,
    )
    summary = run_embed(ecfg)
    _say(format_summary(summary))
    run_id = log_to_mlflow(ecfg, summary)
    files = storage.list_files(cfg.path("features", "data"), suffix=".parquet")
    return {
        "clips_written": summary["clips_written"],
        "errors": summary["errors"],
        "clips_per_s": summary["clips_per_s"],
        "files": files,
        "mlflow_run_id": run_id,
    }


def _train_batch(cfg: DemoConfig, train_clips: int) -> int:
    """The largest per-worker batch <= cfg.batch_size that leaves >= 2 full steps per epoch."""
    fit = max(2, train_clips // (2 * cfg.workers))
    return max(2, min(cfg.batch_size, fit))


def _train(cfg: DemoConfig, tracking_uri: str, train_clips: int):
    from pipelines.train import TrainConfig, run_training

    batch = _train_batch(cfg, train_clips)
    every = max(1, cfg.steps // 5)
    tcfg = TrainConfig(
        data=cfg.path("features"),
        preset=cfg.preset,
        steps=cfg.steps,
        batch_size=batch,
        workers=cfg.workers,
        warmup_steps=max(1, cfg.steps // 10),
        log_every=max(1, min(10, cfg.steps // 10)),
        val_every=every,
        checkpoint_every=max(cfg.steps // 2, 1),
        storage=cfg.path("runs"),
        tracking_uri=tracking_uri,
        experiment=cfg.experiment,
        register_name=cfg.register_name,
        export_dir=cfg.path("model-trained"),
        address=cfg.address,
        seed=cfg.seed,
    )
    _say(
        f"training {cfg.preset} on {train_clips} clips: {cfg.workers} workers x batch {batch}, "
        f"{cfg.steps} steps"
    )
    result = run_training(tcfg)
    val = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith("val/")}
    _say(
        f"MLflow run {result.run_id}; registered {cfg.register_name} version "
        f"{result.model_version}; checkpoint {result.checkpoint}"
    )
    if val:
        _say("validation: " + ", ".join(f"{k}={v}" for k, v in sorted(val.items())))
    return {
        "run_id": result.run_id,
        "model_version": result.model_version,
        "checkpoint": result.checkpoint,
        "export_dir": result.export_dir,
        "metrics": val,
        "loss": result.metrics.get("train/loss"),
    }


def _train_decoder(cfg: DemoConfig, tracking_uri: str, train: dict) -> dict:
    """`vljepa train-decoder`: captions + paraphrases through the trained Y-encoder -> text."""
    from pipelines.decoder import DecoderConfig, run_decoder_training

    out = run_decoder_training(
        DecoderConfig(
            model=train["export_dir"],
            data=cfg.path("features"),
            steps=cfg.decoder_steps,
            out=cfg.path("model"),
            seed=cfg.seed,
            tracking_uri=tracking_uri,
            experiment=cfg.experiment,
            register_name=cfg.register_name,
        )
    )
    out["model_uri"] = (
        f"models:/{cfg.register_name}/{out['model_version']}"
        if out.get("model_version")
        else out["model_dir"]
    )
    _say(
        f"y-decoder: loss {out['final_loss']:.3f}, exact match {out['exact_match']:.2f} on "
        f"{out['texts']} texts; registered {out['model_uri']} (MLflow run {out['run_id']})"
    )
    return out


def _evaluate(cfg: DemoConfig, tracking_uri: str) -> dict:
    """`vljepa eval`: retrieval, zero-shot classification, captioning, selective decoding."""
    from pipelines.evaluate import EvalConfig, run_eval

    res = run_eval(
        EvalConfig(
            model=cfg.path("model"),
            data=cfg.path("features"),
            corpus=cfg.path("corpus"),
            max_streams=cfg.streams,
            tracking_uri=tracking_uri,
            experiment=cfg.experiment,
        )
    )
    out: dict[str, Any] = {"run_id": res.get("run_id")}
    out["retrieval"] = {k: round(float(v), 4) for k, v in res.get("retrieval", {}).items()}
    if "captioning" in res:
        out["captioning_cider"] = round(float(res["captioning"]["cider"]), 4)
        out["caption_samples"] = res["captioning"]["samples"][:5]
    if "selective" in res:
        out["selective"] = res["selective"]["summary"]
    _say("evaluation (val): " + ", ".join(f"{k}={v}" for k, v in out["retrieval"].items()))
    if "captioning_cider" in out:
        _say(f"captioning CIDEr-D (val): {out['captioning_cider']}")
        for truth, text in out["caption_samples"]:
            _say(f"  {truth!r:40s} -> {text!r}")
    if out.get("selective"):
        from pipelines.selective_eval import format_report

        for line in format_report(res["selective"]).splitlines():
            _say(line)
    # The online detector the Serve app runs is the one the model carries: calibrated on the
    # validation split when it was registered (stored in its config.json); Serve reads it there.
    det = out["detector"] = model_detector(cfg.path("model"))
    if det is None:
        _say("online selective decoding: the model carries no calibrated detector (defaults)")
    else:
        _say(
            f"online selective decoding threshold: {det['threshold']:.4f} cosine distance, "
            f"min gap {det['min_gap']:g} s, smoothing {det['smoothing']:g} (calibrated on the "
            "validation split at registration; stored with the model, served from there)"
        )
    return out


def model_detector(model_dir: str) -> dict[str, float] | None:
    """The online detector a saved model was registered with (its config.json), or None."""
    from jepa.config import VLJEPAConfig
    from jepa.saved import CONFIG_FILE

    raw = json.loads(storage.read_text(os.path.join(model_dir, CONFIG_FILE)))
    det = VLJEPAConfig.from_dict(raw).detector
    return det.model_dump() if det is not None else None


# ----------------------------------------------------------------------------------- serving


def _serve_config(cfg: DemoConfig, model_uri: str, tracking_uri: str) -> dict:
    """The packaged Serve config with the trained model (which carries its calibrated detector)
    and CPU shares that fit next to nothing else on a 2-core machine (one replica of each
    deployment)."""
    from serve import config as sc

    small = lambda cpus: {  # noqa: E731
        "ray_actor_options": {"num_cpus": cpus},
        "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1},
    }
    serve_cfg = sc.apply_overrides(
        sc.load_config(),
        args={"model_uri": model_uri},
        deployments={
            "Ingress": {"ray_actor_options": {"num_cpus": 0.1}, "num_replicas": 1},
            "Encoder": small(0.5),
            "TextEncoder": small(0.2),
            "Decoder": small(0.2),
        },
        host=cfg.host,
        port=cfg.port,
    )
    serve_cfg = sc.with_tracking_store(serve_cfg, tracking_uri)
    # The demo prints what happened; per-request access logs of the replicas would drown it.
    sc.app_entry(serve_cfg)["logging_config"] = {"log_level": "WARNING", "enable_access_log": False}
    return serve_cfg


def _start_serve(cfg: DemoConfig, serve_cfg: dict) -> dict[str, str]:
    from ray import serve

    from serve import config as sc

    running: dict = {}
    with contextlib.suppress(Exception):  # Serve not started yet: nothing runs
        running = serve.status().applications
    if sc.APP_NAME in running:
        raise RuntimeError(
            f"a Serve app named {sc.APP_NAME!r} already runs on this Ray cluster; stop it "
            "first (the demo would replace it)"
        )
    sc.deploy(serve_cfg)
    sc.wait_running(sc.APP_NAME, timeout_s=600)
    urls = sc.urls(serve_cfg)
    import httpx

    deadline = time.monotonic() + 60
    while True:  # the proxy starts answering a moment after the app reports RUNNING
        try:
            if httpx.get(urls["health"], timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Serve reports RUNNING but {urls['health']} does not answer")
        time.sleep(0.5)
    return urls


def stop_serve(serve_cfg: dict) -> None:
    from ray import serve

    from serve import config as sc
    from serve.streams import drop_store, store_name

    with contextlib.suppress(Exception):
        serve.delete(sc.APP_NAME)
    with contextlib.suppress(Exception):
        serve.shutdown()
    with contextlib.suppress(Exception):
        drop_store(
            store_name(sc.APP_NAME, sc.app_entry(serve_cfg).get("args", {}).get("stream_store", ""))
        )


def cut_stream(video: str, fps: float, clip_seconds: float = 2.0) -> list[tuple[float, bytes]]:
    """A stream video cut into consecutive `clip_seconds` mp4 clips, as a camera would send
    them: (start time, mp4 bytes) each. Read at native size by pipelines.clips (one reader),
    re-encoded with PyAV."""
    from pipelines.clips import open_video
    from pipelines.synth.writer import encode_mp4

    per = max(2, round(fps * clip_seconds))
    out = []
    with open_video(video) as v:
        for i in range(v.info.num_frames // per):
            frames = v.read(range(i * per, (i + 1) * per))
            out.append((i * per / fps, encode_mp4(frames, round(fps))))
    return out


def decoder_calls() -> int | None:
    """The Decoder's own count of captions generated (summed over its replicas)."""
    from ray import serve

    from serve import config as sc

    try:
        handle = serve.get_deployment_handle("Decoder", sc.APP_NAME)
        seen: dict[str, int] = {}
        for _ in range(4):  # one replica in the demo; ask a few times to hear from each
            out = handle.calls.remote().result(timeout_s=30)
            seen[out["replica"]] = out["calls"]
        return sum(seen.values())
    except Exception as e:  # the count is a report, not a reason to fail the demo
        log.warning("could not ask the Decoder for its call count: %s", e)
        return None


def _stream(cfg: DemoConfig, urls: dict[str, str]) -> list[StreamReport]:
    import httpx

    corpus = cfg.path("corpus")
    records = [
        json.loads(line)
        for line in storage.read_text(os.path.join(corpus, "streams.jsonl")).splitlines()
        if line.strip()
    ]
    reports = []
    with httpx.Client(base_url=urls["api"].rsplit("/v1", 1)[0], timeout=120) as client:
        for rec in records[: cfg.streams]:
            clips = cut_stream(os.path.join(corpus, rec["video"]), rec["fps"])
            sid = f"demo-{rec['id']}"
            client.delete(f"/v1/streams/{sid}")  # a rerun starts the stream afresh
            _say(
                f"\nstream {rec['id']}: {len(clips)} clips of 2 s, {len(rec['events'])} "
                f"ground-truth events -> POST /v1/streams/{sid}/clips"
            )
            events = []
            for seq, (start, data) in enumerate(clips):
                r = client.post(
                    f"/v1/streams/{sid}/clips",
                    json={
                        "clip_b64": base64.b64encode(data).decode(),
                        "seq": seq,
                        "time_s": start + 1.0,  # the clip's midpoint in the stream
                    },
                )
                r.raise_for_status()
                for ev in r.json()["events"]:
                    t = float(ev["time_s"])
                    truth = next(  # none in a pause (no event: nothing to caption)
                        (e["caption"] for e in rec["events"] if e["start"] <= t < e["end"]),
                        "a pause, no event",
                    )
                    events.append({"time_s": t, "caption": ev.get("caption"), "truth": truth})
                    _say(
                        f"  t={t:6.1f}s  clip {seq:3d}  caption: {ev.get('caption')!r:40s}"
                        f"  (truth: {truth})"
                    )
            final = client.get(f"/v1/streams/{sid}/events").json()
            decodes = len(final["events"])
            reports.append(
                StreamReport(
                    stream_id=sid,
                    clips=len(clips),
                    duration_s=float(final["duration_s"]),
                    decodes=decodes,
                    events=events,
                    ground_truth_events=len(rec["events"]),
                )
            )
            _say(
                f"stream {rec['id']}: {decodes} captions for {len(clips)} clips "
                f"({len(clips) - decodes} decoder calls saved)"
            )
    return reports


# -------------------------------------------------------------------------------- the demo


def mlflow_ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {tracking_uri}"
    return f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)"


def run_demo(cfg: DemoConfig, stop: Callable[[], bool] | None = None) -> DemoResult:
    """Run every stage; returns (and writes to OUT/demo_summary.json) what each produced."""
    from pipelines.connect import connect

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    storage.makedirs(cfg.root)
    tracking_uri = cfg.resolved_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # Ray workers and replicas inherit it
    res = DemoResult(out=cfg.root, tracking_uri=tracking_uri)
    stages = 1 + len(STAGES) - (2 if cfg.no_serve else 0)  # + connecting to Ray
    banner = Banner(stages, _say)
    _say(
        f"vljepa demo: {cfg.clips} clips, {cfg.streams} streams, {cfg.steps} training steps, "
        f"{cfg.workers} workers -> {cfg.root}"
    )
    with banner.stage("setup", "one Ray cluster for every stage, the MLflow store", res.timings):
        connect(cfg.address, runtime_env=None)
        # The experiment first, so its artifacts live beside the store (not in the cwd).
        from pipelines.train.tracking import setup as setup_tracking

        setup_tracking(tracking_uri, cfg.experiment)
        _say(f"MLflow: {tracking_uri}, experiment {cfg.experiment!r}")
    with banner.stage("synth", "synthesize a video-caption corpus", res.timings):
        res.corpus = _synth(cfg)
    with banner.stage("embed", "pre-embed clips with Ray Data -> Parquet", res.timings):
        res.embed = _embed(cfg, tracking_uri)
    with banner.stage("train", "train predictor + Y-encoder on Ray Train (FSDP2)", res.timings):
        res.train = _train(cfg, tracking_uri, int(res.corpus.get("train", 0)) or cfg.clips)
    with banner.stage("decoder", "train the Y-decoder (embedding -> caption)", res.timings):
        res.decoder = _train_decoder(cfg, tracking_uri, res.train)
    with banner.stage("eval", "retrieval, zero-shot classification, captions", res.timings):
        res.evaluation = _evaluate(cfg, tracking_uri)
    res.save()
    if cfg.no_serve:
        _finish(res, None)
        return res
    serve_cfg = _serve_config(cfg, res.decoder["model_uri"], tracking_uri)
    try:
        with banner.stage("serve", "start the Ray Serve app with the trained model", res.timings):
            urls = _start_serve(cfg, serve_cfg)
            res.serve = {"urls": urls, "model_uri": res.decoder["model_uri"]}
            _say(f"Serve app running: {urls['api']}  (docs: {urls['docs']})")
        with banner.stage("stream", "play synthetic streams through /v1/streams", res.timings):
            res.streams = _stream(cfg, urls)
            res.stream_clips = sum(s.clips for s in res.streams)
            res.decoder_calls = decoder_calls()
        res.save()
        _finish(res, urls)
        _keep_serving(cfg, stop)
    finally:
        stop_serve(serve_cfg)
    return res


def _finish(res: DemoResult, urls: dict[str, str] | None) -> None:
    total = sum(res.timings.values())
    _say(f"\n=== vljepa demo: done in {total:.1f} s")
    _say("stage timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in res.timings.items()))
    _say(f"features: {res.out}/features/data ({res.embed.get('clips_written')} clips)")
    _say(
        f"model: {res.decoder.get('model_uri')} (run {res.train.get('run_id')}, "
        f"local copy {res.decoder.get('model_dir')})"
    )
    if res.streams:
        decodes = sum(s.decodes for s in res.streams)
        calls = res.decoder_calls if res.decoder_calls is not None else decodes
        _say(
            f"selective decoding: {calls} decoder calls for {res.stream_clips} clips "
            f"({res.stream_clips - calls} calls saved, "
            f"{100 * (1 - calls / max(1, res.stream_clips)):.0f}% fewer than captioning every clip)"
        )
    _say(mlflow_ui_hint(res.tracking_uri))
    if urls:
        _say(f"Serve: {urls['api']}  docs: {urls['docs']}")
    _say(f"summary: {res.save()}")


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _keep_serving(cfg: DemoConfig, stop: Callable[[], bool] | None) -> None:
    if cfg.serve_seconds == 0:
        return
    # SIGTERM (a supervisor, a test fixture) stops serving as cleanly as Ctrl-C does.
    prev = signal.signal(signal.SIGTERM, _interrupt)
    deadline = None if cfg.serve_seconds is None else time.monotonic() + cfg.serve_seconds
    try:
        if cfg.serve_seconds is None:
            _say("serving until Ctrl-C ...")
        else:
            _say(f"serving for {cfg.serve_seconds:.0f} s (or until Ctrl-C) ...")
        while deadline is None or time.monotonic() < deadline:
            if stop is not None and stop():
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        _say("stopping Serve ...")
    finally:
        signal.signal(signal.SIGTERM, prev)
    sys.stdout.flush()
