"""The Serve deployments: Encoder, TextEncoder, Decoder, and the FastAPI Ingress composing them.

Each model deployment loads its weights once in `__init__` and keeps only the submodules it
uses; the Encoder and Decoder batch requests dynamically (`serve.batching.Batcher`: a lone
request never waits; sizes set through `user_config` so a redeploy can retune them without
restarting replicas). They scale apart:
the Encoder keeps a warm minimum, the Decoder may sit at zero because selective decoding calls
it rarely. The Ingress holds no state of its own; live streams live in the StreamStore actor.

(No `from __future__ import annotations` here: FastAPI must see real classes, not strings, in
the signatures of the ingress methods that Serve re-wraps.)
"""

import asyncio
import base64
import binascii
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.clips import Sampling
from serve import api
from serve.batching import Batcher
from serve.clips import ClipError, decode_clip, predict
from serve.config import AppArgs, served_detector
from serve.security import ApiError, BodyLimitMiddleware, check_bearer, expected_token, read_uri
from serve.streams import STREAM_ID, get_or_create_store, store_name

log = logging.getLogger("ray.serve")

_BATCH_DEFAULTS = {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}


def _torch_threads() -> int:
    """One torch thread per CPU Ray gave this replica (at least 1): replicas sharing a node must
    not each spin up a thread per core and fight over them."""
    import torch

    try:
        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:
        cpus = 1.0
    n = max(1, round(cpus))
    torch.set_num_threads(n)
    return n


def _replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return "local"


# ---------------------------------------------------------------------------- model deployments


@serve.deployment(
    name="Encoder",
    max_ongoing_requests=16,
    ray_actor_options={"num_cpus": 1},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4},
    user_config=_BATCH_DEFAULTS,
)
class Encoder:
    """Clip bytes (+ optional query) -> predicted embedding: decord decode, X-encoder, predictor."""

    def __init__(
        self,
        model_uri: str = "",
        preset: str = "tiny",
        tracking_uri: str = "",
        min_clip_frames: int = 2,
    ):
        from serve.metrics import ModelMetrics
        from serve.model_loading import load_model

        threads = _torch_threads()
        self.model = load_model(model_uri, preset, tracking_uri, keep=("x_encoder", "predictor"))
        # Clips are sampled as the model's X-encoder config says: the sampling its features
        # were pre-embedded with (pipelines.clips), so live and stored tokens agree.
        self.sampling = Sampling.of(self.model.config.x_encoder)
        self.num_frames = self.sampling.frames
        self.image_size = self.sampling.size
        self.min_clip_frames = min_clip_frames
        self.metrics = ModelMetrics("encoder")
        # Decoding runs beside the model (one decode thread per CPU, like torch's): the next
        # batch's clips are decoded while the current batch runs. See serve/batching.py.
        self.decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="vljepa-decode")
        self.batcher = Batcher(self._predict, **_BATCH_DEFAULTS, name="encoder")
        self.batching = dict(_BATCH_DEFAULTS)

    def reconfigure(self, config: dict) -> None:
        cfg = {**_BATCH_DEFAULTS, **(config or {})}
        self.batcher.configure(int(cfg["max_batch_size"]), float(cfg["batch_wait_timeout_s"]))
        self.batching = cfg

    def timings(self, reset: bool = False) -> dict[str, Any]:
        """Where this replica's recent requests spent their time, p50/p99 ms per stage:
        `decode`, `queue` (waiting for the model), `model` (their batch's run), `total` (all of
        it), and batch sizes. `reset`: start a new window (the benchmark does, per level)."""
        out = {"replica": _replica_tag(), **self.batcher.timings.summary()}
        if reset:
            self.batcher.timings.reset()
        return out

    def info(self) -> dict[str, Any]:
        """What the served model says about itself, from its saved config: how clips are
        sampled, whether its predictor was trained with queries, and the online detector it was
        registered with (None: not calibrated). The Ingress asks once, on first need."""
        cfg = self.model.config
        x = cfg.x_encoder
        return {
            "batching": self.batching,
            "num_frames": int(x.num_frames),
            "image_size": int(x.image_size),
            "sampling": {
                "fps": x.fps,
                "pad": bool(x.pad),
                "frames": int(x.num_frames),
                "size": int(x.image_size),
            },
            "shared_dim": int(cfg.shared_dim),
            "trained_with_queries": bool(cfg.trained_with_queries),
            "detector": cfg.detector.model_dump() if cfg.detector is not None else None,
            "replica": _replica_tag(),
        }

    async def embed(self, data: bytes, query: str | None = None) -> dict[str, Any]:
        """{"embedding", "duration_s", "frames"} or {"error": {...}} for a bad clip (never raises
        on bad input: the ingress maps the error to a 4xx)."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            with self.batcher.preparing():  # a batch closing now waits for this clip
                clip = await loop.run_in_executor(
                    self.decode_pool, decode_clip, data, self.sampling, self.min_clip_frames
                )
        except ClipError as e:
            return {"error": e.as_dict()}
        timings = self.batcher.timings
        timings.add("decode", (time.perf_counter() - t0) * 1000)
        emb = await self.batcher.submit((clip.frames, query or ""))
        timings.add("total", (time.perf_counter() - t0) * 1000)
        return {"embedding": emb, "duration_s": clip.duration_s, "frames": clip.source_frames}

    async def tokens(self, data: bytes) -> dict[str, Any]:
        """The X-encoder's tokens for a clip, float32 (num_tokens, hidden), or {"error": {...}}:
        what pre-embedding stores for the same clip (up to the stored dtype)."""
        try:
            clip = await asyncio.to_thread(decode_clip, data, self.sampling, self.min_clip_frames)
        except ClipError as e:
            return {"error": e.as_dict()}
        x = await asyncio.to_thread(self.model.x_encoder, clip.frames[None])
        return {"tokens": x[0].float().cpu().numpy()}

    def _predict(self, items: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = predict(self.model, items)
        self.metrics.batch(len(items), (time.perf_counter() - t0) * 1000)
        return out


@serve.deployment(
    name="TextEncoder",
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
)
class TextEncoder:
    """Labels and queries -> Y-encoder embeddings (L2-normalised), with a bounded label cache:
    classification sends the same candidate sets again and again."""

    CACHE = 4096

    def __init__(self, model_uri: str = "", preset: str = "tiny", tracking_uri: str = ""):
        from serve.metrics import ModelMetrics
        from serve.model_loading import load_model

        _torch_threads()
        self.model = load_model(model_uri, preset, tracking_uri, keep=("y_encoder",))
        self.cache: dict[str, np.ndarray] = {}
        self.metrics = ModelMetrics("text_encoder")

    async def encode(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            vecs = await asyncio.to_thread(self._encode, missing)
            if len(self.cache) + len(missing) > self.CACHE:
                self.cache.clear()
            self.cache.update(zip(missing, vecs, strict=True))
        return np.stack([self.cache[t] for t in texts])

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            emb = self.model.embed_text(texts).float().cpu().numpy()
        self.metrics.batch(len(texts), (time.perf_counter() - t0) * 1000)
        return list(emb)

    def ready(self) -> bool:
        return True


@serve.deployment(
    name="Decoder",
    max_ongoing_requests=16,
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 4,
    },
    user_config=_BATCH_DEFAULTS,
)
class Decoder:
    """Embedding -> caption (Y-decoder). Counts every caption it generates (Prometheus counter
    `vljepa_decoder_calls_total` and `calls()`), which is how selective decoding's saving is
    measured from the Decoder's own side."""

    def __init__(
        self,
        model_uri: str = "",
        preset: str = "tiny",
        tracking_uri: str = "",
        max_new_tokens: int = 24,
    ):
        from ray.serve.metrics import Counter

        from serve.metrics import ModelMetrics
        from serve.model_loading import ensure_decoder, load_model

        _torch_threads()
        model = load_model(model_uri, preset, tracking_uri, keep=("y_decoder",))
        self.decoder = ensure_decoder(model)
        self.max_new_tokens = max_new_tokens
        self.n_calls = 0
        self.n_batches = 0
        self.counter = Counter(
            "vljepa_decoder_calls_total", description="Captions generated by the Decoder"
        )
        self.metrics = ModelMetrics("decoder")
        # Nothing to prepare here (an embedding arrives ready): a caption runs at once when the
        # Decoder is idle, and those arriving meanwhile go together next (serve/batching.py).
        self.batcher = Batcher(self._generate, **_BATCH_DEFAULTS, name="decoder")

    def reconfigure(self, config: dict) -> None:
        cfg = {**_BATCH_DEFAULTS, **(config or {})}
        self.batcher.configure(int(cfg["max_batch_size"]), float(cfg["batch_wait_timeout_s"]))

    async def caption(self, embedding: np.ndarray) -> str:
        return await self.batcher.submit(np.asarray(embedding, dtype=np.float32))

    def timings(self, reset: bool = False) -> dict[str, Any]:
        """`queue` and `model` p50/p99 ms of recent captions and batch sizes (as the Encoder's)."""
        out = {"replica": _replica_tag(), **self.batcher.timings.summary()}
        if reset:
            self.batcher.timings.reset()
        return out

    def _generate(self, embeddings: list[np.ndarray]) -> list[str]:
        t0 = time.perf_counter()
        out = self.decoder.generate(np.stack(embeddings), max_new_tokens=self.max_new_tokens)
        self.n_calls += len(embeddings)
        self.n_batches += 1
        self.counter.inc(len(embeddings))
        self.metrics.batch(len(embeddings), (time.perf_counter() - t0) * 1000)
        return out

    def calls(self) -> dict[str, Any]:
        return {"replica": _replica_tag(), "calls": self.n_calls, "batches": self.n_batches}


# ---------------------------------------------------------------------------- ingress

app = FastAPI(
    title="vljepa",
    version="0.1.0",
    description=(
        "VL-JEPA serving: predicted embeddings, captions, zero-shot classification and live "
        "streams with selective decoding (the Decoder runs only when the meaning changes)."
    ),
)


class _Settings:
    """Per-process settings the module-level FastAPI hooks read (set by Ingress.__init__)."""

    max_request_bytes = 32 * 1024 * 1024
    metrics = None
    replica = ""
    token: str | None = None  # None until an Ingress sets it: auth off only by configuration
    public_docs = False


app.add_middleware(BodyLimitMiddleware, limit_fn=lambda: _Settings.max_request_bytes)
# The pages FastAPI serves by itself (no route of ours, so no `_auth` call): guarded below.
_DOCS_PATHS = frozenset(
    p
    for p in (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    if p
)


def _error(status: int, error: str, detail: Any = "") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail})


@app.exception_handler(ApiError)
async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
    return _error(e.status, e.error, e.detail)


@app.exception_handler(RequestValidationError)
async def _validation_error(_req: Request, e: RequestValidationError) -> JSONResponse:
    return _error(422, "invalid request", json.loads(json.dumps(e.errors(), default=str)))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_req: Request, e: StarletteHTTPException) -> JSONResponse:
    return _error(e.status_code, str(e.detail).lower(), "")


@app.exception_handler(RayActorError)
async def _dependency_down(_req: Request, e: RayActorError) -> JSONResponse:
    # e.g. the stream store restarting: the client may retry, nothing is wrong with its input
    log.warning("a dependency actor is unavailable: %s", type(e).__name__)
    return _error(503, "temporarily unavailable", type(e).__name__)


@app.exception_handler(Exception)
async def _internal_error(_req: Request, e: Exception) -> JSONResponse:
    log.exception("unhandled error in the ingress")
    return _error(500, "internal error", type(e).__name__)


@app.middleware("http")
async def _guard_docs(request: Request, call_next):
    """/docs, /redoc and /openapi.json need the bearer token like the API, unless the config
    says `public_docs: true`. (Paths are matched below Serve's route prefix: `root_path`.)"""
    path = request.scope.get("path", "")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    if path in _DOCS_PATHS and not _Settings.public_docs:
        try:
            check_bearer(request.headers.get("authorization"), _Settings.token)
        except ApiError as e:
            return _error(e.status, e.error, e.detail)
    return await call_next(request)


@app.middleware("http")
async def _observe(request: Request, call_next):
    t0 = time.perf_counter()
    response = await call_next(request)
    response.headers["x-vljepa-replica"] = _Settings.replica
    if _Settings.metrics is not None:
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        _Settings.metrics.observe(path, response.status_code, (time.perf_counter() - t0) * 1000)
    return response


_RETRYABLE = (
    RayActorError,
    WorkerCrashedError,
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)


def _validation_detail(e: ValidationError) -> list:
    return json.loads(e.json(include_url=False))


# Helpers the ingress methods call must be defined before the class: @serve.ingress captures
# the module's names when it wraps the class.
def _public_event(ev: dict) -> dict:
    """A stream event as clients see it (no embedding, no claim time)."""
    return {k: v for k, v in ev.items() if k not in ("embedding", "claimed_at")}


def _check_stream_id(stream_id: str) -> None:
    if not STREAM_ID.match(stream_id):
        raise ApiError(400, "invalid stream id", "1-128 of [A-Za-z0-9_.:-], starting alphanumeric")


@serve.deployment(
    name="Ingress",
    num_replicas=1,
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(app)
class Ingress:
    def __init__(self, encoder, text_encoder, decoder, args: dict):
        from serve.metrics import IngressMetrics

        self.args = AppArgs.model_validate(args)
        self.encoder = encoder
        self.text_encoder = text_encoder
        self.decoder = decoder
        # Fails closed: a named token variable that is unset or empty stops this replica (and
        # so the app) from starting, with one line saying so; a RayService cannot start open.
        self.token = expected_token(self.args.auth_token_env)
        _Settings.token = self.token
        _Settings.public_docs = self.args.public_docs
        _Settings.max_request_bytes = self.args.max_request_bytes
        self.metrics = _Settings.metrics = IngressMetrics()
        _Settings.replica = _replica_tag()
        self.app_name = serve.get_replica_context().app_name
        # What the model says about itself (detector, trained_with_queries, sampling) comes from
        # the Encoder on first need (`_model`): a replica constructor must not wait on another
        # deployment. The stream store is created/configured then, before any stream clip.
        self.store = None
        self._store_name = store_name(self.app_name, self.args.stream_store)
        self._served: dict[str, Any] | None = None
        self._served_lock = asyncio.Lock()
        # Stream decodes still running after their request answered `pending`, by stream id
        # (kept referenced until done; a stream request waits a little for its own stream's).
        self._decoding: dict[str, set[asyncio.Task]] = {}

    # ------------------------------------------------------------------ helpers

    async def _model(self) -> dict[str, Any]:
        """The served model's `Encoder.info()` plus the detector this app serves ("detector",
        "detector_source": config | model | default); asked once per replica and cached. Before
        it returns, the app's stream store exists and runs that detector (configuring keeps
        existing streams; concurrent first requests wait on one lock, so one ask, one configure)."""
        if self._served is not None:
            return self._served
        async with self._served_lock:
            if self._served is None:
                info = await self._retrying("encoder", lambda: self.encoder.info.remote())
                detector, source = served_detector(self.args.detector, info.get("detector"))
                self.store = await self._open_store(detector)
                self._served = {**info, "detector": detector, "detector_source": source}
                log.info("serving detector %s (from the %s)", detector, source)
        return self._served

    async def _open_store(self, detector: dict[str, Any]):
        """The app's stream store, configured with the served detector and writing to this
        app's `stream_store_path`. A store left running by a deployment with another path is
        replaced (what the new path holds is what the app serves from then on)."""
        path = self.args.stream_store_path
        name = self._store_name
        store = await asyncio.to_thread(get_or_create_store, name, detector, path)
        if (await store.location.remote())["path"] != path:
            log.warning("stream store %s moves to %r: starting it afresh there", name, path)
            ray.kill(store, no_restart=True)
            store = await asyncio.to_thread(get_or_create_store, name, detector, path)
        await store.configure.remote(detector)
        return store

    async def _store_call(self, method: str, *args, idempotent: bool = True, **kwargs):
        """A stream-store call that outlives the store: if the actor died (killed, its node
        lost) the call is retried, within `decode_retry_budget_s`, on the store as Ray restarts
        it or, gone for good, as recreated here; either restores streams from storage. Not
        `idempotent` (a clip without `seq`): 503 instead, as a retry might apply it twice."""
        deadline = time.monotonic() + self.args.decode_retry_budget_s
        delay = 0.1
        while True:
            try:
                return await getattr(self.store, method).remote(*args, **kwargs)
            except RayActorError as e:
                if not idempotent or time.monotonic() + delay > deadline:
                    raise ApiError(503, "stream store unavailable", type(e).__name__) from e
                log.warning("stream store call %s failed (%s); retrying", method, type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                detector = (await self._model())["detector"]
                self.store = await asyncio.to_thread(
                    get_or_create_store, self._store_name, detector, self.args.stream_store_path
                )

    def _model_name(self) -> str:
        return self.args.model_uri or f"preset {self.args.model_preset} (untrained)"

    async def _check_query(self, query: str | None, field: str = "query") -> None:
        """422 for a query the model cannot use: until a stage-2 run trains the predictor with
        queries, a query only mixes untrained token embeddings into the answer. `field`: where
        the request carried it (/v1/vqa's `question` cannot be left out: such a model cannot
        answer questions at all)."""
        if query and not (await self._model()).get("trained_with_queries"):
            why = (
                f"model {self._model_name()} was not trained with queries "
                "(trained_with_queries is false in its config)"
            )
            if field == "query":
                why += "; send the request without `query`"
            else:
                why += (
                    f": a stage-1 model never saw a {field}, so it cannot answer one; "
                    "serve a stage-2 (SFT) model"
                )
            raise ApiError(422, "query not supported", why)

    def _auth(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization"), self.token)

    async def _read(
        self, request: Request, model: type[BaseModel], query_field: str = "query"
    ) -> tuple[Any, bytes]:
        """The validated request and the clip bytes, from JSON, multipart or a URI.
        `query_field`: the request's field that is the predictor's query (length-checked and
        refused by a model not trained with queries before the clip is read)."""
        self._auth(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        data: bytes | None = None
        if ctype == "multipart/form-data":
            lists = max(self.args.max_labels, self.args.max_candidates)
            try:
                form = await request.form(max_files=1, max_fields=lists + 8)
            except ApiError:
                raise
            except Exception as e:
                msg = str(getattr(e, "detail", "") or e)
                if "too many fields" in msg.lower():
                    raise ApiError(
                        422,
                        "too many fields",
                        f"a multipart body takes at most {lists + 8} fields (labels at most "
                        f"{self.args.max_labels}, candidates at most {self.args.max_candidates})",
                    ) from e
                raise ApiError(400, "bad multipart body", msg[:200]) from e
            fields: dict[str, Any] = {}
            for k, v in form.multi_items():
                if k == "clip":
                    if not hasattr(v, "read"):
                        raise ApiError(422, "invalid request", "clip must be a file upload")
                    data = await v.read()
                elif k in ("labels", "candidates"):  # repeated fields make the list
                    fields.setdefault(k, []).append(v)
                else:
                    fields[k] = v
            if data is not None:
                fields["clip_b64"] = ""  # the bytes came as a file; marks the source as given
            try:
                req = model.model_validate(fields, strict=False)
            except ValidationError as e:
                raise ApiError(422, "invalid request", _validation_detail(e)) from e
        elif ctype in ("application/json", ""):
            body = await request.body()
            try:
                obj = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, "bad JSON", str(e)[:200]) from e
            if not isinstance(obj, dict):
                raise ApiError(422, "invalid request", "the body must be a JSON object")
            try:
                req = model.model_validate(obj)
            except ValidationError as e:
                raise ApiError(422, "invalid request", _validation_detail(e)) from e
            if req.clip_b64 is not None:
                try:
                    data = base64.b64decode(req.clip_b64, validate=True)
                except (binascii.Error, ValueError) as e:
                    raise ApiError(400, "bad base64", str(e)[:200]) from e
        else:
            raise ApiError(415, "unsupported content type", ctype)
        query = getattr(req, query_field, None)
        if query is not None and len(query) > self.args.max_query_chars:
            raise ApiError(
                422, f"{query_field} too long", f"over {self.args.max_query_chars} characters"
            )
        await self._check_query(query, query_field)
        if getattr(req, "uri", None):
            data = await asyncio.to_thread(
                read_uri, req.uri, self.args.allowed_uri_prefixes, self.args.max_request_bytes
            )
        if not data:
            raise ApiError(400, "empty clip", "the clip has no bytes")
        return req, data

    async def _retrying(self, what: str, make_call, bounded: bool = False):
        """Await a handle call, retrying replica failures (a dead or restarting replica, back
        pressure) with backoff for at most `decode_retry_budget_s`; then 503. `bounded`: the
        wait for an answer counts against the budget too: a deployment at zero replicas holds
        the request until one has started, and one that never starts must not hold it forever."""
        budget = self.args.decode_retry_budget_s
        deadline = time.monotonic() + budget
        delay = 0.1
        while True:
            try:
                call = make_call()
                if not bounded:
                    return await call
                fut = asyncio.ensure_future(call)
                done, _ = await asyncio.wait([fut], timeout=max(deadline - time.monotonic(), 0))
                if not done:
                    call.cancel()  # leaves the queue: not counted as demand any more
                    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
                    raise ApiError(
                        503, f"{what} unavailable", f"no replica answered within {budget:g}s"
                    )
                return done.pop().result()
            except _RETRYABLE as e:
                if time.monotonic() + delay > deadline:
                    raise ApiError(503, f"{what} unavailable", type(e).__name__) from e
                self.metrics.decode_retries.inc()
                log.warning("%s call failed (%s); retrying in %.1fs", what, type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _embed(self, data: bytes, query: str | None) -> dict[str, Any]:
        out = await self._retrying("encoder", lambda: self.encoder.embed.remote(data, query))
        if "error" in out:
            err = out["error"]
            raise ApiError(err["status"], err["error"], err["detail"])
        return out

    async def _caption(self, embedding: np.ndarray) -> str:
        return await self._retrying(
            "decoder", lambda: self.decoder.caption.remote(embedding), bounded=True
        )

    # ------------------------------------------------------------------ routes

    @app.get("/healthz", tags=["ops"])
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": api.ErrorResponse}})
    async def readyz(self):
        """Ready when the Encoder, TextEncoder and stream store answer (the Decoder may be at
        zero replicas and start on demand); reports the model's info and the detector served."""

        async def check():
            served = await self._model()
            info, _, _ = await asyncio.gather(
                self.encoder.info.remote(),
                self.text_encoder.ready.remote(),
                self._store_call("ping"),
            )
            return served, info

        try:
            served, info = await asyncio.wait_for(check(), timeout=10)
        except Exception as e:
            return _error(503, "not ready", type(e).__name__)
        return {
            "status": "ready",
            "model": info,
            "detector": served["detector"],
            "detector_source": served["detector_source"],
        }

    @app.post(
        "/v1/embed",
        response_model=api.EmbedResponse,
        responses=api.ERRORS,
        openapi_extra=api.clip_body_openapi(api.EmbedRequest, {"query": {"type": "string"}}),
    )
    async def embed(self, request: Request):
        req, data = await self._read(request, api.EmbedRequest)
        out = await self._embed(data, req.query)
        emb = np.asarray(out["embedding"], dtype=np.float32)
        return api.EmbedResponse(
            embedding=emb.tolist(),
            dim=int(emb.shape[0]),
            query=req.query,
            frames=out["frames"],
            duration_s=out["duration_s"],
        )

    @app.post(
        "/v1/caption",
        response_model=api.CaptionResponse,
        responses=api.ERRORS,
        openapi_extra=api.clip_body_openapi(api.CaptionRequest, {"query": {"type": "string"}}),
    )
    async def caption(self, request: Request):
        req, data = await self._read(request, api.CaptionRequest)
        out = await self._embed(data, req.query)
        text = await self._caption(out["embedding"])
        return api.CaptionResponse(caption=text, duration_s=out["duration_s"])

    @app.post(
        "/v1/classify",
        response_model=api.ClassifyResponse,
        responses=api.ERRORS,
        openapi_extra=api.clip_body_openapi(
            api.ClassifyRequest,
            {"labels": {"type": "array", "items": {"type": "string"}}, "query": {"type": "string"}},
        ),
    )
    async def classify(self, request: Request):
        req, data = await self._read(request, api.ClassifyRequest)
        labels = [s.strip() for s in req.labels]
        if len(labels) > self.args.max_labels:
            raise ApiError(422, "too many labels", f"{len(labels)} > {self.args.max_labels}")
        if any(not s or len(s) > self.args.max_query_chars for s in labels):
            raise ApiError(422, "invalid label", "labels must be non-empty and not too long")
        _, scores, order = await self._ranked(data, req.query, labels)
        order = order[: req.top_k or len(labels)]
        return api.ClassifyResponse(
            labels=[api.LabelScore(label=labels[i], score=float(scores[i])) for i in order]
        )

    @app.post(
        "/v1/vqa",
        response_model=api.VQAResponse,
        responses=api.ERRORS,
        openapi_extra=api.clip_body_openapi(
            api.VQARequest,
            {
                "question": {"type": "string"},
                "candidates": {"type": "array", "items": {"type": "string"}},
            },
        ),
    )
    async def vqa(self, request: Request):
        """Discriminative visual question answering. The question is the predictor's query, so
        a model not trained with queries (stage 1) answers 422 `query not supported`.

        With `candidates` (multipart: repeated `candidates` fields) the Encoder's prediction
        for (clip, question) is compared with each candidate's TextEncoder embedding, as
        /v1/classify does with labels: `answer` is the nearest, `scores` all of them by cosine,
        best first. Without, the Decoder writes the answer from the prediction (`decoded`).
        Candidates are stripped; an empty one, more than `max_candidates`, one over
        `max_query_chars` or duplicates (after stripping: rejected, not merged, so every
        candidate sent has exactly one score) are each a 422."""
        req, data = await self._read(request, api.VQARequest, query_field="question")
        question = req.question
        if req.candidates is None:
            out = await self._embed(data, question)
            text = await self._caption(out["embedding"])
            return api.VQAResponse(
                answer=text,
                scores=[],
                decoded=True,
                question=question,
                duration_s=out["duration_s"],
            )
        candidates = self._check_candidates(req.candidates)
        out, scores, order = await self._ranked(data, question, candidates)
        return api.VQAResponse(
            answer=candidates[int(order[0])],
            scores=[
                api.CandidateScore(candidate=candidates[i], score=float(scores[i])) for i in order
            ],
            decoded=False,
            question=question,
            duration_s=out["duration_s"],
        )

    async def _ranked(self, data: bytes, query: str | None, texts: list[str]):
        """(the clip's prediction, each text's cosine to it, the texts' order best first): the
        clip embedded with `query` while the TextEncoder embeds the texts (classify, vqa)."""
        out, text_emb = await asyncio.gather(
            self._embed(data, query),
            self._retrying("text encoder", lambda: self.text_encoder.encode.remote(texts)),
        )
        scores = np.asarray(text_emb, dtype=np.float32) @ np.asarray(out["embedding"], np.float32)
        return out, scores, np.argsort(-scores, kind="stable")

    def _check_candidates(self, given: list[str]) -> list[str]:
        """/v1/vqa's candidates, stripped, or a 422 naming what is wrong."""
        limit = self.args.max_candidates
        if len(given) > limit:
            raise ApiError(
                422, "too many candidates", f"{len(given)} candidates; max_candidates is {limit}"
            )
        candidates = [s.strip() for s in given]
        if any(not s for s in candidates):
            raise ApiError(422, "invalid candidate", "candidates must not be empty or whitespace")
        if any(len(s) > self.args.max_query_chars for s in candidates):
            raise ApiError(
                422, "invalid candidate", f"a candidate is over {self.args.max_query_chars} chars"
            )
        dups = sorted({s for s in candidates if candidates.count(s) > 1})
        if dups:
            raise ApiError(422, "duplicate candidates", dups[:10])
        return candidates

    @app.post(
        "/v1/streams/{stream_id}/clips",
        response_model=api.StreamClipResponse,
        responses=api.ERRORS,
        openapi_extra=api.clip_body_openapi(
            api.StreamClipRequest,
            {"seq": {"type": "integer"}, "time_s": {"type": "number"}, "query": {"type": "string"}},
        ),
    )
    async def append_clip(self, stream_id: str, request: Request):
        """Append the next clip of a live stream; the response carries the captions selective
        decoding emitted for it. A caption not decoded within `stream_decode_wait_s` (the
        Decoder starting from zero replicas, or failing past its retry budget) is returned as
        `pending` and filled in the background or by a later request (no 5xx for stream
        appends on the Decoder's account)."""
        _check_stream_id(stream_id)
        req, data = await self._read(request, api.StreamClipRequest)
        served = await self._model()  # the store runs the served detector from here on
        out = await self._embed(data, req.query)
        res = await self._store_call(
            "advance",
            stream_id,
            req.seq,
            out["embedding"],
            float(out["duration_s"]),
            req.time_s,
            detector=served["detector"],
            idempotent=req.seq is not None,
        )
        if "error" in res:
            raise ApiError(res["status"], res["error"], res["detail"])
        self.metrics.stream_clips.inc()
        if res["replayed"]:
            events = res["events"]
        else:
            older = await self._store_call("claim_pending", stream_id)
            events = await self._decode_events(stream_id, res["new"] + older)
        return api.StreamClipResponse(
            stream_id=stream_id,
            clip_index=res["clip_index"],
            time_s=res["time_s"],
            replayed=res["replayed"],
            events=[api.StreamEvent(**e) for e in events],
        )

    async def _decode_events(self, stream_id: str, events: list[dict]) -> list[dict]:
        """Decode claimed events, waiting at most `stream_decode_wait_s`: one not decoded by
        then is answered `pending` while its decode goes on and stores the caption as soon as
        the Decoder answers."""
        tasks = [self._spawn_decode(stream_id, ev) for ev in events]
        if tasks:
            await asyncio.wait(tasks, timeout=self.args.stream_decode_wait_s)
        return [
            t.result() if t.done() else _public_event(ev)
            for t, ev in zip(tasks, events, strict=True)
        ]

    def _spawn_decode(self, stream_id: str, ev: dict) -> asyncio.Task:
        task = asyncio.create_task(self._decode_one(stream_id, ev))
        running = self._decoding.setdefault(stream_id, set())
        running.add(task)

        def finished(t: asyncio.Task) -> None:
            running.discard(t)
            if not running and self._decoding.get(stream_id) is running:
                del self._decoding[stream_id]

        task.add_done_callback(finished)
        return task

    async def _decode_one(self, stream_id: str, ev: dict) -> dict:
        """One event's caption, stored in the stream; on failure its claim is released (the
        next request on the stream retries it) and the event comes back pending. Never raises:
        it may finish long after the request that started it answered."""
        self.metrics.stream_decodes.inc()
        public = _public_event(ev)
        try:
            try:
                text = await self._caption(ev["embedding"])
            except ApiError:
                await self._store_call("release", stream_id, ev["event_id"])
                return public
            done = await self._store_call("set_caption", stream_id, ev["event_id"], text)
            return done or {**public, "caption": text, "status": "decoded"}
        except Exception as e:
            log.warning("stream %s: event %s not decoded: %r", stream_id, ev["event_id"], e)
            return public

    @app.get(
        "/v1/streams/{stream_id}/events",
        response_model=api.StreamEventsResponse,
        responses=api.ERRORS,
    )
    async def stream_events(self, stream_id: str, request: Request):
        """Every event so far. Pending captions are decoded first (those whose claim lapsed),
        and decodes of this stream still running here are awaited, both for at most
        `stream_decode_wait_s`."""
        self._auth(request)
        _check_stream_id(stream_id)
        await self._model()
        for ev in await self._store_call("claim_pending", stream_id):
            self._spawn_decode(stream_id, ev)
        running = self._decoding.get(stream_id)
        if running:
            await asyncio.wait(set(running), timeout=self.args.stream_decode_wait_s)
        res = await self._store_call("events", stream_id)
        if res is None:
            raise ApiError(404, "unknown stream", stream_id)
        return api.StreamEventsResponse(**res)

    @app.delete("/v1/streams/{stream_id}", response_model=api.DeleteResponse, responses=api.ERRORS)
    async def delete_stream(self, stream_id: str, request: Request):
        self._auth(request)
        _check_stream_id(stream_id)
        await self._model()
        if not await self._store_call("delete", stream_id):
            raise ApiError(404, "unknown stream", stream_id)
        return api.DeleteResponse(stream_id=stream_id, deleted=True)
