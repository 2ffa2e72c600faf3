"""Placement and autoscaling where the real control plane cannot serve yet: the real operator (kopf) against
kmock's emulator, with a simulated cluster (tests/sim_cluster.py) of GPU nodes in labelled pools.

What keeps these here (the rest moved to tests/e2e/test_operator_lifecycle.py): a hollow node's pods are
Ready at once (no probes run), so a replica that is still loading its model cannot be staged; and every
hollow pod has the fake runtime's address 192.168.192.168, so the operator cannot read a test engine's
metrics from a pod (a queue spike).
"""

import gc
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from quasar_operator.apply import KubeApi, object_path

from tests.k8s_emulator import (
    TEST_SETTINGS,
    Emulator,
    client,
    emulator,
    eventually,
    operator,
)
from tests.sim_cluster import POOL_LABEL, SimCluster, simulated
from tests.test_operator import CRS, NS, miner, secret

Obj = dict[str, Any]
pytestmark = pytest.mark.asyncio
SETTINGS = replace(TEST_SETTINGS, scale_interval=0.2, cluster_ttl=0.0)
PATH = f"{CRS}/quasarminers/m1"


def pool(name: str, max_replicas: int, **extra: Any) -> Obj:
    return {"name": name, "nodeSelector": {POOL_LABEL: name}, "maxReplicas": max_replicas, **extra}


def placed(pools: list[Obj], spill_after: int = 1, **spec: Any) -> Obj:
    return miner(
        "m1",
        placement={"pools": pools, "spillAfterSeconds": spill_after},
        cache={"accessMode": "ReadWriteMany"},
        **spec,
    )


@pytest.fixture(autouse=True)
def no_unclosed_sessions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The operator stops with its HTTP sessions closed, a timer caught mid-reconcile included (kopf lets it
    finish: `instant_exit_timeout`); an orphaned one would leak its session, which asyncio reports when
    the session is collected."""
    yield
    gc.collect()
    records = caplog.get_records("call") + caplog.get_records("teardown")
    assert [r.getMessage() for r in records if "Unclosed client session" in r.getMessage()] == []


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[tuple[Emulator, KubeApi, SimCluster]]:
    """The operator itself runs inside each test: kopf, stopping, cancels tasks started after it, which
    would include a fixture's teardown."""
    async with emulator() as server, client(server) as api, simulated(api, NS) as sim:
        await api.create(object_path("Secret", NS), secret())
        yield server, api, sim


async def pools_status(api: KubeApi) -> dict[str, Obj]:
    body = await api.get(PATH)
    return {p["name"]: p for p in ((body or {}).get("status") or {}).get("pools") or []}


async def until_pools(api: KubeApi, want: dict[str, tuple[int, int]], what: str, timeout: float = 15) -> Obj:
    """Wait until each pool has (desired, ready) as given."""

    async def probe() -> dict[str, Obj] | None:
        found = await pools_status(api)
        ok = all(
            name in found and (found[name]["desired"], found[name]["ready"]) == pair
            for name, pair in want.items()
        )
        return found if ok else None

    return await eventually(probe, timeout=timeout, what=what)


async def deployment_replicas(api: KubeApi, name: str) -> int | None:
    body = await api.get(object_path("Deployment", NS, name))
    return None if body is None else int(body["spec"]["replicas"])


def events(server: Emulator, reason: str) -> list[Obj]:
    """Events posted (from the request log: kmock ignores generateName, so it stores only the first)."""
    return [
        r.data
        for r in server
        if r.method == "POST"
        and r.resource is not None
        and r.resource.plural == "events"
        and isinstance(r.data, dict)
        and r.data.get("reason") == reason
    ]


async def test_capacity_returns_and_replicas_move_back_without_losing_ready_ones(cluster: Any) -> None:
    server, api, sim = cluster
    async with operator(server, SETTINGS):
        await sim.add_nodes("h100", 2, gpus=1)
        await sim.add_nodes("a100", 2, gpus=1)
        sim.refuse.add("h100")
        await api.create(
            f"{CRS}/quasarminers", placed([pool("h100", 2), pool("a100", 2)], spill_after=2, replicas=2)
        )
        await until_pools(api, {"h100": (0, 0), "a100": (2, 2)}, "spilled to a100")
        sim.loading.add("h100")  # new pods there load their model for a while
        sim.refuse.clear()
        await until_pools(api, {"h100": (2, 0)}, "h100 reopened: replicas start there", timeout=20)
        # Not ready yet: a100 keeps both of its ready replicas.
        for _ in range(10):
            status = await pools_status(api)
            assert status["a100"]["ready"] + status["h100"]["ready"] >= 2, status
            assert await deployment_replicas(api, "m1-miner-a100") == 2
        sim.loading.clear()
        status = await until_pools(api, {"h100": (2, 2), "a100": (0, 0)}, "moved back to h100")
        assert status["h100"]["fullSince"] is None
        assert events(server, "PoolReopened")


async def test_a_queue_spike_scales_up_and_the_count_stays_within_max(cluster: Any) -> None:
    server, api, sim = cluster
    async with operator(server, SETTINGS):
        await sim.add_nodes("h100", 8, gpus=1)
        autoscaling = {"minReplicas": 1, "maxReplicas": 4, "target": 2, "scaleDownStabilizationSeconds": 3600}
        await api.create(
            f"{CRS}/quasarminers", placed([pool("h100", 8)], autoscaling=autoscaling, replicas=1)
        )
        await until_pools(api, {"h100": (1, 1)}, "one replica at rest")
        sim.load = 10.0  # ten requests queued per replica: 5x the target
        await until_pools(api, {"h100": (4, 4)}, "scaled to maxReplicas")
        body = await api.get(PATH)
        assert body is not None
        assert body["status"]["desiredReplicas"] == 4
        assert body["status"]["lastScale"]["replicasTo"] == 4
        assert "queueSize" in body["status"]["lastScale"]["reason"]
        assert body["spec"]["replicas"] == 1  # decided in the status, never written to the spec
        assert events(server, "Scaled")
        sim.load = 0.0  # the scale-down window (an hour) holds the count
        ticks = sim.ticks
        await eventually(lambda: _after(sim, ticks + 20), what="a while at rest")
        assert (await pools_status(api))["h100"]["desired"] == 4


async def _after(sim: SimCluster, ticks: int) -> bool:
    return sim.ticks >= ticks


async def test_a_pool_removed_from_the_spec_drains_after_its_replacement_is_ready(cluster: Any) -> None:
    server, api, sim = cluster
    async with operator(server, SETTINGS):
        await sim.add_nodes("h100", 2, gpus=1)
        await sim.add_nodes("a100", 2, gpus=1)
        await api.create(f"{CRS}/quasarminers", placed([pool("h100", 2), pool("a100", 2)], replicas=2))
        await until_pools(api, {"h100": (2, 2)}, "two on h100")
        sim.loading.add("a100")
        await api.merge_patch(
            PATH, {"spec": {"placement": {"pools": [pool("a100", 2)], "spillAfterSeconds": 2}}}
        )
        await until_pools(api, {"a100": (2, 0)}, "replacements starting on a100")
        assert await deployment_replicas(api, "m1-miner-h100") == 2  # still serving
        sim.loading.clear()
        await eventually(
            lambda: _gone(api, object_path("Deployment", NS, "m1-miner-h100")),
            what="h100 drained and deleted",
        )
        assert (await pools_status(api))["a100"]["ready"] == 2


async def _gone(api: KubeApi, path: str) -> bool:
    return await api.get(path) is None
