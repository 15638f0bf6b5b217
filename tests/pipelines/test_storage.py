"""pipelines.storage on a local directory and on the real S3 server: the same calls, same results."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipelines import storage


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path: Path) -> str:
    """A fresh, empty base URI: a local directory or a prefix in the test bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    s3 = request.getfixturevalue("s3")
    return s3.uri("storage-tests", uuid.uuid4().hex)


def test_write_read_exists_roundtrip(base: str):
    uri = storage.join(base, "a", "b", "note.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "the lamp turns off\n")
    assert storage.exists(uri)
    assert storage.read_text(uri) == "the lamp turns off\n"
    payload = os.urandom(300_000)
    storage.write_bytes(uri, payload)  # overwrite replaces the whole object
    assert storage.read_bytes(uri) == payload


def test_read_missing_raises(base: str):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "nope.bin"))


def test_list_files_filters_sorts_and_recurses(base: str):
    for rel in ["b.parquet", "a.parquet", "c.json", "sub/d.parquet", ".hidden.parquet"]:
        storage.write_bytes(storage.join(base, rel), b"x")
    top = storage.list_files(base, suffix=".parquet")
    assert [u.rsplit("/", 1)[1] for u in top] == ["a.parquet", "b.parquet"]
    assert all(u.startswith(base) for u in top)
    deep = storage.list_files(base, suffix=".parquet", recursive=True)
    assert [u[len(base) + 1 :] for u in deep] == ["a.parquet", "b.parquet", "sub/d.parquet"]
    assert len(storage.list_files(base)) == 3  # c.json too, never the hidden file
    assert storage.list_files(storage.join(base, "missing")) == []
    # Listed URIs are readable as they are.
    assert storage.read_bytes(deep[-1]) == b"x"


def test_delete_file_and_directory(base: str):
    f = storage.join(base, "d", "one.bin")
    storage.write_bytes(f, b"1")
    storage.write_bytes(storage.join(base, "d", "two.bin"), b"2")
    storage.delete(f)
    assert not storage.exists(f)
    storage.delete(storage.join(base, "d"))
    assert storage.list_files(storage.join(base, "d"), recursive=True) == []
    storage.delete(f)  # missing_ok by default
    with pytest.raises(FileNotFoundError):
        storage.delete(f, missing_ok=False)


def test_resolve_manifest_references(base: str):
    """Relative references in a manifest are read relative to the corpus, absolute ones as they are."""
    storage.write_bytes(storage.join(base, "videos", "c0.mp4"), b"mp4")
    ref = storage.resolve(base, "videos/c0.mp4")
    assert ref == storage.join(base, "videos/c0.mp4")
    assert storage.read_bytes(ref) == b"mp4"
    assert storage.parent(ref) == storage.join(base, "videos")
    assert storage.resolve(base, "s3://other/x.mp4") == "s3://other/x.mp4"
    assert storage.resolve(base, "/abs/x.mp4") == "/abs/x.mp4"
    assert storage.resolve(base, "file:///abs/x.mp4") == "file:///abs/x.mp4"


def test_makedirs_and_check_writable_leave_nothing(base: str):
    d = storage.join(base, "out")
    storage.makedirs(d)
    storage.check_writable(d)
    storage.write_bytes(storage.join(d, "keep.txt"), b"k")
    assert storage.list_files(d) == [storage.join(d, "keep.txt")]


def test_join_and_parent_keep_the_scheme():
    assert storage.join("s3://bucket/a/", "b", "c.txt") == "s3://bucket/a/b/c.txt"
    assert storage.parent("s3://bucket/a/b/c.txt") == "s3://bucket/a/b"
    assert storage.parent("s3://bucket/a/") == "s3://bucket"
    assert storage.join("/x/y", "z") == "/x/y/z"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/b/k")


def test_filesystem_local_forms(tmp_path: Path):
    fs, path = storage.filesystem(f"file://{tmp_path}/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/x"
    fs, path = storage.filesystem("relative/dir")
    assert path == os.path.abspath("relative/dir")


def test_s3_filesystem_and_boto3_see_the_same_object(s3):
    uri = s3.uri("storage-tests", uuid.uuid4().hex, "obj.bin")
    storage.write_bytes(uri, b"0123456789")
    fs, path = storage.filesystem(uri)
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == uri[len("s3://") :]
    head = storage.s3_client().head_object(Bucket=s3.bucket, Key=path.split("/", 1)[1])
    assert head["ContentLength"] == 10


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path):
    target = tmp_path / "deep" / "manifest.jsonl"
    storage.write_text(str(target), "old\n")
    storage.write_text(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert sorted(os.listdir(target.parent)) == ["manifest.jsonl"]


def test_local_failed_write_keeps_the_old_file(tmp_path: Path):
    """A write that fails half-way leaves the previous content, never a torn file."""
    target = tmp_path / "data.bin"
    storage.write_bytes(str(target), b"complete")
    with pytest.raises(TypeError):
        storage.write_bytes(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"complete"


def test_check_writable_fails_on_unwritable_places(tmp_path: Path, s3):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        storage.check_writable(str(blocker / "sub"))  # a directory under a regular file
    with pytest.raises(OSError):
        storage.check_writable(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out")
