"""The real operator (kopf, `quasar operator run`'s code path) over HTTP against kmock's API server emulator.

What the emulator ignores is never what a test passes on: owner references are checked field by field,
objects are fetched by name (label selectors are not filtered), and children disappear because the
operator deletes them, not through a garbage collector the emulator does not have.
"""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from quasar_operator.apply import PARTIAL_METADATA, KubeApi, object_path

from tests import malformed
from tests.k8s_emulator import (
    TEST_AGENT,
    TEST_SETTINGS,
    Emulator,
    client,
    emulator,
    eventually,
    operator,
    operator_patches,
)

Obj = dict[str, Any]
NS = "miners"
CRS = f"/apis/quasar.ai/v1alpha1/namespaces/{NS}"
DEPLOYMENT = object_path("Deployment", NS, "m1-miner")
MINER_CHILDREN = [
    DEPLOYMENT,
    object_path("Service", NS, "m1-miner"),
    object_path("Service", NS, "m1-miner-metrics"),
    object_path("PersistentVolumeClaim", NS, "m1-miner-cache"),
]

pytestmark = pytest.mark.asyncio


def miner(name: str, wallet: str = "wallet", **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "quasar.ai/v1alpha1",
        "kind": "QuasarMiner",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"id": "Qwen/Qwen2.5-7B-Instruct-1M"},
            "wallet": {"secretName": wallet},
            "subnet": {"netuid": 7},
            # A fixed address: the emulator runs no cloud controller to give a LoadBalancer one.
            "exposure": {"externalIP": "203.0.113.7"},
        },
    }
    body["spec"].update(spec)
    return body


def secret(name: str = "wallet", **extra: str) -> Obj:
    """A wallet Secret as bittensor lays the files out (values base64, as the API server holds them)."""
    data = {
        "hotkey": "eyJzZWNyZXRQaHJhc2UiOiAiLi4uIn0=",
        "coldkeypub.txt": "eyJzczU4QWRkcmVzcyI6ICIuLi4ifQ==",
        **extra,
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data}


def conditions(body: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def owners(obj: Obj) -> list[tuple[str, str, str, bool]]:
    return [
        (ref["apiVersion"], ref["kind"], ref["uid"], ref.get("controller", False))
        for ref in obj["metadata"].get("ownerReferences", [])
    ]


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[tuple[Emulator, KubeApi]]:
    async with emulator() as server, client(server) as api:
        yield server, api


async def wait_for(api: KubeApi, path: str, check: Callable[[Obj], bool], what: str) -> Obj:
    async def probe() -> Obj | None:
        body = await api.get(path)
        return body if body is not None and check(body) else None

    return await eventually(probe, what=what)


async def gone(api: KubeApi, path: str) -> bool:
    return await api.get(path) is None


async def alive(api: KubeApi, port: int) -> bool:
    try:
        async with api.session.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False  # not listening yet


async def events(api: KubeApi, name: str) -> list[Obj]:
    listed = await api.get(f"/api/v1/namespaces/{NS}/events")
    items: list[Obj] = (listed or {}).get("items", [])
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


async def test_miner_lifecycle(cluster: tuple[Emulator, KubeApi]) -> None:
    server, api = cluster
    async with operator(server):
        await api.create(object_path("Secret", NS), secret())
        created = await api.create(f"{CRS}/quasarminers", miner("m1"))
        uid = created["metadata"]["uid"]

        # Create: every child, owned by the resource as its controller; the status says what is on its way.
        body = await wait_for(
            api,
            f"{CRS}/quasarminers/m1",
            lambda b: conditions(b).get("Reconciled", {}).get("status") == "True",
            "Reconciled",
        )
        for path in MINER_CHILDREN:
            child = await api.get(path)
            assert child is not None, path
            assert owners(child) == [("quasar.ai/v1alpha1", "QuasarMiner", uid, True)], path
        state = conditions(body)
        assert state["Reconciled"]["status"] == "True"
        assert (state["Ready"]["status"], state["Ready"]["reason"]) == ("False", "ReplicasNotReady")
        assert (state["Progressing"]["status"], state["Progressing"]["reason"]) == ("True", "RollingOut")
        assert state["Degraded"]["status"] == "False"
        assert body["status"]["observedGeneration"] == 1
        assert body["status"]["endpoint"] == "203.0.113.7:8091"
        assert body["status"]["selector"].startswith("app.kubernetes.io/name=quasar-miner,")

        # The pods become ready (the emulator runs no Deployment controller: the test plays it); the
        # timer, not an event on the resource, notices.
        ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
        await api.merge_patch(DEPLOYMENT, {"status": ready})
        body = await wait_for(
            api,
            f"{CRS}/quasarminers/m1",
            lambda b: conditions(b)["Ready"]["status"] == "True",
            "Ready",
        )
        assert conditions(body)["Progressing"]["reason"] == "RolloutComplete"
        assert body["status"]["readyReplicas"] == 1

        # Update: a new model reaches the engine's flags and the miner's.
        model = {"id": "Qwen/Qwen2.5-14B-Instruct-1M"}
        await api.merge_patch(f"{CRS}/quasarminers/m1", {"spec": {"model": model}})
        deployment = await wait_for(
            api,
            DEPLOYMENT,
            lambda d: (
                "Qwen/Qwen2.5-14B-Instruct-1M" in d["spec"]["template"]["spec"]["containers"][0]["args"]
            ),
            "the new model in the Deployment",
        )
        assert (
            "Qwen/Qwen2.5-14B-Instruct-1M" in deployment["spec"]["template"]["spec"]["containers"][1]["args"]
        )
        await wait_for(
            api, f"{CRS}/quasarminers/m1", lambda b: b["status"]["observedGeneration"] == 2, "generation 2"
        )

        # Drift: an edited Deployment is put back, a deleted one re-created, both by the timer.
        await api.merge_patch(DEPLOYMENT, {"spec": {"replicas": 5}})
        await wait_for(api, DEPLOYMENT, lambda d: d["spec"]["replicas"] == 1, "replicas repaired")
        before = (await api.get(DEPLOYMENT) or {})["metadata"]["uid"]
        assert await api.delete(DEPLOYMENT)
        repaired = await wait_for(api, DEPLOYMENT, lambda d: d["metadata"]["uid"] != before, "re-created")
        assert owners(repaired) == [("quasar.ai/v1alpha1", "QuasarMiner", uid, True)]

        # Delete: the operator removes the children itself, then its finalizer.
        assert await api.delete(f"{CRS}/quasarminers/m1")
        await eventually(lambda: gone(api, f"{CRS}/quasarminers/m1"), what="the resource deleted")
        for path in MINER_CHILDREN:
            assert await gone(api, path), path

    # The operator wrote the resource's status and kopf's bookkeeping, never its spec (an HPA may own
    # spec.replicas), and it kept its marks under its own names.
    written = operator_patches(server, "quasarminers")
    assert written  # the check below is not vacuous
    assert not [paths for paths in written if any(p.startswith("/spec") for p in paths)]
    assert created["metadata"].get("finalizers") is None  # added by the operator, below
    marked = server.objects["quasar.ai/v1alpha1/quasarminers", NS, "m1"].history
    versions = [version["metadata"] for version in marked if version is not None]
    assert any("quasar.ai/finalizer" in meta.get("finalizers", []) for meta in versions)
    annotations = {key for meta in versions for key in meta.get("annotations", {})}
    assert "quasar.ai/last-handled-configuration" in annotations
    assert all(key.startswith("quasar.ai/") for key in annotations), annotations
    assert REGISTRY.get_sample_value(
        "quasar_operator_reconciles_total", {"kind": "QuasarMiner", "outcome": "success"}
    )


async def test_bad_spec_degrades_only_that_resource(cluster: tuple[Emulator, KubeApi]) -> None:
    server, api = cluster
    async with operator(server):
        await api.create(object_path("Secret", NS), secret())
        # The emulator runs no CRD validation: the operator's own parse is what catches this.
        await api.create(f"{CRS}/quasarminers", miner("bad", subnet={"netuid": -1}))
        await api.create(f"{CRS}/quasarminers", miner("m1"))

        body = await wait_for(
            api,
            f"{CRS}/quasarminers/bad",
            lambda b: conditions(b).get("Degraded", {}).get("status") == "True",
            "Degraded",
        )
        degraded = conditions(body)["Degraded"]
        assert degraded["reason"] == "InvalidSpec"
        assert degraded["message"].startswith("spec.subnet.netuid: ")
        assert conditions(body)["Reconciled"]["status"] == "False"
        warned = await eventually(lambda: events(api, "bad"), what="an Event")
        assert [(e["type"], e["reason"]) for e in warned] == [("Warning", "InvalidSpec")]
        assert "spec.subnet.netuid" in warned[0]["message"]
        assert await gone(api, object_path("Service", NS, "bad-miner"))

        # The other resource is served all the same.
        await wait_for(api, DEPLOYMENT, lambda d: True, "the healthy miner's Deployment")

        # Fixing the spec clears the condition.
        await api.merge_patch(f"{CRS}/quasarminers/bad", {"spec": {"subnet": {"netuid": 7}}})
        body = await wait_for(
            api,
            f"{CRS}/quasarminers/bad",
            lambda b: conditions(b)["Degraded"]["status"] == "False",
            "Degraded cleared",
        )
        assert conditions(body)["Reconciled"]["status"] == "True"
        assert await api.get(object_path("Deployment", NS, "bad-miner")) is not None


async def test_missing_secret_then_created(cluster: tuple[Emulator, KubeApi]) -> None:
    server, api = cluster
    async with operator(server):
        await api.create(f"{CRS}/quasarminers", miner("m1", wallet="later"))
        body = await wait_for(
            api,
            f"{CRS}/quasarminers/m1",
            lambda b: conditions(b).get("Degraded", {}).get("reason") == "SecretMissing",
            "SecretMissing",
        )
        assert "Secret miners/later does not exist" in conditions(body)["Degraded"]["message"]
        warned = await eventually(lambda: events(api, "m1"), what="an Event")
        assert [e["reason"] for e in warned] == ["SecretMissing"]
        assert await gone(api, DEPLOYMENT)

        await api.create(object_path("Secret", NS), secret("later"))
        body = await wait_for(
            api,
            f"{CRS}/quasarminers/m1",
            lambda b: conditions(b)["Reconciled"]["status"] == "True",
            "reconciled on retry",
        )
        assert conditions(body)["Degraded"]["status"] == "False"
        assert await api.get(DEPLOYMENT) is not None


async def test_a_coldkey_in_the_wallet_secret_is_refused_unread(cluster: tuple[Emulator, KubeApi]) -> None:
    server, api = cluster
    async with operator(server):
        await api.create(object_path("Secret", NS), secret(coldkey="c2VjcmV0"))
        await api.create(f"{CRS}/quasarminers", miner("m1"))
        body = await wait_for(
            api,
            f"{CRS}/quasarminers/m1",
            lambda b: conditions(b).get("Degraded", {}).get("reason") == "SecretHasColdkey",
            "SecretHasColdkey",
        )
        assert "remove it from the Secret" in conditions(body)["Degraded"]["message"]
        warned = await eventually(lambda: events(api, "m1"), what="an Event")
        assert [(e["type"], e["reason"]) for e in warned] == [("Warning", "SecretHasColdkey")]
        assert await gone(api, DEPLOYMENT)

        # The key removed, the next retry reconciles (a Secret's change brings no event on the miner).
        await api.merge_patch(object_path("Secret", NS, "wallet"), {"data": {"coldkey": None}})
        await wait_for(api, DEPLOYMENT, lambda d: True, "the Deployment")

    # The operator asked for the Secret's metadata only, every time: its values never came to it.
    reads = [r for r in server if r.headers.get("User-Agent") != TEST_AGENT and "/secrets" in str(r.url)]
    assert reads
    assert {(r.method, r.headers.get("Accept")) for r in reads} == {("GET", PARTIAL_METADATA)}


async def test_restart_converges_without_duplicates(cluster: tuple[Emulator, KubeApi]) -> None:
    server, api = cluster
    await api.create(object_path("Secret", NS), secret())
    async with operator(server):
        await api.create(f"{CRS}/quasarminers", miner("m1"))
        await wait_for(api, DEPLOYMENT, lambda d: True, "the Deployment")

    # Changed while no operator runs: the next one picks it up (kopf's diff base is in an annotation).
    await api.merge_patch(f"{CRS}/quasarminers/m1", {"spec": {"replicas": 2}})
    async with operator(server) as settings:
        await eventually(lambda: alive(api, settings.liveness_port), what="kopf's liveness endpoint")
        await wait_for(api, DEPLOYMENT, lambda d: d["spec"]["replicas"] == 2, "the change applied")
        body = await wait_for(
            api, f"{CRS}/quasarminers/m1", lambda b: b["status"]["observedGeneration"] == 2, "generation 2"
        )
        assert conditions(body)["Reconciled"]["status"] == "True"

    # Listed without a selector (the emulator ignores them anyway): exactly one object of each name.
    for kind in ("Deployment", "Service", "PersistentVolumeClaim"):
        listed = await api.get(object_path(kind, NS))
        names = [item["metadata"]["name"] for item in (listed or {}).get("items", [])]
        assert len(names) == len(set(names)), kind
    deployments = await api.get(object_path("Deployment", NS))
    assert [d["metadata"]["name"] for d in (deployments or {})["items"]] == ["m1-miner"]


async def test_validator_lifecycle(cluster: tuple[Emulator, KubeApi]) -> None:
    server, api = cluster
    statefulset = object_path("StatefulSet", NS, "v1-validator")
    service = object_path("Service", NS, "v1-validator")
    async with operator(server):
        await api.create(object_path("Secret", NS), secret())
        body = {
            "apiVersion": "quasar.ai/v1alpha1",
            "kind": "QuasarValidator",
            "metadata": {"name": "v1", "namespace": NS},
            "spec": {"wallet": {"secretName": "wallet"}, "subnet": {"netuid": 7}},
        }
        uid = (await api.create(f"{CRS}/quasarvalidators", body))["metadata"]["uid"]
        status = await wait_for(
            api,
            f"{CRS}/quasarvalidators/v1",
            lambda b: conditions(b).get("Reconciled", {}).get("status") == "True",
            "Reconciled",
        )
        assert conditions(status)["Ready"]["message"] == "0/1 replicas ready"
        for path in (statefulset, service):
            child = await api.get(path)
            assert child is not None
            assert owners(child) == [("quasar.ai/v1alpha1", "QuasarValidator", uid, True)]

        assert await api.delete(f"{CRS}/quasarvalidators/v1")
        await eventually(lambda: gone(api, f"{CRS}/quasarvalidators/v1"), what="deleted")
        assert await gone(api, statefulset)
        assert await gone(api, service)


# ------------------------------------------------------------------------------------ malformed objects


# Every case at the top two levels (each field of spec and status: the 33 kinds the issue found are among
# them) and a fixed sample of the deeper ones; tests/test_reconcile.py runs all of them through the pipeline.
MALFORMED = [
    case for i, case in enumerate(malformed.all_cases()) if malformed.depth(case) <= 1 or i % 25 == 0
]


def _degraded(version: Mapping[str, Any] | None) -> list[str]:
    """The messages of a stored version's Degraded conditions (its status may be anything at all)."""
    status = None if version is None else version.get("status")
    found = status.get("conditions") if isinstance(status, Mapping) else None
    return [
        c["message"]
        for c in (found if isinstance(found, list) else [])
        if isinstance(c, Mapping) and c.get("type") == "Degraded" and c.get("status") == "True"
    ]


async def _all(found: Awaitable[dict[str, str]], count: int) -> dict[str, str] | None:
    got = await found
    return got if len(got) == count else None


async def test_every_malformed_object_is_degraded_and_told(caplog: pytest.LogCaptureFixture) -> None:
    """Each object with one field of a type its schema forbids (or a field it does not know) gets a Degraded
    condition and a Warning Event naming that field; nothing raises into kopf; other objects are served."""
    names = {f"bad-{i}": case for i, case in enumerate(MALFORMED)}
    plural = {"QuasarMiner": "quasarminers", "QuasarValidator": "quasarvalidators"}
    # Without the request log (adaptation 4) and with a slow timer: a thousand objects at once.
    settings = replace(TEST_SETTINGS, drift_interval=60.0)
    async with emulator(log_requests=False) as server, client(server) as api, operator(server, settings):
        for wallet in ("wallet", "miner-wallet", "validator-wallet"):
            await api.create(object_path("Secret", NS), secret(wallet))
        for name, case in names.items():
            body = {**case.body, "metadata": {"name": name, "namespace": NS}}
            await api.create(f"{CRS}/{plural[body['kind']]}", body)
        await api.create(f"{CRS}/quasarminers", miner("m1"))

        async def warnings() -> dict[str, str]:
            listed = await api.get(f"/api/v1/namespaces/{NS}/events")
            return {
                e["involvedObject"]["name"]: e["message"]
                for e in (listed or {}).get("items", [])
                if e["type"] == "Warning" and e["involvedObject"]["name"] in names
            }

        warned: dict[str, str] = {}
        with contextlib.suppress(AssertionError):  # a timeout: the assertions below say which are missing
            warned = await eventually(
                lambda: _all(warnings(), len(names)), timeout=120, interval=1.0, what="an Event for each"
            )
        warned = warned or await warnings()
        # Served all the same: the healthy miner's Deployment exists.
        await wait_for(api, DEPLOYMENT, lambda d: True, "the healthy miner's Deployment")

    assert [case.name for name, case in names.items() if case.field not in warned.get(name, "")] == []
    for name, case in names.items():
        key = (f"quasar.ai/v1alpha1/{plural[case.body['kind']]}", NS, name)
        degraded = [message for version in server.objects[key].history for message in _degraded(version)]
        assert any(case.field in message for message in degraded), case.name
    # kopf logs a handler's unexpected exception with its traceback (a failure the handler reports, without).
    tracebacks = [r.getMessage() for r in caplog.records if r.name.startswith("kopf") and r.exc_info]
    assert tracebacks == []
