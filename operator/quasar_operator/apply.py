"""A small async Kubernetes client and the server-side apply the reconciler uses for every child.

Server-side apply (one field manager, `quasar-operator`): the operator sends each child's whole desired
configuration; the API server creates the object when absent, sets the fields the configuration names,
removes the ones the operator set before and no longer does, and leaves every other manager's fields
alone (the Deployment controller's status, an HPA's or a person's annotations). Lists merge by their keys
(containers by name), so the server's defaults inside them never count as a difference.

Conflicts: every apply is sent with `force=true`. The Kubernetes documentation recommends it for
controllers: the operator is the one writer of the fields it sets, a conflict means someone else changed
one of them (`kubectl edit` of a child), and the operator has no one to ask, so it takes the field back;
that is its drift repair. Fields it does not set stay with whoever set them.

No write when nothing changed: an apply that changes nothing still costs a request, an audit entry and
an etcd read. After each apply the client remembers what it sent and what the server then recorded for
it: the object's uid and generation and the operator's own `managedFields` entry. The next reconcile reads
the object (a GET, as before) and applies only when one of those differs: a new desired configuration;
the object deleted and re-created (a new uid); its spec changed (a new generation); or another manager
took over one of the operator's fields (the entry lost it: an update by someone else owns what it
changed). A restarted operator remembers nothing and applies each child once.
"""

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

Obj = dict[str, Any]

# kind -> (API prefix, plural) for what the operator reads and writes.
_RESOURCES: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Secret": ("/api/v1", "secrets"),
    "Pod": ("/api/v1", "pods"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
}
# The API server's metadata-only view of an object (the one Kubernetes' garbage collector reads): metadata
# without spec, status or a Secret's data. Every API server since 1.15 serves it.
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
# Read across the cluster, for GPU capacity.
NODES_PATH = "/api/v1/nodes"
ALL_PODS_PATH = "/api/v1/pods"


class ApiError(Exception):
    """A response other than the one expected, with the API server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def object_path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = _RESOURCES[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return path if name is None else f"{path}/{name}"


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    if not info.server.startswith("https"):
        return True
    ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
    context = ssl.create_default_context(cafile=info.ca_path, cadata=ca_data)
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(info.certificate_path, info.private_key_path)
    return context


def differs(desired: Any, actual: Any) -> bool:
    """Whether a merge patch of `desired` would change `actual`: the fields the builders set, not others."""
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return True
        return any(differs(value, actual.get(key)) for key, value in desired.items())
    return bool(desired != actual)


def without_nulls(value: Any) -> Any:
    """The builders' `None` means "not set": an apply configuration then leaves the field out (a field the
    operator set before and leaves out now is removed by the API server)."""
    if isinstance(value, Mapping):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


@dataclass(frozen=True)
class Applied:
    """What an apply sent and what the API server recorded for it: equal before and after means the object
    holds the operator's configuration untouched (see the module's docstring)."""

    sent: str
    uid: str | None
    generation: int | None
    fields: Any

    @classmethod
    def of(cls, config: Obj, live: Obj, manager: str) -> "Applied":
        meta = live.get("metadata") or {}
        ours = [
            entry.get("fieldsV1")
            for entry in meta.get("managedFields") or []
            if entry.get("manager") == manager and entry.get("operation") == "Apply"
        ]
        return cls(json.dumps(config, sort_keys=True), meta.get("uid"), meta.get("generation"), ours)


def matches(obj: Obj, selector: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass
class KubeApi:
    """The operator's own client: the same server and credentials kopf logged in with."""

    session: aiohttp.ClientSession
    server: str
    field_manager: str
    # Path -> what the last apply there sent and produced.
    applied: dict[str, Applied] = field(default_factory=dict)

    @classmethod
    def connect(
        cls, info: kopf.ConnectionInfo, *, timeout: float, user_agent: str, field_manager: str = ""
    ) -> "KubeApi":
        # The user agent tells the operator's writes apart in the API server's audit log.
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info)),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        return cls(session, info.server.rstrip("/"), field_manager or user_agent)

    async def close(self) -> None:
        await self.session.close()

    async def _call(
        self, method: str, path: str, body: Obj | None = None, content_type: str = "", accept: str = ""
    ) -> Obj | None:
        try:
            return await self._request(method, path, body, content_type, accept)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # An unreachable or slow API server is one more API error: reported and retried like the others.
            raise ApiError(0, f"{method} {path}: {exc!r}") from exc

    async def _request(
        self, method: str, path: str, body: Obj | None, content_type: str, accept: str
    ) -> Obj | None:
        headers = {"Content-Type": content_type or "application/json"} if body is not None else {}
        if accept:
            headers["Accept"] = accept
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.server + path, data=data, headers=headers) as response:
            if response.status == 404:
                return None
            if response.status >= 400:
                text = await response.text()
                try:
                    message = str(json.loads(text).get("message", text))
                except ValueError:
                    message = text
                raise ApiError(response.status, message)
            result: Obj = await response.json(content_type=None)
            return result

    async def get(self, path: str) -> Obj | None:
        """The object, or None when it does not exist."""
        return await self._call("GET", path)

    async def get_metadata(self, path: str) -> Obj | None:
        """The object's metadata alone, or None when it does not exist: the API server sends neither its
        spec nor its data (a Secret's values never reach the operator)."""
        found = await self._call("GET", path, accept=PARTIAL_METADATA)
        if found is None:
            return None
        if found.get("kind") != "PartialObjectMetadata":
            # A server that ignored the Accept header sent the whole object (a Secret's values too): an error,
            # so that it is noticed rather than silently relied on.
            raise ApiError(406, f"GET {path}: the API server did not send metadata only")
        metadata: Obj = found.get("metadata") or {}
        return metadata

    async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[Obj]:
        """The items of a collection. The API server filters by `label_selector`; so does this, so that a
        server which ignores it (the test emulator) cannot hand back another resource's objects."""
        selector = label_selector or {}
        query = (
            "?labelSelector=" + quote(",".join(f"{k}={v}" for k, v in selector.items())) if selector else ""
        )
        found = await self._call("GET", path + query)
        items: list[Obj] = (found or {}).get("items") or []
        return [item for item in items if matches(item, selector)]

    async def create(self, path: str, body: Obj) -> Obj:
        created = await self._call("POST", path, body)
        if created is None:
            raise ApiError(404, f"{path} does not exist")
        return created

    async def merge_patch(self, path: str, patch: Obj) -> Obj | None:
        return await self._call("PATCH", path, patch, "application/merge-patch+json")

    async def delete(self, path: str) -> bool:
        """Delete the object; False when it was already gone."""
        self.applied.pop(path, None)
        return await self._call("DELETE", path) is not None

    async def apply(self, desired: Obj) -> Obj:
        """Server-side apply of `desired` (created when absent), unless the object holds it already."""
        meta = desired["metadata"]
        path = object_path(desired["kind"], meta["namespace"], meta["name"])
        config: Obj = without_nulls(desired)
        live = await self.get(path)
        if live is not None and self.applied.get(path) == Applied.of(config, live, self.field_manager):
            return live
        query = f"?fieldManager={quote(self.field_manager)}&force=true"
        result = await self._call("PATCH", path + query, config, APPLY_PATCH)
        if result is None:  # the namespace is gone (a 404 from an apply means nothing else)
            raise ApiError(404, f"{path}: namespace {meta['namespace']} does not exist")
        self.applied[path] = Applied.of(config, result, self.field_manager)
        return result
