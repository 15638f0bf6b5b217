"""The test session's own Kubernetes namespace: created at the start, emptied and deleted at the
end, and a guard that fails the session if a test object landed anywhere else.

Why: a test that forgets `-n` puts its RayJob in `default`, and on a real cluster (only ever used
with VLJEPA_TEST_USE_KUBECONFIG=1) that is somebody's namespace. Every ray.io object the
session makes lives in one uniquely named namespace; the guard compares a cluster-wide listing of
ray.io objects before and after the session and names every object that appeared elsewhere.

The local API server (../shared/tools/kube) serves no core API, so it has no Namespace objects:
a custom object can be created in any namespace name, and "creating" the namespace there means
choosing an unused name. A full cluster gets a real Namespace, deleted at the end.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

# The explicit opt-in to run the k8s tests against the cluster an inherited KUBECONFIG names.
OPT_IN_VAR = "VLJEPA_TEST_USE_KUBECONFIG"
NAMESPACE_PREFIX = "vljepa-test-"
# Another session's namespace (concurrent sessions on one opted-in cluster are not strays).
_SESSION_NS = re.compile(rf"^{re.escape(NAMESPACE_PREFIX)}[0-9a-f]{{10}}$")
# What KUBECONFIG is set to when no kubeconfig fixture is active: a path that cannot exist, so a
# test that reaches Kubernetes without the fixture fails instead of using ~/.kube/config.
NO_KUBECONFIG = "/nonexistent/vljepa-tests-use-the-kubeconfig-fixture"
# Variables through which a client finds a cluster without a kubeconfig (inside a pod).
IN_CLUSTER_VARS = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def opted_in() -> bool:
    """VLJEPA_TEST_USE_KUBECONFIG=1 (or true/yes): use the inherited KUBECONFIG as it is."""
    return os.environ.get(OPT_IN_VAR, "").strip().lower() in {"1", "true", "yes"}


def new_namespace_name() -> str:
    """A DNS label nobody else holds: vljepa-test-<10 hex digits>."""
    return f"{NAMESPACE_PREFIX}{secrets.token_hex(5)}"


@dataclass(frozen=True, order=True)
class ObjRef:
    """One ray.io object, identified by uid (a deleted and recreated object is a new one)."""

    namespace: str
    plural: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.plural} {self.namespace}/{self.name}"


def _plurals() -> tuple[str, ...]:
    from cluster.kuberay import PLURALS

    return tuple(sorted(PLURALS.values()))


def snapshot(api_client: Any) -> set[ObjRef]:
    """Every RayJob, RayCluster and RayService on the server, in every namespace."""
    from kubernetes import client

    from cluster.kuberay import GROUP, VERSION

    api = client.CustomObjectsApi(api_client)
    out: set[ObjRef] = set()
    for plural in _plurals():
        for o in api.list_cluster_custom_object(GROUP, VERSION, plural)["items"]:
            md = o["metadata"]
            out.add(ObjRef(md.get("namespace", ""), plural, md["name"], md.get("uid", "")))
    return out


def strays(before: set[ObjRef], after: set[ObjRef], namespace: str) -> list[ObjRef]:
    """Objects that appeared since `before` outside `namespace` (and outside other sessions')."""
    return sorted(
        o for o in after - before if o.namespace != namespace and not _SESSION_NS.match(o.namespace)
    )


def _has_core_namespaces(api_client: Any) -> bool:
    """False on the CRD-only local server (its /api/v1 lists no resources)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        resources = client.CoreV1Api(api_client).get_api_resources().resources or []
    except ApiException as e:
        if e.status == 404:  # no core group at all
            return False
        raise
    return any(r.name == "namespaces" for r in resources)


@dataclass
class SessionNamespace:
    """The session's namespace on one server: `open()` makes it, `close()` removes it."""

    kubeconfig: str
    name: str
    created: bool = False  # a real Namespace object was made (full clusters only)
    before: set[ObjRef] = field(default_factory=set)
    _client: Any = None

    def api_client(self) -> Any:
        if self._client is None:
            from kubernetes import config

            self._client = config.new_client_from_config(config_file=self.kubeconfig)
        return self._client

    def open(self) -> SessionNamespace:
        from kubernetes import client

        if _has_core_namespaces(self.api_client()):
            body = {
                "metadata": {
                    "name": self.name,
                    "labels": {"app.kubernetes.io/part-of": "vljepa-tests"},
                }
            }
            client.CoreV1Api(self.api_client()).create_namespace(body)
            self.created = True
        self.before = snapshot(self.api_client())
        return self

    def close(self) -> list[ObjRef]:
        """Delete every ray.io object in the namespace (and the Namespace); return the strays."""
        from kubernetes import client

        from cluster.kuberay import GROUP, VERSION

        after = snapshot(self.api_client())
        api = client.CustomObjectsApi(self.api_client())
        for o in sorted(after):
            if o.namespace == self.name:
                api.delete_namespaced_custom_object(GROUP, VERSION, o.namespace, o.plural, o.name)
        if self.created:
            client.CoreV1Api(self.api_client()).delete_namespace(self.name)
        left = [o for o in snapshot(self.api_client()) if o.namespace == self.name]
        if left and not self.created:  # a real Namespace's deletion takes its objects along
            raise AssertionError(f"objects left in {self.name}: {', '.join(map(str, left))}")
        return strays(self.before, after, self.name)
