"""KubeRay objects on a Kubernetes API server: create, get, list, stop, delete, and follow a RayJob.

Only the CustomObjectsApi is used, so the same code works against a full cluster and against an
API server that serves nothing but the KubeRay CRDs (the tests). Following a job uses a watch
from a known resourceVersion, so no status transition is missed, and wakes up at least every few
seconds to say why a job that does not move is stuck (ANCHORS pain point 6).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.kuberay import GROUP, PART_OF, PLURALS, VERSION

log = logging.getLogger(__name__)

# KubeRay's RayJob states (ray-operator/apis/ray/v1/rayjob_types.go).
INITIALIZING = {"", "New", "Initializing"}
DEPLOYMENT_FAILED = {"Failed", "ValidationFailed"}
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 3


class K8sError(RuntimeError):
    """A Kubernetes request failed; the message says what to do about it, in one line."""


def custom_objects_api(kubeconfig: str | None = None, context: str | None = None):
    """CustomObjectsApi from KUBECONFIG (or ~/.kube/config), or the in-cluster ServiceAccount."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError, TypeError) as e:
        try:
            config.load_incluster_config()
            api_client = client.ApiClient()
        except ConfigException:
            raise K8sError(
                f"no Kubernetes configuration ({e}); set KUBECONFIG or run inside a cluster"
            ) from None
    return client.CustomObjectsApi(api_client)


def _explain(e: Exception, what: str) -> K8sError:
    """One line from an ApiException: status, the server's message, and a hint when we know one."""
    from kubernetes.client.exceptions import ApiException

    if not isinstance(e, ApiException):
        return K8sError(f"{what}: cannot reach the Kubernetes API server ({type(e).__name__}: {e})")
    message = e.reason or ""
    try:
        body = json.loads(e.body or "{}")
        message = body.get("message") or message
    except (ValueError, TypeError):
        pass
    hint = ""
    if e.status == 404 and "the server could not find the requested resource" in message:
        hint = " (are the KubeRay CRDs installed? install the kuberay-operator Helm chart first)"
    elif e.status == 403:
        hint = " (your Kubernetes user lacks RBAC permission for ray.io objects in this namespace)"
    return K8sError(f"{what}: HTTP {e.status}: {message}{hint}")


@dataclass
class RayObjects:
    """ray.io/v1 objects of one namespace."""

    api: Any  # kubernetes.client.CustomObjectsApi
    namespace: str = "default"

    def _plural(self, kind: str) -> str:
        try:
            return PLURALS[kind]
        except KeyError:
            raise K8sError(f"unknown kind {kind}; one of {', '.join(PLURALS)}") from None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, name = obj["kind"], obj["metadata"]["name"]
        ns = obj["metadata"].get("namespace", self.namespace)
        try:
            return self.api.create_namespaced_custom_object(
                GROUP, VERSION, ns, self._plural(kind), obj
            )
        except Exception as e:
            raise _explain(e, f"creating {kind} {ns}/{name}") from None

    def apply(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create, or replace an existing object of that name (e.g. a RayService upgrade).

        Returns (object, created). Replacing keeps the server's resourceVersion, so a concurrent
        change is refused (409) instead of overwritten.
        """
        from kubernetes.client.exceptions import ApiException

        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            return self.api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, self._plural(kind), obj
            ), True
        except ApiException as e:
            if e.status != 409:
                raise _explain(e, f"creating {kind} {self.namespace}/{name}") from None
        current = self.get(kind, name)
        body = {
            **obj,
            "metadata": {
                **obj["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
        }
        try:
            return self.api.replace_namespaced_custom_object(
                GROUP, VERSION, self.namespace, self._plural(kind), name, body
            ), False
        except Exception as e:
            raise _explain(e, f"replacing {kind} {self.namespace}/{name}") from None

    def get(self, kind: str, name: str) -> dict[str, Any]:
        try:
            return self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, self._plural(kind), name
            )
        except Exception as e:
            raise _explain(e, f"getting {kind} {self.namespace}/{name}") from None

    def list(self, kind: str, all_objects: bool = False) -> list[dict[str, Any]]:
        """This platform's objects (label app.kubernetes.io/part-of=vljepa), or all of the kind."""
        selector = "" if all_objects else ",".join(f"{k}={v}" for k, v in PART_OF.items())
        try:
            out = self.api.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, self._plural(kind), label_selector=selector
            )
        except Exception as e:
            raise _explain(e, f"listing {kind}s in {self.namespace}") from None
        return sorted(
            out.get("items", []), key=lambda o: o["metadata"].get("creationTimestamp", "")
        )

    def delete(self, kind: str, name: str) -> None:
        """Delete in the foreground policy's absence: the operator's owner references cascade."""
        try:
            self.api.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, self._plural(kind), name
            )
        except Exception as e:
            raise _explain(e, f"deleting {kind} {self.namespace}/{name}") from None

    def stop(self, name: str) -> dict[str, Any]:
        """Stop a RayJob the KubeRay way: spec.suspend=true (the operator deletes its cluster)."""
        try:
            return self.api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "rayjobs", name, {"spec": {"suspend": True}}
            )
        except Exception as e:
            raise _explain(e, f"stopping RayJob {self.namespace}/{name}") from None


# --------------------------------------------------------------------------- reading status


def job_state(obj: dict[str, Any]) -> tuple[str, str]:
    st = obj.get("status") or {}
    return st.get("jobDeploymentStatus") or "New", st.get("jobStatus") or ""


def dashboard_url(obj: dict[str, Any]) -> str | None:
    url = (obj.get("status") or {}).get("dashboardURL")
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def is_terminal(obj: dict[str, Any]) -> bool:
    dep, _ = job_state(obj)
    return dep in {"Complete", "Suspended"} | DEPLOYMENT_FAILED


def exit_code(obj: dict[str, Any]) -> int:
    dep, js = job_state(obj)
    return EXIT_OK if dep == "Complete" and js == "SUCCEEDED" else EXIT_FAILED


def describe(obj: dict[str, Any]) -> str:
    """One status line: deployment status, job status, reason and message when the operator set them."""
    dep, js = job_state(obj)
    st = obj.get("status") or {}
    md = obj["metadata"]
    line = f"RayJob {md.get('namespace', 'default')}/{md['name']}: {dep}"
    if js:
        line += f" / job {js}"
    if st.get("reason"):
        line += f" (reason: {st['reason']})"
    if st.get("message"):
        line += f": {st['message']}"
    return line


def _false_conditions(obj: dict[str, Any]) -> list[str]:
    conds = ((obj.get("status") or {}).get("rayClusterStatus") or {}).get("conditions") or []
    return [
        f"{c.get('type')}={c.get('status')} ({c.get('reason')}): {c.get('message')}".rstrip(": ")
        for c in conds
        if c.get("status") != "True"
        and c.get("type") in {"HeadPodReady", "RayClusterProvisioned", "ReplicaFailure"}
    ]


def _pod_asks(obj: dict[str, Any]) -> str:
    """What the head and workers request: the usual reason nothing gets scheduled."""
    rcs = (obj.get("spec") or {}).get("rayClusterSpec") or {}
    try:
        head = rcs["headGroupSpec"]["template"]["spec"]["containers"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    req = (head.get("resources") or {}).get("requests") or {}
    parts = [f"head {req.get('cpu', '?')} CPU/{req.get('memory', '?')}"]
    for g in rcs.get("workerGroupSpecs") or []:
        try:
            greq = g["template"]["spec"]["containers"][0].get("resources", {}).get("requests", {})
        except (KeyError, IndexError, TypeError):
            continue
        gpu = f"/{greq['nvidia.com/gpu']} GPU" if "nvidia.com/gpu" in greq else ""
        parts.append(
            f"{g.get('replicas', g.get('minReplicas', 0))}x {g.get('groupName')} "
            f"{greq.get('cpu', '?')} CPU/{greq.get('memory', '?')}{gpu}"
        )
    return f"image {head.get('image')}; requests: {', '.join(parts)}"


def why_stuck(obj: dict[str, Any], seconds: float) -> str:
    """Why a RayJob has not moved for `seconds`, with the command that shows more."""
    md = obj["metadata"]
    name, ns = md["name"], md.get("namespace", "default")
    dep, js = job_state(obj)
    st = obj.get("status") or {}
    cluster = st.get("rayClusterName")
    conds = _false_conditions(obj)
    cond_text = f"; the operator reports {'; '.join(conds)}" if conds else ""
    if not st:
        return (
            f"RayJob {ns}/{name} has no status after {seconds:.0f}s: no KubeRay operator has picked "
            f"it up — is the operator installed and watching namespace {ns}? "
            "(kubectl get pods -A -l app.kubernetes.io/name=kuberay-operator)"
        )
    if dep in INITIALIZING:
        describe_cmd = (
            f"kubectl describe raycluster {cluster} -n {ns}; kubectl get pods -n {ns} -l ray.io/cluster={cluster}"
            if cluster
            else f"kubectl get raycluster -n {ns} -l ray.io/originated-from-cr-name={name}; kubectl describe rayjob {name} -n {ns}"
        )
        return (
            f"RayJob {ns}/{name} still {dep} after {seconds:.0f}s: head pod not ready: image pull? "
            f"resources? ({_pod_asks(obj)}){cond_text} — {describe_cmd}"
        )
    if dep == "Running" and js in {"", "PENDING"}:
        return (
            f"RayJob {ns}/{name} is Running but the Ray job is still {js or 'not submitted'} after "
            f"{seconds:.0f}s: the submitter has not reached the head, or the driver waits for "
            f"resources{cond_text} — kubectl logs -n {ns} job/{name}; kubectl describe rayjob {name} -n {ns}"
        )
    if dep == "Waiting":
        return f"RayJob {ns}/{name} is Waiting for a job to be submitted (InteractiveMode) after {seconds:.0f}s"
    if dep == "Retrying":
        return (
            f"RayJob {ns}/{name} is Retrying (failed {st.get('failed', 0)} time(s)): "
            f"{st.get('message', 'see kubectl describe rayjob')}"
        )
    return (
        f"RayJob {ns}/{name} has been {dep}{' / ' + js if js else ''} for {seconds:.0f}s{cond_text}"
    )


# --------------------------------------------------------------------------- following a job


@dataclass
class FollowResult:
    code: int
    obj: dict[str, Any] | None
    reason: str


def follow_rayjob(
    objs: RayObjects,
    name: str,
    *,
    timeout_s: float | None = None,
    stuck_after_s: float = 300.0,
    emit: Callable[[str], None] = print,
    poll_s: float = 5.0,
) -> FollowResult:
    """Print each transition of a RayJob until it ends; say why it is stuck when it does not move.

    Returns EXIT_OK on Complete/SUCCEEDED, EXIT_FAILED on Failed, Suspended, a failed Ray job or a
    deleted RayJob, and EXIT_TIMEOUT (with the stuck diagnosis) when `timeout_s` passes first.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    start = time.monotonic()
    deadline = start + timeout_s if timeout_s else float("inf")
    obj = objs.get("RayJob", name)
    last_state: tuple[str, str] | None = None
    state_since = start
    stuck_reported: tuple[str, str] | None = None
    shown_url: str | None = None

    def observe(o: dict[str, Any]) -> None:
        nonlocal last_state, state_since, shown_url
        state = job_state(o)
        if state != last_state:
            emit(describe(o))
            last_state, state_since = state, time.monotonic()
        url = dashboard_url(o)
        if url and url != shown_url:
            emit(
                f"dashboard: {url}  (from outside the cluster: kubectl port-forward -n "
                f"{objs.namespace} svc/{_head_service(o)} 8265:8265)"
            )
            shown_url = url

    observe(obj)
    while True:
        if is_terminal(obj):
            code = exit_code(obj)
            return FollowResult(code, obj, "succeeded" if code == EXIT_OK else describe(obj))
        now = time.monotonic()
        if now >= deadline:
            reason = why_stuck(obj, now - state_since)
            emit(f"timed out after {now - start:.0f}s waiting; {reason}")
            emit(
                f"the RayJob is left as it is: vljepa jobs delete {name} --k8s -n {objs.namespace}"
            )
            return FollowResult(EXIT_TIMEOUT, obj, reason)
        if now - state_since >= stuck_after_s and stuck_reported != last_state:
            emit(f"stuck? {why_stuck(obj, now - state_since)}")
            stuck_reported = last_state
        # Sleep in the watch until an event, the next stuck check, or the deadline.
        wake = deadline
        if stuck_reported != last_state:
            wake = min(wake, state_since + stuck_after_s)
        wait_s = max(1, math.ceil(min(wake - now, poll_s)))
        rv = obj["metadata"].get("resourceVersion")
        w = watch.Watch()
        try:
            for event in w.stream(
                objs.api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                objs.namespace,
                "rayjobs",
                field_selector=f"metadata.name={name}",
                resource_version=rv,
                timeout_seconds=wait_s,
                _request_timeout=wait_s + 10,
            ):
                if event["type"] == "DELETED":
                    emit(f"RayJob {objs.namespace}/{name} was deleted")
                    return FollowResult(EXIT_FAILED, None, "deleted")
                if event["type"] in {"ADDED", "MODIFIED"}:
                    obj = event["object"]
                    observe(obj)
                    if is_terminal(obj):
                        w.stop()
                        break
        except ApiException as e:
            if e.status != 410:  # 410 Gone: resourceVersion too old; re-read below
                raise _explain(e, f"watching RayJob {objs.namespace}/{name}") from None
            obj = objs.get("RayJob", name)
            observe(obj)
        except Exception as e:  # a dropped connection: fall back to reading once
            log.debug("watch ended: %r", e)
            try:
                obj = objs.get("RayJob", name)
            except K8sError as ge:
                if "HTTP 404" in str(ge):
                    emit(f"RayJob {objs.namespace}/{name} was deleted")
                    return FollowResult(EXIT_FAILED, None, "deleted")
                raise
            observe(obj)


def _head_service(obj: dict[str, Any]) -> str:
    url = (obj.get("status") or {}).get("dashboardURL") or ""
    host = url.split("://")[-1].split(":")[0].split(".")[0]
    return (
        host
        or f"{(obj.get('status') or {}).get('rayClusterName', obj['metadata']['name'])}-head-svc"
    )
