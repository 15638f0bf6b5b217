"""One way to get a VLJEPA into a replica from any model reference.

`models:/name/version`, `runs:/RUN_ID/path`, `s3://...` and `mlflow-artifacts:/...` are downloaded
into the model cache first (`pipelines.model_cache`: once per model, shared by the replicas of a
node). A replica needs the tracking URI, never S3 keys when the server proxies artifacts; with
none given, `pipelines.tracking_store` resolves it, from the MLFLOW_TRACKING_URI `vljepa serve`
puts in every replica's env. A local directory is used as it is. An empty URI builds the named preset untrained, from fixed seeds, so every replica of every deployment
holds the same weights and classify/caption stay consistent across replicas.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def _is_model_dir(path: str) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(n.endswith(".safetensors") for n in names) and any(
        n.endswith(".json") for n in names
    )


def find_model_dir(root: str) -> str:
    """The folder under `root` that holds a saved VLJEPA (config JSON + safetensors).

    MLflow nests artifacts (`model/`, `artifacts/model/`...) depending on how they were logged,
    so the shallowest folder with both files wins.
    """
    if _is_model_dir(root):
        return root
    best: tuple[int, str] | None = None
    for dirpath, _dirs, _files in os.walk(root):
        if _is_model_dir(dirpath):
            depth = dirpath.count(os.sep)
            if best is None or depth < best[0]:
                best = (depth, dirpath)
    if best is None:
        raise FileNotFoundError(f"no saved VLJEPA (config JSON + .safetensors) under {root}")
    return best[1]


def local_model_dir(uri: str, tracking_uri: str = "") -> str:
    """A local directory holding the model that `uri` names (downloaded into the model cache,
    `pipelines.model_cache`, unless an earlier load already put it there)."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if os.path.isdir(uri):
        return find_model_dir(uri)
    from pipelines import model_cache, tracking_store

    if not model_cache.is_remote(uri):
        raise FileNotFoundError(f"model URI {uri!r} is neither a directory nor an MLflow/S3 URI")
    # Never MLflow's own default (a ./mlflow.db in whatever folder the replica runs in): an
    # empty URI is the store `vljepa serve` resolved, which reaches replicas in their env.
    tracking_uri = tracking_uri or tracking_store.resolve(None)
    # the store is passed explicitly: no process-global MLflow URI is read or changed
    return find_model_dir(model_cache.local_copy(uri, tracking_uri))


def load_model(
    uri: str = "", preset: str = "tiny", tracking_uri: str = "", keep: tuple[str, ...] = ()
):
    """VLJEPA in eval mode. `keep`: the submodules this replica needs ("x_encoder", "predictor",
    "y_encoder", "y_decoder"); the others are dropped to save memory (empty = keep all)."""
    import torch

    from jepa.model import VLJEPA

    t0 = time.monotonic()
    if uri:
        model = VLJEPA.from_pretrained(local_model_dir(uri, tracking_uri))
        source = uri
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = VLJEPA.from_preset(preset)
        source = f"preset {preset} (untrained)"
    if keep:
        for name in ("x_encoder", "predictor", "y_encoder", "y_decoder"):
            if name not in keep and getattr(model, name, None) is not None:
                setattr(model, name, None)
    model.eval()
    log.info("model from %s ready in %.1fs", source, time.monotonic() - t0)
    return model


def ensure_decoder(model, seed: int = 0):
    """The model's Y-decoder, or an untrained one built from its config (a model saved before the
    decoder was trained still serves captions, as nonsense, instead of failing)."""
    import torch

    if getattr(model, "y_decoder", None) is not None:
        return model.y_decoder
    from jepa.y_decoder import YDecoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dec = YDecoder.from_config(model.config.y_decoder, model.config.shared_dim)
    log.warning("model has no trained Y-decoder: captions come from an untrained one")
    return dec.eval()
