"""The Ray Jobs API of a running cluster (`--address http://HEAD:8265`): submit, follow, stop, delete.

The same `vljepa JOB ARGS...` entrypoint as on Kubernetes, sent to a head that already runs (a
laptop's `ray start --head`, a long-lived RayCluster behind a port-forward, a cloud cluster).
Ray 2.60 turns token authentication on by default, and its client only sends the token when
this process itself runs in token mode, so the token is sent explicitly whenever one is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.submit_config import SubmitConfig

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 3


class JobsApiError(RuntimeError):
    """The Jobs API refused or could not be reached; one line with the reason."""


def auth_token(explicit: str | None = None) -> str | None:
    """The cluster's token: --token, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token."""
    if explicit:
        return explicit.strip()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def normalize_address(address: str) -> str:
    """http://HOST:8265 for the Jobs API (a bare HOST:PORT gets http://)."""
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise JobsApiError(
            f"{address} is a Ray Client address; the Jobs API needs the dashboard: http://HEAD:8265"
        )
    return address if "://" in address else f"http://{address}"


@contextlib.contextmanager
def _explicit_address(address: str):
    """Make the given address win: Ray's client otherwise takes RAY_ADDRESS (often a GCS
    address, e.g. inside a Ray job or a shell that ran `ray start`) over its argument."""
    saved = {k: os.environ.get(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")}
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def client(address: str, token: str | None = None):
    """A JobSubmissionClient for `address`, authenticated when a token is known."""
    from ray.job_submission import JobSubmissionClient

    address = normalize_address(address)
    tok = auth_token(token)
    headers = {"Authorization": f"Bearer {tok}"} if tok else None
    try:
        with _explicit_address(address):
            return JobSubmissionClient(address, headers=headers)
    except Exception as e:  # ConnectionError, auth errors: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JobsApiError(f"cannot reach the Ray Jobs API at {address}: {first}") from None


def submit(jobs_client, cfg: SubmitConfig, submission_id: str | None = None) -> str:
    """Submit `vljepa JOB ARGS...`; a local --working-dir is uploaded by the client."""
    import shlex

    runtime_env = cfg.full_runtime_env()
    wd = runtime_env.get("working_dir")
    if wd and "://" not in wd and not Path(wd).is_dir():
        raise JobsApiError(f"--working-dir {wd} is not a directory")
    try:
        return jobs_client.submit_job(
            entrypoint=shlex.join(cfg.entrypoint_argv()),
            runtime_env=runtime_env or None,
            submission_id=submission_id or cfg.name,
            metadata={"vljepa.job": cfg.job, "submitted-by": "vljepa-cli"},
        )
    except Exception as e:
        raise JobsApiError(f"submitting {cfg.job}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def status(jobs_client, job_id: str) -> str:
    try:
        return str(jobs_client.get_job_status(job_id).value)
    except Exception as e:
        raise JobsApiError(f"status of {job_id}: {_first_line(e)}") from None


def info(jobs_client, job_id: str) -> dict[str, Any]:
    try:
        d = jobs_client.get_job_info(job_id)
    except Exception as e:
        raise JobsApiError(f"info of {job_id}: {_first_line(e)}") from None
    return {
        "submission_id": d.submission_id,
        "job_id": d.job_id,
        "status": str(d.status.value),
        "entrypoint": d.entrypoint,
        "message": d.message,
        "start_time": d.start_time,
        "end_time": d.end_time,
    }


def list_jobs(jobs_client) -> list[dict[str, Any]]:
    try:
        jobs = jobs_client.list_jobs()
    except Exception as e:
        raise JobsApiError(f"listing jobs: {_first_line(e)}") from None
    return [
        {
            "submission_id": j.submission_id,
            "status": str(j.status.value),
            "entrypoint": j.entrypoint,
            "start_time": j.start_time,
        }
        for j in sorted(jobs, key=lambda j: j.start_time or 0)
    ]


def logs(jobs_client, job_id: str) -> str:
    try:
        return jobs_client.get_job_logs(job_id)
    except Exception as e:
        raise JobsApiError(f"logs of {job_id}: {_first_line(e)}") from None


def stop(jobs_client, job_id: str) -> bool:
    try:
        return bool(jobs_client.stop_job(job_id))
    except Exception as e:
        raise JobsApiError(f"stopping {job_id}: {_first_line(e)}") from None


def delete(jobs_client, job_id: str) -> bool:
    """Delete a finished job's record and logs (the Jobs API refuses running jobs)."""
    try:
        return bool(jobs_client.delete_job(job_id))
    except Exception as e:
        raise JobsApiError(
            f"deleting {job_id}: {_first_line(e)} (stop it first if it runs)"
        ) from None


@dataclass
class JobResult:
    code: int
    status: str


async def _tail(jobs_client, job_id: str, write: Callable[[str], Any]) -> None:
    async for chunk in jobs_client.tail_job_logs(job_id):
        write(chunk)


def follow(
    jobs_client,
    job_id: str,
    *,
    timeout_s: float | None = None,
    logs_to: Callable[[str], Any] | None = sys.stdout.write,
    emit: Callable[[str], None] = print,
    poll_s: float = 0.5,
) -> JobResult:
    """Stream the job's logs (when logs_to is set) and wait for a terminal status.

    Returns EXIT_OK on SUCCEEDED, EXIT_FAILED on FAILED/STOPPED, EXIT_TIMEOUT after timeout_s
    (the job keeps running; `vljepa jobs stop` ends it).
    """
    start = time.monotonic()
    deadline = start + timeout_s if timeout_s else None
    if logs_to is not None:
        try:
            asyncio.run(
                asyncio.wait_for(
                    _tail(jobs_client, job_id, logs_to),
                    timeout=None if deadline is None else max(0.1, deadline - time.monotonic()),
                )
            )
        except (TimeoutError, asyncio.TimeoutError):
            pass
        except Exception as e:  # the stream broke: keep waiting on the status
            emit(f"log stream ended early ({_first_line(e)}); waiting for the job's status")
    last = None
    while True:
        st = status(jobs_client, job_id)
        if st != last:
            emit(f"job {job_id}: {st}")
            last = st
        if st in TERMINAL:
            if st != "SUCCEEDED":
                msg = info(jobs_client, job_id).get("message")
                if msg:
                    emit(f"job {job_id}: {msg}")
            return JobResult(EXIT_OK if st == "SUCCEEDED" else EXIT_FAILED, st)
        if deadline is not None and time.monotonic() >= deadline:
            emit(
                f"timed out after {time.monotonic() - start:.0f}s; job {job_id} is still {st} "
                f"(vljepa jobs stop {job_id} --address ...)"
            )
            return JobResult(EXIT_TIMEOUT, st)
        time.sleep(poll_s)
