"""The real operator (kopf, `quasar operator run`'s code path) over HTTP against kmock's API server emulator,
for what the real control plane cannot give (tests/e2e/test_operator_lifecycle.py has the rest):

- objects the real API server refuses at admission (an invalid spec, 281 malformed objects): only an
  emulator without the CRDs' schemas stores them, as a cluster may hold objects from before a schema;
- the request-by-request proof that the wallet check reads a Secret as metadata only: kmock's request log.

What the emulator ignores is never what a test passes on: objects are fetched by name, and children
disappear because the operator deletes them, not through a garbage collector the emulator does not have.
"""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
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
)

Obj = dict[str, Any]
NS = "miners"
CRS = f"/apis/quasar.ai/v1alpha1/namespaces/{NS}"
DEPLOYMENT = object_path("Deployment", NS, "m1-miner")

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


async def events(api: KubeApi, name: str) -> list[Obj]:
    listed = await api.get(f"/api/v1/namespaces/{NS}/events")
    items: list[Obj] = (listed or {}).get("items", [])
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


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
        # (as long as the Events may take: on a loaded machine it is reconciled among hundreds of objects).
        await eventually(lambda: api.get(DEPLOYMENT), timeout=120, what="the healthy miner's Deployment")

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
        await api.create(f"{CRS}/quasarminers", miner("m1"))
        for name, case in names.items():
            body = {**case.body, "metadata": {"name": name, "namespace": NS}}
            await api.create(f"{CRS}/{plural[body['kind']]}", body)

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
        # (as long as the Events may take: on a loaded machine it is reconciled among hundreds of objects).
        await eventually(lambda: api.get(DEPLOYMENT), timeout=120, what="the healthy miner's Deployment")

    assert [case.name for name, case in names.items() if case.field not in warned.get(name, "")] == []
    for name, case in names.items():
        key = (f"quasar.ai/v1alpha1/{plural[case.body['kind']]}", NS, name)
        degraded = [message for version in server.objects[key].history for message in _degraded(version)]
        assert any(case.field in message for message in degraded), case.name
    # kopf logs a handler's unexpected exception with its traceback (a failure the handler reports, without).
    tracebacks = [r.getMessage() for r in caplog.records if r.name.startswith("kopf") and r.exc_info]
    assert tracebacks == []
