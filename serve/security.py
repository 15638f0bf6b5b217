"""What the ingress refuses before any model runs: oversized bodies, clip URIs outside the
configured prefixes (or escaping them with `..`), and requests without the bearer token (an
`auth_token_env` that names no token refuses to start the app rather than serve it open).

Every refusal is an `ApiError` (status, error, detail) that the ingress turns into a 4xx JSON
body; nothing here may raise anything else on bad input.
"""

from __future__ import annotations

import hmac
import os
import posixpath
from collections.abc import Mapping
from urllib.parse import unquote

from pipelines import storage


class ApiError(Exception):
    """A client error with an HTTP status, a short reason and a detail, rendered as JSON."""

    def __init__(self, status: int, error: str, detail: str | list | dict = ""):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


# ---------------------------------------------------------------- request size


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 on a declared Content-Length over the limit, and an ApiError
    raised while reading if a body without one (chunked) grows past it, so an endpoint never
    buffers more than `limit` bytes."""

    def __init__(self, app, limit_fn):
        self.app = app
        self.limit_fn = limit_fn  # read per request: the ingress sets the limit at start-up

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = int(self.limit_fn())
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await _send_json(send, 400, "bad Content-Length", v.decode("latin-1"))
                if n > limit:
                    return await _send_json(
                        send, 413, "request too large", f"{n} bytes > limit {limit}"
                    )
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, "request too large", f"body over limit {limit} bytes")
            return message

        return await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, error: str, detail: str) -> None:
    import json

    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- URIs


def check_uri(uri: str, allowed_prefixes: list[str]) -> str:
    """The URI to read if it lies under an allowed prefix; ApiError otherwise.

    `..` segments are refused outright (also percent-encoded), local paths are resolved through
    symlinks and must stay inside the resolved prefix, and s3:// prefixes match whole segments
    (s3://bucket/clips/ does not admit s3://bucket/clips-private/).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ApiError(422, "invalid uri", "empty URI")
    decoded = unquote(uri)
    if "\x00" in decoded:
        raise ApiError(400, "invalid uri", "NUL byte in URI")
    if ".." in decoded.replace("\\", "/").split("/"):
        raise ApiError(400, "invalid uri", "'..' path segments are not allowed")
    if not allowed_prefixes:
        raise ApiError(403, "uri not allowed", "this server accepts no clip URIs")
    if storage.is_s3(uri):
        norm = "s3://" + posixpath.normpath(uri[len("s3://") :])
        for p in allowed_prefixes:
            if p.startswith("s3://") and norm.startswith(p) and len(norm) > len(p):
                return norm
        raise ApiError(403, "uri not allowed", "URI is outside the allowed prefixes")
    if "://" in uri and not uri.startswith("file://"):
        raise ApiError(400, "invalid uri", "only s3:// and local paths are supported")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    if not os.path.isabs(path):
        raise ApiError(400, "invalid uri", "local paths must be absolute")
    real = os.path.realpath(path)
    for p in allowed_prefixes:
        if p.startswith("s3://"):
            continue
        root = os.path.realpath(p).rstrip("/") + "/"
        if real.startswith(root):
            return real
    raise ApiError(403, "uri not allowed", "URI is outside the allowed prefixes")


def read_uri(uri: str, allowed_prefixes: list[str], max_bytes: int) -> bytes:
    """Bytes of an allowed URI, refusing files over `max_bytes` before reading them."""
    target = check_uri(uri, allowed_prefixes)
    try:
        fs, path = storage.filesystem(target)
        info = fs.get_file_info(path)
        import pyarrow.fs as pafs

        if info.type != pafs.FileType.File:
            raise ApiError(404, "clip not found", uri)
        if info.size is not None and info.size > max_bytes:
            raise ApiError(413, "clip too large", f"{info.size} bytes > limit {max_bytes}")
        with fs.open_input_stream(path) as f:
            data = f.read(max_bytes + 1)
    except ApiError:
        raise
    except (OSError, ValueError) as e:
        raise ApiError(404, "clip not readable", f"{uri}: {type(e).__name__}") from e
    if len(data) > max_bytes:
        raise ApiError(413, "clip too large", f"over limit {max_bytes} bytes")
    return data


# ---------------------------------------------------------------- auth


class AuthMisconfigured(ValueError):
    """`auth_token_env` names a variable that holds no token: the app must not start (one line)."""


def expected_token(env_name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from the variable `env_name` names (in `environ`, default this
    process's environment); None only when no variable is named (auth off by choice).

    Fails closed: a named variable that is unset or empty (a typo, a Secret not mounted) raises
    AuthMisconfigured instead of silently serving without authentication. Surrounding
    whitespace is dropped (a Secret made from a file often ends in a newline).
    """
    if not env_name:
        return None
    env = os.environ if environ is None else environ
    if env_name not in env:
        raise AuthMisconfigured(
            f"auth_token_env names {env_name!r}, but that variable is not set: set it to the "
            "bearer token (or set auth_token_env to '' to serve without authentication)"
        )
    token = env[env_name].strip()
    if not token:
        raise AuthMisconfigured(
            f"auth_token_env names {env_name!r}, but that variable is empty: set it to the "
            "bearer token (or set auth_token_env to '' to serve without authentication)"
        )
    return token


def check_bearer(header: str | None, token: str | None) -> None:
    """Constant-time check of `Authorization: Bearer <token>`; no-op when auth is off."""
    if token is None:
        return
    if not header or not header.lower().startswith("bearer "):
        raise ApiError(401, "unauthorized", "missing bearer token")
    if not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "wrong bearer token")
