"""Every adaptation the operator's integration tests make to `kmock.KubernetesEmulator`, in one place.

kmock emulates an API server in memory over HTTP; kopf runs against it with these adaptations:

1. kopf runs cluster-wide (`Settings(namespaces=None)`): listing namespaces fails in kmock 0.8.
2. Objects get `metadata.uid`, `resourceVersion`, `generation` and `creationTimestamp`, which kmock
   never sets: kopf compares resource versions after its patches, and the status reports the generation.
3. A JSON patch whose `test` operation fails answers 422, as a real API server does, not 500.
4. For benchmarks only (`log_requests=False`): kmock matches every request against its whole request log,
   so N requests cost O(N²) in the emulator, which would be measured as the operator's time. Without the
   log, only the requests still being served are kept; what is served does not change.
5. A list honours an equality `labelSelector` (`k=v,k2=v2`), as a real API server does; kmock answers every
   object. The operator filters what it lists by labels itself too, so no test passes on this; without it
   each miner's reconcile would download every Deployment, and a benchmark would measure that.
6. A GET that asks for `PartialObjectMetadata` (the Accept header the operator's wallet check sends) gets
   the object's metadata alone, as from a real API server; kmock would send the whole object.
7. In that view an object with `data` (a Secret) lists its data keys in `managedFields`, as a real API
   server's field manager records them (kmock records none), unless the object was stored with its own.
8. An object created with `generateName` and no name gets a name no other object has, as from a real API
   server (which retries a random suffix that is taken): kmock keeps it nameless, so a second Event (kopf
   names them `kopf-event-...`) answered 409 and was lost. A counter, not a random suffix: five random hex
   digits collided among the malformed-objects test's thousand Events.
9. A list answers its resourceVersion, and a watch from it leaves out the objects the list held, as a real
   API server's does: kmock's watch replays every object, and kopf, handling each twice, patched the second
   time with a stale version (422) and then waited for a change that never came.

10. A merge patch that brings an object where the live value is not one (a status that is a string), or
    the reverse, replaces the value, as RFC 7386 says; kmock answered 500 and kept the value.
11. A server-side apply (`PATCH` as `application/apply-patch+yaml`, the operator's one way of writing its
    children) creates the object when absent and is otherwise served as a merge patch. An approximation:
    no field ownership (no managedFields, so no fields removed when the operator stops setting them, no
    conflicts, `force` ignored) and lists replaced whole rather than merged by key. The real semantics are
    tested on the real API server (tests/e2e/test_operator_*.py).

Where kmock remains, and why (every other operator behaviour test runs on the real control plane,
tests/e2e/test_operator_lifecycle.py and test_operator_scaling.py): tests/test_operator.py, for objects the
real API server refuses at admission (invalid and malformed specs) and for the request log that proves a
Secret is read as metadata only; tests/test_dashboards.py, which only needs a running operator's /metrics
page in a unit test.

What kmock does not emulate, the tests must not lean on: there is no /status subresource (a status patch
is a plain merge), no garbage collection (the operator's own cleanup deletes children; the tests check
owner references explicitly) and no PUT.
"""

import asyncio
import contextlib
import datetime
import itertools
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kopf
from quasar_operator.apply import APPLY_PATCH, KubeApi
from quasar_operator.cli import run
from quasar_operator.settings import Settings

Obj = dict[str, Any]
T = TypeVar("T")

# The resources the operator watches, reads and writes, as the API server's discovery lists them.
RESOURCES = {
    # kopf waits for namespaces to be discoverable even when it runs cluster-wide and never lists them.
    "v1/namespaces": ("Namespace", "namespace"),
    "quasar.ai/v1alpha1/quasarminers": ("QuasarMiner", "quasarminer"),
    "quasar.ai/v1alpha1/quasarvalidators": ("QuasarValidator", "quasarvalidator"),
    "apps/v1/deployments": ("Deployment", "deployment"),
    "apps/v1/statefulsets": ("StatefulSet", "statefulset"),
    "v1/services": ("Service", "service"),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", "persistentvolumeclaim"),
    "v1/secrets": ("Secret", "secret"),
    "v1/events": ("Event", "event"),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", "poddisruptionbudget"),
    # Read for placement and autoscaling (no test here has pods or nodes: they place on the real cluster).
    "v1/pods": ("Pod", "pod"),
    "v1/nodes": ("Node", "node"),
}
CLUSTER_SCOPED = ("Namespace", "Node")
VERBS = ["list", "watch", "get", "create", "patch", "delete"]

# The tests' own requests, told apart from the operator's (kopf's and its own client's).
TEST_AGENT = "quasar-tests"

# Fast enough for a test, slow enough that every timer tick is not a reconcile storm.
TEST_SETTINGS = Settings(
    namespaces=None,
    listen_address="127.0.0.1",
    drift_interval=1.0,
    retry_delay=0.5,
    watch_server_timeout=10,
    watch_client_timeout=15,
)


class Emulator(kmock.KubernetesEmulator):
    """Adaptations 2 to 11."""

    _versions = itertools.count(1)
    _generated_names = itertools.count(1)

    def __init__(self, *, log_requests: bool = True) -> None:
        super().__init__()
        self.log_requests = log_requests
        self._serving: list[kmock.Request] = []

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if self.log_requests:
            return await self._serve(request)
        # Adaptation 4: kmock appended `request` to its log just before; keep only what is in flight.
        self._serving.append(request)
        self._requests[:] = self._serving
        try:
            return await self._serve(request)
        finally:
            self._serving = [r for r in self._serving if r is not request]

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        """Adaptation 5: equality label selectors; any other selector is answered unfiltered, as by kmock.
        Adaptation 9: the list's resourceVersion, from which a watch goes on."""
        payload = await super()._serve_list(request)
        assert isinstance(payload, dict)
        versions = [_version(item) for item in payload["items"]]
        payload["metadata"] = {**payload["metadata"], "resourceVersion": str(max(versions, default=0))}
        terms = [term.partition("=") for term in request.params.get("labelSelector", "").split(",") if term]
        if not terms or any(not sep or key.endswith("!") for key, sep, _ in terms):
            return payload
        wanted = {key: value.removeprefix("=") for key, _, value in terms}
        items = [
            item
            for item in payload["items"]
            if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        return {**payload, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """Adaptation 9: a watch from a list's resourceVersion skips the objects that list already held."""
        since = request.params.get("resourceVersion", "")
        after = int(since) if since.isdigit() else 0
        async for event in super()._serve_watch(request):
            if not (
                isinstance(event, dict)
                and event.get("type") == "ADDED"
                and _version(event["object"]) <= after
            ):
                yield event

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        """Adaptations 6 and 7: the metadata-only view, with the data keys' field records."""
        payload = await super()._serve_fetch(request)
        if "as=PartialObjectMetadata" not in request.headers.get("Accept", ""):
            return payload
        assert isinstance(payload, dict)
        metadata = dict(payload["metadata"])
        if "managedFields" not in metadata and isinstance(payload.get("data"), dict):
            fields: Obj = {"f:data": {f"f:{key}": {} for key in payload["data"]}, "f:type": {}}
            metadata["managedFields"] = [
                {"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1", "fieldsV1": fields}
            ]
        return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": metadata}

    def _substitute(self, old: kmock.Request, new: kmock.Request) -> kmock.Request:
        """Serve `new` in place of `old`: kmock answers only requests found in its log (adaptation 4)."""
        self._requests[:] = [new if r is old else r for r in self._requests]
        self._serving = [new if r is old else r for r in self._serving]
        return new

    def _absent(self, request: kmock.Request) -> bool:
        assert request.resource is not None  # an apply names its object
        key = (request.resource, request.namespace, request.name or "")
        return key not in self.objects or self.objects[key].deleted

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Adaptations 2, 3 and 8: the metadata a real API server sets on a write; 422 on a failed test.
        Adaptation 11: an apply of an absent object creates it."""
        if _is_apply(request) and self._absent(request):
            request = self._substitute(
                request, attrs.evolve(request, method="POST", action=kmock.action.CREATE, name=None)
            )
        data = request.data
        if request.resource is not None and isinstance(data, list):
            # A JSON patch (kopf's finalizers and progress annotations) moves the version too.
            data.append(
                {"op": "add", "path": "/metadata/resourceVersion", "value": str(next(self._versions))}
            )
        elif request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = f"{meta['generateName']}{next(self._generated_names):05x}"
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).isoformat())
                meta["generation"] = 1
                meta["resourceVersion"] = str(next(self._versions))
            elif request.action == kmock.action.UPDATE:
                meta["resourceVersion"] = str(next(self._versions))
                key = (request.resource, request.namespace, request.name or "")
                if key in self.objects and not self.objects[key].deleted:
                    live = self.objects[key]
                    _make_room(live.last, data)  # adaptation 10
                    if "spec" in data:
                        # A real API server bumps the generation on spec changes only.
                        meta["generation"] = int(live.get("metadata", {}).get("generation", 0)) + 1
        try:
            response: aiohttp.web.StreamResponse = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            # Adaptation 3: a JSON patch whose `test` fails is a 422 (kopf then re-reads and retries the
            # patch on its next cycle); kmock answers 500, which kopf retries as is, forever stale.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
        return response


def _is_apply(request: kmock.Request) -> bool:
    return request.method == "PATCH" and request.headers.get("Content-Type", "").startswith(APPLY_PATCH)


def _make_room(live: MutableMapping[str, Any], patch: Mapping[str, Any]) -> None:
    """Adaptation 10: where a merge patch and the live object disagree on whether a value is an object,
    RFC 7386 takes the patch's; kmock refuses (500). The live value is made one the patch can overwrite."""
    # kmock's version view wraps nested objects in copies; its `raw` shares them, so writes go through.
    values = getattr(live, "raw", live)
    for key, value in patch.items():
        current = values.get(key)
        if isinstance(value, Mapping) and isinstance(current, MutableMapping):
            _make_room(current, value)
        elif key in values and isinstance(value, Mapping) != isinstance(current, Mapping):
            live[key] = {} if isinstance(value, Mapping) else None


def _version(obj: Obj) -> int:
    version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
    return int(version) if version.isdigit() else 0


@contextlib.asynccontextmanager
async def emulator(*, log_requests: bool = True) -> AsyncIterator[Emulator]:
    async with Emulator(log_requests=log_requests) as server, kmock.Server(server):
        for key, (kind, singular) in RESOURCES.items():
            server.resources[key] = kmock.ResourceInfo(
                kind=kind, singular=singular, namespaced=kind not in CLUSTER_SCOPED, verbs=VERBS
            )
        yield server


def url(server: Emulator) -> str:
    return str(server.url).rstrip("/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def operator(server: Emulator, settings: Settings = TEST_SETTINGS) -> AsyncIterator[Settings]:
    """The real operator (`quasar operator run`'s code path) against the emulator, until the block ends.

    It yields the settings it runs with (its liveness endpoint is on a free port).
    """
    stop, ready = asyncio.Event(), asyncio.Event()
    settings = replace(settings, namespaces=None, liveness_port=free_port())  # namespaces: adaptation 1
    task = asyncio.create_task(
        run(settings, connection=kopf.ConnectionInfo(server=url(server)), stop_flag=stop, ready_flag=ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield settings
    finally:
        stop.set()
        # kopf lets timers mid-reconcile finish (instant_exit_timeout, 10 s) for each of many objects; on a
        # loaded machine with hundreds of them that takes more than 15 s.
        await asyncio.wait_for(task, 60)


def operator_patches(server: Emulator, plural: str) -> list[list[str]]:
    """The paths each PATCH by the operator (not the tests) touched in resources of `plural`."""
    return [
        [op["path"] for op in r.data] if isinstance(r.data, list) else [f"/{key}" for key in r.data]
        for r in server
        if r.headers.get("User-Agent") != TEST_AGENT
        and r.resource is not None
        and r.resource.plural == plural
        and r.method == "PATCH"
    ]


@contextlib.asynccontextmanager
async def client(server: Emulator) -> AsyncIterator[KubeApi]:
    api = KubeApi.connect(kopf.ConnectionInfo(server=url(server)), timeout=10, user_agent=TEST_AGENT)
    try:
        yield api
    finally:
        await api.close()


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until `probe` returns something truthy: the operator works asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        await asyncio.sleep(interval)
