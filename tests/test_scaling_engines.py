"""Operator autoscaling end to end for vLLM and SGLang: the real operator (kopf) against kmock's emulator and
the simulated cluster of tests/test_scaling_operator.py, but each pod's `/metrics` is served by a running
double of its engine (tests/fake_openai_engines.py), in that engine's own names (`vllm:num_requests_waiting`,
`sglang:num_queue_reqs`, ...), so the operator reads what a real vLLM or SGLang pod exports.
"""

import asyncio
import contextlib
import copy
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pytest
from quasar_operator.apply import KubeApi, object_path

from tests.fake_openai_engines import FakeOpenAIEngine, FakeSGLang, FakeVLLM
from tests.k8s_emulator import client, emulator, eventually, operator
from tests.sim_cluster import SimCluster, running
from tests.test_operator import CRS, NS, secret
from tests.test_scaling_operator import PATH, SETTINGS, events, placed, pool, until_pools

Obj = dict[str, Any]
pytestmark = pytest.mark.asyncio
MODEL = "Qwen/Qwen3-Next-80B-A3B-Thinking"


@dataclass
class EngineCluster(SimCluster):
    """The simulated cluster, each pod's engine a running double of `double`'s kind.

    `load` is the number of requests waiting per replica; the replica's batch is full whenever any wait.
    """

    double: type[FakeOpenAIEngine] = FakeVLLM
    doubles: dict[str, FakeOpenAIEngine] = field(default_factory=dict)

    async def tick(self) -> None:
        for engine in self.doubles.values():
            engine.waiting = int(self.load)
            engine.running = engine.max_running if self.load else 0
        await super().tick()

    async def _create_pod(self, deployment: Obj) -> None:
        # vLLM and SGLang serve /metrics on their API port (`engine`); the simulated network gives each pod's
        # port its own double on 127.0.0.1, as it gives TGI's `engine-metrics` port its own server.
        template = copy.deepcopy(deployment)
        for container in template["spec"]["template"]["spec"]["containers"]:
            for port in container.get("ports") or []:
                if port["name"] == "engine":
                    port["name"] = "engine-metrics"
        await super()._create_pod(template)

    async def _start_server(self, name: str, labels: Any) -> int:
        engine = self.double(model_id=MODEL)
        await asyncio.to_thread(engine.start)
        self.doubles[name] = engine
        return engine.port

    async def _stop_server(self, name: str) -> None:
        engine = self.doubles.pop(name, None)
        if engine is not None:
            await asyncio.to_thread(engine.stop)

    async def close(self) -> None:
        for name in list(self.doubles):
            await self._stop_server(name)


def engine_cluster(
    api: KubeApi, double: type[FakeOpenAIEngine]
) -> contextlib.AbstractAsyncContextManager[EngineCluster]:
    return running(EngineCluster(api, NS, double=double))


async def engine_metric(sim: EngineCluster, name: str) -> float | None:
    """What the double of any pod exports under `name` right now (the oracle)."""
    engine = next(iter(sim.doubles.values()), None)
    if engine is None:
        return None
    metrics = await asyncio.to_thread(_get, f"{engine.url}/metrics")
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        text: str = response.read().decode()
        return text


GAUGES = {
    "vllm": {"queueSize": "vllm:num_requests_waiting", "batchSize": "vllm:num_requests_running"},
    "sglang": {"queueSize": "sglang:num_queue_reqs", "batchSize": "sglang:num_running_reqs"},
}


@pytest.mark.parametrize(("kind", "double"), [("vllm", FakeVLLM), ("sglang", FakeSGLang)])
@pytest.mark.parametrize("metric", ["queueSize", "batchSize"])
async def test_load_on_the_engines_own_gauge_scales_up_then_down(
    kind: str, double: type[FakeOpenAIEngine], metric: str
) -> None:
    async with emulator() as server, client(server) as api, engine_cluster(api, double) as sim:
        await api.create(object_path("Secret", NS), secret())
        async with operator(server, SETTINGS):
            await sim.add_nodes("h100", 8, gpus=1)
            autoscaling = {
                "minReplicas": 1,
                "maxReplicas": 4,
                "metric": metric,
                "target": 2,
                "scaleDownStabilizationSeconds": 0,
                "scaleDownPeriodSeconds": 0,
                "scaleDownStep": 4,
            }
            body = placed(
                [pool("h100", 8)],
                autoscaling=autoscaling,
                replicas=1,
                engine={"kind": kind},
                model={"id": MODEL, "maxTotalTokens": 262_144},
            )
            await api.create(f"{CRS}/quasarminers", body)
            await until_pools(api, {"h100": (1, 1)}, "one replica at rest")
            sim.load = 10.0  # ten requests waiting per replica, the batch (4) full: both over the target of 2
            await until_pools(api, {"h100": (4, 4)}, "scaled to maxReplicas on the engine's gauge")
            status = (await api.get(PATH) or {})["status"]
            assert metric in status["lastScale"]["reason"]
            # The value the operator reads is what the engine exports under its own name (once every new
            # replica's double reports the load: a fresh one reads 0 until then).
            expected = await engine_metric(sim, GAUGES[kind][metric])

            async def reads_the_gauge() -> bool:
                found = ((await api.get(PATH) or {}).get("status") or {}).get("metricValue")
                return found == expected

            await eventually(
                reads_the_gauge, what=f"status.metricValue == {GAUGES[kind][metric]} ({expected})"
            )
            assert events(server, "Scaled")
            sim.load = 0.0
            await until_pools(api, {"h100": (1, 1)}, "scaled back down at rest")
