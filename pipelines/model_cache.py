"""Where a model named by a URI lands on this machine: downloaded once, reused after.

Every stage that loads a model by URI (`train --init`, `eval`, `train-decoder`, a Serve replica)
used to download it into a fresh temp folder that nothing removed: ~160 MB per load with the
tiny preset, gigabytes over a day of runs, and the same download again at every replica start.
What a registered version or a run's artifact holds does not change once written, so the copy is
kept under the cache, keyed by what the URI resolved to (the version's source, not an alias that
can move), and the next load of it is a directory lookup. An S3 folder can be rewritten, so its
key also covers the folder's listing (names and sizes).

The cache folder: `VLJEPA_CACHE`, else `$XDG_CACHE_HOME/vljepa`, else `~/.cache/vljepa`; models
go to `<cache>/models/<key>/`. A download is written to a private folder first and renamed into
place, so a reader never sees half a model and concurrent loaders (replicas starting together)
end up sharing one copy. Delete the folder to reclaim the space; nothing else depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

log = logging.getLogger(__name__)

CACHE_ENV = "VLJEPA_CACHE"
# what MLflow downloads (s3:// is read with `pipelines.storage`, its listing in the key)
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "gs://", "http://", "https://")
_INFO = "vljepa-cache.json"  # beside the downloaded tree: what it is and where the model sits


def cache_root() -> str:
    """The cache folder (created on first use by `local_copy`)."""
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vljepa")


def is_remote(uri: str) -> bool:
    """True for what `local_copy` downloads: MLflow URIs and s3:// folders."""
    from pipelines import storage

    return uri.startswith(MLFLOW_SCHEMES) or storage.is_s3(uri)


def local_copy(uri: str, tracking_uri: str | None = None) -> str:
    """A local directory holding what `uri` names (an MLflow URI or an s3:// folder), from the
    cache when it is there; any other URI is returned unchanged (a local folder)."""
    if not is_remote(uri):
        return uri
    from pipelines import storage

    if storage.is_s3(uri):
        source, listing = uri.rstrip("/"), storage.file_sizes(uri)
        if not listing:
            raise FileNotFoundError(f"{uri}: no files there")
        identity = json.dumps({"s3": source, "files": listing}, sort_keys=True)
    else:
        from pipelines import mlflow_uri

        source = mlflow_uri.model_version_source(uri, tracking_uri)
        # runs:/ and mlflow-artifacts:/ sources mean different things on different stores
        identity = json.dumps({"source": source, "store": tracking_uri or ""}, sort_keys=True)
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    final = os.path.join(cache_root(), "models", key)
    info_path = os.path.join(final, _INFO)
    if os.path.exists(info_path):
        with open(info_path) as f:
            rel = json.load(f)["path"]
        log.info("%s: cached at %s", uri, final)
        return os.path.join(final, rel)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{key}-", dir=os.path.dirname(final))
    try:
        t0 = time.monotonic()
        if storage.is_s3(uri):
            path = _download_s3(source, listing, staging)
        else:
            from pipelines import mlflow_uri

            path = mlflow_uri.download(uri, tracking_uri, staging)
        rel = os.path.relpath(path, staging)
        with open(os.path.join(staging, _INFO), "w") as f:
            json.dump({"uri": uri, "source": source, "path": rel}, f)
        try:
            os.rename(staging, final)
            log.info("%s: downloaded to %s in %.1fs", uri, final, time.monotonic() - t0)
        except OSError:  # another process put the same model in place first: use theirs
            if not os.path.exists(info_path):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return os.path.join(final, rel)


def _download_s3(uri: str, listing: dict[str, int], dst: str) -> str:
    from pipelines import storage

    for rel in listing:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)) or dst, exist_ok=True)
        with open(os.path.join(dst, rel), "wb") as out:
            out.write(storage.read_bytes(storage.join(uri, rel)))
    return dst
