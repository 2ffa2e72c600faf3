"""A small async Kubernetes client and the idempotent apply the reconciler uses.

Why not server-side apply: the test API server (kmock's emulator) has no apply-patch semantics (no field
ownership, no create-on-apply), so a test would pass against behaviour a real cluster does not have. A GET,
then a POST when absent or a JSON merge patch of exactly the fields the builders set when they differ,
converges the same way on both: the object ends up holding the built fields, and fields other controllers
own (the Deployment's status, an HPA's annotations) are left alone. The merge patch replaces lists whole,
which is what the builders mean: their containers and ports lists are the desired lists. On a real API
server the fields it defaults inside such lists (a container's terminationMessagePath) make them differ on
every run: the patch is then written again, and the server, finding nothing changed, keeps the version.
"""

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
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
# Read across the cluster, for GPU capacity.
NODES_PATH = "/api/v1/nodes"
ALL_PODS_PATH = "/api/v1/pods"


class ApiError(Exception):
    """A response other than the one expected, with the API server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


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


def matches(obj: Obj, selector: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass
class KubeApi:
    """The operator's own client: the same server and credentials kopf logged in with."""

    session: aiohttp.ClientSession
    server: str

    @classmethod
    def connect(cls, info: kopf.ConnectionInfo, *, timeout: float, user_agent: str) -> "KubeApi":
        # The user agent tells the operator's writes apart in the API server's audit log.
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info)),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        return cls(session, info.server.rstrip("/"))

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
        return await self._call("DELETE", path) is not None

    async def apply(self, desired: Obj) -> Obj:
        """Create `desired`, or patch the live object until it holds every field `desired` sets."""
        meta = desired["metadata"]
        path = object_path(desired["kind"], meta["namespace"], meta["name"])
        live = await self.get(path)
        if live is None:
            try:
                return await self.create(object_path(desired["kind"], meta["namespace"]), desired)
            except ApiError as exc:
                # Created between the read and the write (the timer and an event handler both at work):
                # patch the object that won instead.
                if exc.status != 409:
                    raise
                live = await self.get(path)
                if live is None:
                    raise
        if not differs(desired, live):
            return live
        patched = await self.merge_patch(path, desired)
        # Deleted between the read and the patch: the next reconcile creates it.
        return live if patched is None else patched
