"""The checkpoint race: a worker killed within milliseconds of a checkpoint report (before Ray
Train's controller polled it, so the checkpoint was never registered) must still resume from that
checkpoint. The run's storage is asked too, and only a folder marked `_COMPLETE` counts.

These tests build checkpoint folders by hand (local and on the real S3 server). The race itself, a
real 2-worker run whose rank 1 dies right after the report, is
tests/pipelines/test_train.py::test_worker_killed_resumes_from_checkpoint_on_s3 (one training run
covers it and the S3 failover)."""

from __future__ import annotations

import json
import uuid

import pytest

from pipelines import storage
from pipelines.train import checkpoint as ckpt

SHARDS = ("__0_0.distcp", "__1_0.distcp", ".metadata")


def _write_checkpoint(run_dir: str, step: int, complete: bool) -> str:
    """A checkpoint folder of 2 ranks as Ray Train's upload leaves it; `complete`: marked as
    rank 0 marks it, with the files and sizes the ranks wrote."""
    uri = storage.join(run_dir, ckpt.dir_name(step))
    files = {name: f"{name} of step {step}".encode() for name in SHARDS}
    files[ckpt.STATE_FILE] = json.dumps({"step": step, "world_size": 2}).encode()
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
    if complete:
        assert ckpt.mark_complete(uri, step, {n: len(d) for n, d in files.items()}) == []
    return uri


@pytest.fixture(params=["local", "s3"])
def run_dir(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    s3 = request.getfixturevalue("s3")
    return s3.uri("checkpoint-race", uuid.uuid4().hex, "run")


def test_newest_complete_skips_unmarked_and_damaged_folders(run_dir):
    """The newest folder with `_COMPLETE` and every file it lists wins: a newer marker-less one
    (a write that did not finish) and a marked one that lost a shard are skipped, with reasons."""
    assert ckpt.newest_complete(run_dir) == (None, [])
    _write_checkpoint(run_dir, 2, complete=True)
    four = _write_checkpoint(run_dir, 4, complete=True)
    _write_checkpoint(run_dir, 6, complete=True)
    storage.delete(storage.join(run_dir, ckpt.dir_name(6), "__1_0.distcp"))  # half deleted
    _write_checkpoint(run_dir, 8, complete=False)  # its ranks never all finished

    found, skipped = ckpt.newest_complete(run_dir)
    assert found == ckpt.Complete(four, 4)
    assert len(skipped) == 2, skipped
    assert skipped[0].startswith("checkpoint_0000008: no _COMPLETE"), skipped
    assert skipped[1].startswith("checkpoint_0000006:") and "__1_0.distcp" in skipped[1], skipped


def test_choose_takes_the_newest_complete_of_ray_and_storage(run_dir):
    """Ray Train's checkpoint when it is the newest whole one; a newer complete folder it never
    registered otherwise; never a marker-less folder nor one with a shard missing; step 0 only
    when nothing complete exists."""
    assert ckpt.choose(None, run_dir).source == "none"
    other = _write_checkpoint(storage.join(storage.parent(run_dir), "other-run"), 8, complete=True)
    r = ckpt.choose(None, run_dir, resume_from=other)  # a new run started from another's
    assert (r.uri, r.step, r.source) == (other, 8, "resume_from"), r
    two = _write_checkpoint(run_dir, 2, complete=True)
    four = _write_checkpoint(run_dir, 4, complete=True)
    six = _write_checkpoint(run_dir, 6, complete=False)

    # the controller registered step 2 but not step 4 (the worker died before its poll)
    r = ckpt.choose(ckpt.as_checkpoint(two), run_dir)
    assert (r.uri, r.step, r.source) == (four, 4, "storage"), r
    assert "Ray Train handed back step 2" in r.reason and "checkpoint_0000006" in r.reason
    # it registered nothing at all: storage still says step 4 (the old code started at 0)
    r = ckpt.choose(None, run_dir, resume_from=two)
    assert (r.uri, r.step, r.source) == (four, 4, "storage"), r
    # it registered step 4 itself
    assert ckpt.choose(ckpt.as_checkpoint(four), run_dir).source == "ray"
    # a rank died between the report and `_COMPLETE`: Ray registered step 6, whose files are all
    # there
    r = ckpt.choose(ckpt.as_checkpoint(six), run_dir)
    assert (r.uri, r.step, r.source) == (six, 6, "ray"), r
    # ... unless an upload was dropped (pyarrow can lose a failed S3 part silently): step 4
    storage.delete(storage.join(six, "__0_0.distcp"))
    r = ckpt.choose(ckpt.as_checkpoint(six), run_dir)
    assert (r.uri, r.step, r.source) == (four, 4, "storage"), r
    assert "lacks ['__0_0.distcp']" in r.reason, r


def test_mark_complete_refuses_a_checkpoint_with_a_lost_file(tmp_path):
    """Rank 0 marks only what every rank wrote, with the same sizes: a file missing or shorter in
    storage (an upload that failed quietly) leaves the folder unmarked, and says which."""
    run = str(tmp_path / "run")
    uri = _write_checkpoint(run, 2, complete=False)
    wrote = {n: len(f"{n} of step 2") for n in SHARDS}
    wrote["__2_0.distcp"] = 10  # a third rank whose upload never landed
    wrote["__1_0.distcp"] += 1  # and one cut short
    assert ckpt.mark_complete(uri, 2, wrote) == ["__1_0.distcp", "__2_0.distcp"]
    assert not storage.exists(storage.join(uri, ckpt.COMPLETE_FILE))
    assert ckpt.newest_complete(run)[0] is None


def test_a_rewritten_folder_is_incomplete_until_marked_again(tmp_path):
    """`_COMPLETE` covers the files as they were: a shard rewritten with another size after the
    marking no longer passes."""
    run = str(tmp_path / "run")
    _write_checkpoint(run, 2, complete=True)
    uri = _write_checkpoint(run, 4, complete=True)
    storage.write_bytes(storage.join(uri, "__0_0.distcp"), b"a longer shard of another attempt")
    found, skipped = ckpt.newest_complete(run)
    assert found.step == 2 and "__0_0.distcp" in skipped[0]


def test_a_restart_below_a_stored_folder_writes_under_fresh_names(run_dir):
    """A restart that resumes at step 4 while a step-8 folder (never completed, possibly
    registered by Ray Train) is in storage writes its checkpoints under tagged names, so step 8
    is never reported twice under one name (Ray's `num_to_keep` clean-up of the old entry would
    delete the new folder); tagged folders are found and chosen like plain ones."""
    assert ckpt.attempt_tag(run_dir, 0) == ""  # a first start keeps the plain names
    _write_checkpoint(run_dir, 4, complete=True)
    assert ckpt.attempt_tag(run_dir, 4) == ""  # a restart at the newest folder: no clash
    _write_checkpoint(run_dir, 8, complete=False)
    r = ckpt.choose(None, run_dir)
    assert r.step == 4
    tag = ckpt.attempt_tag(run_dir, r.step)
    assert tag and ckpt.attempt_tag(run_dir, r.step) != tag  # every attempt its own
    eight = storage.join(run_dir, ckpt.dir_name(8, tag))
    assert eight != storage.join(run_dir, ckpt.dir_name(8))
    files = {name: f"{name} again".encode() for name in SHARDS}
    files[ckpt.STATE_FILE] = json.dumps({"step": 8, "world_size": 2}).encode()
    for name, data in files.items():
        storage.write_bytes(storage.join(eight, name), data)
    assert ckpt.mark_complete(eight, 8, {n: len(d) for n, d in files.items()}) == []
    assert ckpt.newest_complete(run_dir)[0] == ckpt.Complete(eight, 8)
    assert ckpt.choose(ckpt.as_checkpoint(eight), run_dir).source == "ray"


def test_a_restarted_rank_removes_only_its_own_stale_staging(tmp_path, monkeypatch):
    """A worker killed mid-save leaves its local staging folder (half a checkpoint); the rank
    that replaces it removes it, and nothing of another rank or another run."""
    import tempfile

    # Not a stand-in: staging stays real, in Python's temp folder pointed into this test's own
    # folder, so the test can see what is left there and no other test's staging can interfere.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run, other = "s3://bucket/runs/a", "s3://bucket/runs/b"
    mine = tempfile.mkdtemp(prefix=f"{ckpt.staging_prefix(run, 1)}0000004-")
    (tmp_path / mine / "__1_0.distcp").write_bytes(b"x" * 100)
    keep = [
        tempfile.mkdtemp(prefix=f"{ckpt.staging_prefix(run, 0)}0000004-"),
        tempfile.mkdtemp(prefix=f"{ckpt.staging_prefix(other, 1)}0000004-"),
    ]
    assert ckpt.clear_stale_staging(run, 1) == [mine]
    assert sorted(str(p) for p in tmp_path.iterdir()) == sorted(keep)
    assert ckpt.clear_stale_staging(run, 1) == []
