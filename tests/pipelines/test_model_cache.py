"""The model cache (pipelines/model_cache.py): a model named by URI is downloaded once, into the
cache and nowhere else, and a URI that now names something else is downloaded again."""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from pipelines import model_cache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(model_cache.CACHE_ENV, str(root))
    # Anything written to the temp folder lands here: the cache must leave it empty. Not a
    # stand-in: the cache, its MLflow store and the files are real; only where temp files go moves.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return root


def _store_with_versions(tmp_path: Path, n: int):
    """A SQLite MLflow store with model `m`, versions 1..n, version k's folder holding 'k'."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    exp = client.create_experiment("cache", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model("m")
    for k in range(1, n + 1):
        src = tmp_path / f"saved-{k}"
        src.mkdir()
        (src / "config.json").write_text(str(k))
        run = client.create_run(exp)
        client.log_artifacts(run.info.run_id, str(src), "model")
        client.create_model_version("m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return store, client


def _entries(root: Path) -> list[str]:
    return sorted(os.listdir(root / "models"))


def test_a_version_is_downloaded_once_and_nothing_is_left_in_tmp(cache, tmp_path):
    store, _ = _store_with_versions(tmp_path, 1)
    first = model_cache.local_copy("models:/m/1", store)
    assert Path(first, "config.json").read_text() == "1"
    assert first.startswith(str(cache))
    # The store's artifacts are gone: a second load can only come from the cache.
    import shutil

    shutil.rmtree(tmp_path / "art")
    assert model_cache.local_copy("models:/m/1", store) == first
    assert len(_entries(cache)) == 1
    assert os.listdir(tmp_path / "tmp") == []


def test_an_alias_that_moves_loads_the_version_it_names_now(cache, tmp_path):
    store, client = _store_with_versions(tmp_path, 2)
    client.set_registered_model_alias("m", "champion", "1")
    one = model_cache.local_copy("models:/m@champion", store)
    client.set_registered_model_alias("m", "champion", "2")
    two = model_cache.local_copy("models:/m@champion", store)
    assert Path(one, "config.json").read_text() == "1"
    assert Path(two, "config.json").read_text() == "2"
    assert model_cache.local_copy("models:/m/2", store) == two  # the same version, one copy
    assert len(_entries(cache)) == 2


def test_concurrent_loaders_share_one_copy(cache, tmp_path):
    store, _ = _store_with_versions(tmp_path, 1)
    got: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def load() -> None:
        try:
            start.wait()
            got.append(model_cache.local_copy("models:/m/1", store))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(got)) == 1 and Path(got[0], "config.json").read_text() == "1"
    assert _entries(cache) == [os.path.basename(os.path.dirname(got[0]))]  # no staging leftovers


def test_local_folders_pass_through(cache, tmp_path):
    assert model_cache.local_copy(str(tmp_path)) == str(tmp_path)
    assert not cache.exists()


def test_an_s3_folder_that_changes_is_downloaded_again(cache, s3):
    from pipelines import storage

    root = s3.uri("model-cache", uuid.uuid4().hex)
    storage.write_bytes(storage.join(root, "config.json"), b"{}")
    storage.write_bytes(storage.join(root, "sub/weights.bin"), b"x" * 10)
    first = model_cache.local_copy(root)
    assert Path(first, "sub", "weights.bin").read_bytes() == b"x" * 10
    assert model_cache.local_copy(root) == first
    storage.write_bytes(storage.join(root, "sub/weights.bin"), b"y" * 20)
    second = model_cache.local_copy(root)
    assert second != first and Path(second, "sub", "weights.bin").read_bytes() == b"y" * 20
    with pytest.raises(FileNotFoundError):
        model_cache.local_copy(s3.uri("model-cache", uuid.uuid4().hex))
