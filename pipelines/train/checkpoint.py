"""Sharded DCP checkpoints reported through Ray Train, the choice of where to resume, the export.

Every rank writes only its own shard (`__<rank>_0.distcp`; rank 0 also the `.metadata` and a small
`train_state.json`) into its own local directory and reports it; Ray Train uploads the ranks'
directories into one folder of the run's storage (local or S3). DCP stores each tensor's global
shape and shard offsets, so a checkpoint written by N ranks loads on M ranks (resharding) or on
one process with no process group at all (the export on the driver).

Why a checkpoint also carries `_COMPLETE`: Ray Train's controller registers a reported checkpoint
only when it next polls every worker (every couple of seconds); a worker that dies in between (an
OOM kill right after a report) takes the registration with it, and the restarted group would get
an older checkpoint back, or none and start at step 0. So the run's storage is asked as well.
Once every rank's upload has returned, rank 0 checks that every file each rank wrote is in storage
with its size (pyarrow can drop a failed S3 upload silently: "Error ignored when destroying file",
seen on a loaded machine, and Ray then registers the folder anyway; the rank that wrote a lost file
puts it again) and only then writes `_COMPLETE` in one atomic write: the step and every file with
its size. A folder counts as
complete only with that file and everything it lists; a half-written folder never has it. On
(re)start the loop resumes from the newest complete checkpoint (`choose`).

A restart that resumes below a folder already in storage (a newer checkpoint that never became
complete, which Ray Train may still have registered) writes its checkpoints under names tagged
for that attempt (`checkpoint_0000008-1f2e3d`): re-reporting the old name would make Ray's
`num_to_keep` clean-up of the old entry delete the new checkpoint ("Path not found").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pipelines import storage
from pipelines.train.distributed import all_gather_objects, broadcast_object

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
COMPLETE_FILE = "_COMPLETE"
_DIR_RE = re.compile(r"^checkpoint_(\d+)(?:-[0-9a-f]+)?$")


class CheckpointIncomplete(RuntimeError):
    """A reported checkpoint whose files did not all reach storage, even put a second time: this
    attempt stops, and the restarted group resumes from the newest complete checkpoint."""


def dir_name(step: int, tag: str = "") -> str:
    """A checkpoint's folder in the run's storage: it sorts by step and names it; `tag` (from
    `attempt_tag`) keeps a restarted attempt's folders apart from the ones it resumed below."""
    return f"checkpoint_{step:07d}" + (f"-{tag}" if tag else "")


def attempt_tag(run_dir: str, start_step: int) -> str:
    """ "" while no checkpoint folder in `run_dir` is above `start_step` (the usual case: names
    stay `checkpoint_<step>`); otherwise a fresh tag for this attempt's folder names, so no
    folder Ray Train knows of is ever reported twice."""
    import pyarrow.fs as pafs

    fs, root = storage.filesystem(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    steps = [
        int(m.group(1))
        for info in infos
        if info.type == pafs.FileType.Directory and (m := _DIR_RE.match(info.base_name))
    ]
    return uuid.uuid4().hex[:6] if any(s > start_step for s in steps) else ""


def staging_prefix(run_dir: str, rank: int) -> str:
    """Name prefix of a rank's local staging folders for `run_dir`'s checkpoints."""
    run = hashlib.sha256(run_dir.encode()).hexdigest()[:12]
    return f"vljepa-ckpt-{run}-r{rank}-"


def clear_stale_staging(run_dir: str, rank: int) -> list[str]:
    """Remove this rank's staging folders for `run_dir` left by a worker that died mid-save
    (~half a checkpoint each: 160 MB with the tiny preset). A rank saves one checkpoint at a
    time, so at (re)start any such folder of its own is stale; called before its first save."""
    prefix = staging_prefix(run_dir, rank)
    root = tempfile.gettempdir()
    stale = [os.path.join(root, n) for n in os.listdir(root) if n.startswith(prefix)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        log.info("removed %d staging folder(s) a killed worker left: %s", len(stale), stale)
    return stale


def save_and_report(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    rank: int,
    run_dir: str,
    metrics: dict,
    extra: dict | None = None,
    tag: str = "",
) -> None:
    """Write this rank's shard, report it, and mark the checkpoint complete in `run_dir`.

    Every rank calls it. When it returns, the checkpoint is in storage with `_COMPLETE`: a rank
    that dies from then on (however soon) restarts from this step, registered by Ray or not. A
    file that did not reach storage is put again once by the rank that wrote it; still missing:
    CheckpointIncomplete on every rank."""
    import ray.train

    target = storage.join(run_dir, dir_name(step, tag))
    local = tempfile.mkdtemp(prefix=f"{staging_prefix(run_dir, rank)}{step:07d}-")
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=local)
        if rank == 0:
            with open(os.path.join(local, STATE_FILE), "w") as f:
                json.dump({"step": step, **(extra or {})}, f)
        written = {n: os.path.getsize(os.path.join(local, n)) for n in os.listdir(local)}
        ray.train.report(
            {**metrics, "step": step},
            checkpoint=ray.train.Checkpoint.from_directory(local),
            checkpoint_dir_name=dir_name(step, tag),
        )
        # A sync point: every rank's upload has returned. Then rank 0 checks and marks, and no
        # rank goes on (or dies) before it has: the broadcast waits for the verdict.
        expected = {n: size for files in all_gather_objects(written) for n, size in files.items()}
        problems = broadcast_object(mark_complete(target, step, expected) if rank == 0 else None)
        if problems:  # each rank puts its own lost files again, this time failing loudly
            for name in sorted(set(problems) & set(written)):
                with open(os.path.join(local, name), "rb") as f:
                    storage.write_bytes(storage.join(target, name), f.read())
            all_gather_objects(None)  # every rank's re-upload has returned
            problems = broadcast_object(
                mark_complete(target, step, expected) if rank == 0 else None
            )
        if problems:
            raise CheckpointIncomplete(f"{target}: files missing or short in storage: {problems}")
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _mismatches(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    return sorted(f for f, size in expected.items() if found.get(f) != size)


def mark_complete(checkpoint_uri: str, step: int, expected: dict[str, int]) -> list[str]:
    """Rank 0, after every rank's upload returned: if storage holds every `expected` file (name:
    size, what the ranks wrote), write `_COMPLETE` atomically and return []; else write nothing
    and return the files that are missing or of another size."""
    problems = _mismatches(expected, storage.file_sizes(checkpoint_uri))
    if problems:
        log.error("checkpoint %s is incomplete, not marked: %s", checkpoint_uri, problems)
        return problems
    storage.write_text(
        storage.join(checkpoint_uri, COMPLETE_FILE),
        json.dumps({"step": step, "files": expected}, sort_keys=True),
    )
    log.info("checkpoint %s complete (%d files)", checkpoint_uri, len(expected))
    return []


@dataclass(frozen=True)
class Complete:
    """A checkpoint folder that passed the `_COMPLETE` check."""

    uri: str
    step: int


def newest_complete(run_dir: str) -> tuple[Complete | None, list[str]]:
    """The newest checkpoint folder of `run_dir` that is complete, and why newer ones were not.

    Complete: `_COMPLETE` is there, names the folder's step, and every file it lists is there
    with its size (so a folder being deleted by Ray's `num_to_keep` does not pass either)."""
    by_dir: dict[str, dict[str, int]] = {}
    for rel, size in storage.file_sizes(run_dir).items():
        parts = rel.split("/", 1)
        if len(parts) == 2 and _DIR_RE.match(parts[0]):
            by_dir.setdefault(parts[0], {})[parts[1]] = size
    skipped = []
    for name in sorted(by_dir, key=lambda n: int(_DIR_RE.match(n).group(1)), reverse=True):
        files, step = by_dir[name], int(_DIR_RE.match(name).group(1))
        if COMPLETE_FILE not in files:
            skipped.append(f"{name}: no {COMPLETE_FILE} (its write did not finish)")
            continue
        uri = storage.join(run_dir, name)
        try:
            manifest = json.loads(storage.read_text(storage.join(uri, COMPLETE_FILE)))
            listed, marked = dict(manifest["files"]), int(manifest["step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            skipped.append(f"{name}: unreadable {COMPLETE_FILE} ({e})")
            continue
        problems = _mismatches(listed, files)
        if marked != step or STATE_FILE not in listed or problems:
            skipped.append(
                f"{name}: {COMPLETE_FILE} says step {marked}; missing or changed {problems}"
            )
            continue
        return Complete(uri, step), skipped
    return None, skipped


def _unmarked_problems(uri: str) -> list[str]:
    """What a checkpoint without `_COMPLETE` lacks of train_state.json, .metadata and a shard of
    each rank (the world size from train_state.json); [] when all are there."""
    files = storage.file_sizes(uri)
    if STATE_FILE not in files:
        return [STATE_FILE]
    world = int(json.loads(storage.read_text(storage.join(uri, STATE_FILE))).get("world_size", 1))
    lacks = [] if ".metadata" in files else [".metadata"]
    for r in range(world):
        if not any(f.startswith(f"__{r}_") and f.endswith(".distcp") for f in files):
            lacks.append(f"__{r}_0.distcp")
    return lacks


@dataclass(frozen=True)
class Resume:
    """Where a (re)started worker group starts: a checkpoint URI (None: step 0) and why."""

    uri: str | None
    step: int
    source: str  # "ray" | "storage" | "resume_from" | "none"
    reason: str


def checkpoint_uri(checkpoint, run_dir: str) -> str:
    """The URI of a Ray Checkpoint in this run's storage (Ray keeps S3 paths without s3://)."""
    return ("s3://" + checkpoint.path) if storage.is_s3(run_dir) else checkpoint.path


def _step_of(uri: str) -> int:
    m = _DIR_RE.match(posixpath.basename(uri.rstrip("/")))
    if m:
        return int(m.group(1))
    return int(json.loads(storage.read_text(storage.join(uri, STATE_FILE)))["step"])


def choose(ray_checkpoint, run_dir: str, resume_from: str | None = None) -> Resume:
    """The newest complete checkpoint of this run, from Ray Train (`ray.train.get_checkpoint()`)
    or from the run's storage (a newer one the controller never registered); neither:
    `resume_from`, else step 0.

    Ray's is taken when it is the newest: marked complete, or unmarked (its ranks were stopped
    between the report and the mark) with a train state, DCP metadata and every rank's shard."""
    found, skipped = newest_complete(run_dir)
    handed = "none"
    if ray_checkpoint is not None:
        ray_uri = checkpoint_uri(ray_checkpoint, run_dir)
        ray_step = _step_of(ray_uri)
        handed = f"step {ray_step}"
        if found is not None and found.step == ray_step:
            return Resume(found.uri, ray_step, "ray", f"Ray Train's checkpoint, step {ray_step}")
        if found is None or ray_step > found.step:
            lacks = _unmarked_problems(ray_uri)
            if not lacks:
                return Resume(
                    ray_uri,
                    ray_step,
                    "ray",
                    f"Ray Train's checkpoint, step {ray_step}: not marked {COMPLETE_FILE} but "
                    "every rank's files are there",
                )
            skipped.insert(0, f"Ray Train's checkpoint step {ray_step} lacks {lacks}")
    newer = f"; skipped: {'; '.join(skipped)}" if skipped else ""
    if found is not None:
        return Resume(
            found.uri,
            found.step,
            "storage",
            f"newest complete checkpoint in {run_dir} is step {found.step}; Ray Train handed back "
            f"{handed}{newer}",
        )
    if resume_from:
        return Resume(
            resume_from,
            _step_of(resume_from),
            "resume_from",
            f"no checkpoint of this run yet; resume_from given{newer}",
        )
    return Resume(None, 0, "none", f"no complete checkpoint in {run_dir}: step 0{newer}")


def read_state(checkpoint_dir: str) -> dict:
    with open(os.path.join(checkpoint_dir, STATE_FILE)) as f:
        return json.load(f)


def load_into(checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (+ optimizer) from a Ray Checkpoint on every rank; returns train_state.

    Every model weight must be in the checkpoint. A parameter that was frozen when it was written
    (e.g. resumed without `--freeze-y-embeddings`) has no optimizer state there: its AdamW
    moments start at zero, said in the log, instead of failing the resume on a missing key."""
    with checkpoint.as_directory() as d:
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            saved = set(dcp.FileSystemReader(d).read_metadata().state_dict_metadata)
            lacking = [k for k in model_sd if f"model.{k}" not in saved]
            if lacking:
                raise ValueError(
                    f"checkpoint {checkpoint.path} has no weights for {len(lacking)} of this "
                    f"model's parameters (first: {lacking[0]}): it was written by another model"
                )
            fresh = [k for k in optim_sd.get("state", {}) if f"optim.state.{k}.step" not in saved]
            if fresh:
                log.warning(
                    "checkpoint %s has no optimizer state for %d parameter(s) it kept frozen "
                    "(first: %s): their AdamW moments start at zero",
                    checkpoint.path,
                    len(fresh),
                    fresh[0],
                )
            planner = dcp.DefaultLoadPlanner(allow_partial_load=bool(fresh))
            dcp.load(state, checkpoint_id=d, planner=planner)
            set_state_dict(
                model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
        else:
            model_sd, _ = get_state_dict(model, [])
            state = {"model": model_sd}
            dcp.load(state, checkpoint_id=d)
            set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
        train_state = read_state(d)
    log.info("resumed from %s at step %d", checkpoint.path, train_state["step"])
    return train_state


def as_checkpoint(uri: str):
    """A Ray Checkpoint for a local dir or s3:// URI (manual resume, export)."""
    import ray.train

    fs, path = storage.filesystem(uri)
    return ray.train.Checkpoint(path=path, filesystem=fs)


def load_model_weights(checkpoint_dir: str, model: nn.Module) -> None:
    """Load the model part of a DCP checkpoint into an unsharded module, in one process.

    DCP reads only the keys asked for, so the optimizer state is never materialised here.
    """
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=checkpoint_dir)
    model.load_state_dict(state["model"])


def shard_files(checkpoint_dir: str) -> list[str]:
    """The per-rank shard files of a merged checkpoint (what the FSDP test inspects)."""
    return sorted(f for f in os.listdir(checkpoint_dir) if f.endswith(".distcp"))
