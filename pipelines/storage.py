"""One way to open any URI (local path, file://, s3://) for pyarrow and for plain bytes.

S3 settings come from the usual AWS variables (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION),
so the same code talks to AWS, to an in-cluster object store, or to a loopback test server.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from functools import lru_cache
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@lru_cache(maxsize=8)
def _s3fs(
    endpoint: str | None, key: str | None, secret: str | None, token: str | None, region: str
):
    kwargs: dict = {"region": region}
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        kwargs["force_virtual_addressing"] = False
    # The SDK's default ~3 s request timeout made a busy S3 server drop multipart uploads that
    # pyarrow only logged; checkpoints and shards are large, so wait for the server instead.
    return pafs.S3FileSystem(
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5),
        connect_timeout=10,
        request_timeout=60,
        **kwargs,
    )


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a URI; local paths are made absolute."""
    uri = str(uri)
    if is_s3(uri):
        env = os.environ
        fs = _s3fs(
            s3_endpoint(),
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
            env.get("AWS_SESSION_TOKEN"),
            _region(),
        )
        return fs, uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    """Join path parts onto a URI without losing its scheme."""
    base = str(base)
    if is_s3(base):
        return "s3://" + posixpath.join(base[len("s3://") :].rstrip("/"), *parts)
    return os.path.join(base, *parts)


def resolve(base: str, ref: str) -> str:
    """A reference from a manifest: absolute URIs stay, relative ones are taken from `base`."""
    if is_s3(ref) or ref.startswith("file://") or os.path.isabs(ref):
        return ref
    return join(base, ref)


def parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri):
        return "s3://" + posixpath.dirname(uri[len("s3://") :])
    return os.path.dirname(os.path.abspath(uri))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object so that a reader never sees it half-written.

    Locally: write a hidden temporary file, then rename (atomic on POSIX). On S3 a PUT is
    already all-or-nothing.
    """
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(
            os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
        )
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)
    else:
        fs.create_dir(path, recursive=True)


def list_files(uri: str, suffix: str = "", recursive: bool = False) -> list[str]:
    """Full URIs of the files directly under (or, recursive, anywhere below) `uri`, sorted."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    prefix = "s3://" if is_s3(uri) else ""
    out = [
        prefix + i.path
        for i in fs.get_file_info(selector)
        if i.type == pafs.FileType.File
        and i.path.endswith(suffix)
        and not posixpath.basename(i.path).startswith(".")
    ]
    return sorted(out)


def file_sizes(uri: str) -> dict[str, int]:
    """{path relative to `uri`: size} of every file below it (hidden ones too: DCP's .metadata);
    empty when nothing is there."""
    fs, root = filesystem(uri)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    prefix = root.rstrip("/") + "/"
    return {
        info.path[len(prefix) :]: int(info.size)
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.path.startswith(prefix)
    }


def delete(uri: str, missing_ok: bool = True) -> None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        if not missing_ok:
            raise FileNotFoundError(uri)
        return
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


def s3_client():
    """A boto3 S3 client configured from the same AWS variables."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint(), region_name=_region())


def check_writable(uri: str) -> None:
    """Fail early (before any work) if `uri` cannot be written; raises PermissionError/OSError."""
    probe = join(uri, f".write-probe-{uuid.uuid4().hex}")
    write_bytes(probe, b"")
    delete(probe)


class OutputUnusable(ValueError):
    """An output location that cannot be written: the message says why, in one line."""


def check_output(uri: str) -> None:
    """Fail before any work, and without creating anything, if `uri` cannot hold outputs: a
    local path under a regular file or in a folder this process cannot write to, an S3 bucket
    that does not exist, or S3 credentials the server refuses. Raises OutputUnusable."""
    if is_s3(uri):
        _check_s3_output(uri)
        return
    fs, path = filesystem(uri)
    probe_dir = path
    while not os.path.exists(probe_dir):
        up = os.path.dirname(probe_dir)
        if up == probe_dir:
            break
        probe_dir = up
    if not os.path.isdir(probe_dir):
        raise OutputUnusable(f"{uri}: {probe_dir} is a file, not a folder")
    import tempfile

    try:  # create and remove a folder where the first missing part would go
        os.rmdir(tempfile.mkdtemp(prefix=".vljepa-probe-", dir=probe_dir))
    except OSError as e:
        raise OutputUnusable(f"{uri}: cannot write under {probe_dir} ({e.strerror or e})") from e


def _check_s3_output(uri: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    client = s3_client()
    try:
        client.head_bucket(Bucket=bucket)
        key = posixpath.join(prefix.strip("/"), f".write-probe-{uuid.uuid4().hex}").lstrip("/")
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            raise OutputUnusable(f"{uri}: bucket {bucket!r} does not exist") from e
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise OutputUnusable(
                f"{uri}: the S3 server refused these credentials ({code or status}); check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from e
        raise OutputUnusable(f"{uri}: S3 error {code or status}: {e}") from e
    except BotoCoreError as e:
        raise OutputUnusable(f"{uri}: cannot reach S3 ({e})") from e
