"""A simulated GPU cluster behind kmock's emulator: the controllers a real cluster has and the emulator lacks.

kmock stores objects; nothing acts on them. For the placement and autoscaling tests, this module plays, over
the API like the real components do:

- the Deployment controller: a Deployment's pods are created up to its replicas and removed beyond them (the
  unscheduled and not-ready ones first, as the real one prefers), and its status counts them;
- the scheduler: an unscheduled pod is bound to the first node whose labels match its nodeSelector, whose
  NoSchedule taints it tolerates and that has the GPUs it asks for free; otherwise it gets
  `PodScheduled=False, reason Unschedulable`, as the real scheduler reports;
- the kubelet: a bound pod runs (a pod IP, Running) and is Ready unless its pool is `loading`; each
  pod's engine metrics are served over real HTTP on loopback from `load` (requests queued per replica).

Tests drive it through plain attributes: nodes (added with `add_nodes`), `refuse` (pools whose nodes the
scheduler will not use, for a pool that is full in ways free GPUs do not show), `loading`, `load`. The
engine-metrics port of a simulated pod is rewritten to its metrics server's port (one server per pod on
127.0.0.1), the way a CNI gives each pod its own address.
"""

import asyncio
import contextlib
import datetime
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from quasar_operator.apply import ALL_PODS_PATH, NODES_PATH, KubeApi, matches, object_path

Obj = dict[str, Any]
GPU = "nvidia.com/gpu"
POOL_LABEL = "pool"  # the nodes' pool label in these tests


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def node(name: str, pool: str, gpus: int, taints: list[Obj] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
        "spec": {"taints": taints or []},
        "status": {
            "allocatable": {GPU: str(gpus), "cpu": "64"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _gpus(pod: Obj) -> int:
    total = 0
    for container in pod["spec"]["containers"]:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(GPU, 0))
    return total


def _tolerated(pod: Obj, taint: Obj) -> bool:
    return any(
        t.get("key") == taint["key"]
        and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
        for t in pod["spec"].get("tolerations") or []
    )


@dataclass
class SimCluster:
    api: KubeApi
    namespace: str
    loading: set[str] = field(default_factory=set)  # pools whose pods are not ready (loading the model)
    load: float = 0.0
    refuse: set[str] = field(default_factory=set)
    ticks: int = 0
    _names: "itertools.count[int]" = field(default_factory=itertools.count)
    _servers: dict[str, tuple[web.AppRunner, int]] = field(default_factory=dict)

    async def add_nodes(self, pool: str, count: int, gpus: int) -> None:
        for _ in range(count):
            await self.api.create(NODES_PATH, node(f"{pool}-{next(self._names)}", pool, gpus))

    async def tick(self) -> None:
        """One pass of every controller."""
        deployments = await self.api.list(object_path("Deployment", self.namespace))
        pods = [p for p in await self.api.list(ALL_PODS_PATH) if not p["metadata"].get("deletionTimestamp")]
        for deployment in deployments:
            await self._reconcile_deployment(deployment, pods)
        pods = [p for p in await self.api.list(ALL_PODS_PATH) if not p["metadata"].get("deletionTimestamp")]
        await self._schedule(pods, await self.api.list(NODES_PATH))
        for deployment in deployments:
            await self._deployment_status(deployment)
        self.ticks += 1

    async def _reconcile_deployment(self, deployment: Obj, pods: list[Obj]) -> None:
        selector = deployment["spec"]["selector"]["matchLabels"]
        mine = [p for p in pods if matches(p, selector)]
        wanted = int(deployment["spec"].get("replicas") or 0)
        for _ in range(wanted - len(mine)):
            await self._create_pod(deployment)
        # The real controller removes unscheduled, then not-ready pods first.
        mine.sort(key=lambda p: (bool(p["spec"].get("nodeName")), _is_ready(p)))
        for pod in mine[: max(0, len(mine) - wanted)]:
            await self.api.delete(object_path("Pod", self.namespace, pod["metadata"]["name"]))
            await self._stop_server(pod["metadata"]["name"])

    async def _create_pod(self, deployment: Obj) -> None:
        template = deployment["spec"]["template"]
        name = f"{deployment['metadata']['name']}-{next(self._names)}"
        port = await self._start_server(name)
        containers = []
        for container in template["spec"]["containers"]:
            ports = [
                {**p, "containerPort": port} if p.get("name") == "engine-metrics" else p
                for p in container.get("ports") or []
            ]
            containers.append({**container, "ports": ports})
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": template["metadata"]["labels"]},
            "spec": {**template["spec"], "containers": containers},
            "status": {"phase": "Pending"},
        }
        await self.api.create(object_path("Pod", self.namespace), pod)

    async def _schedule(self, pods: list[Obj], nodes: list[Obj]) -> None:
        used: dict[str, int] = {}
        for pod in pods:
            if pod["spec"].get("nodeName"):
                used[pod["spec"]["nodeName"]] = used.get(pod["spec"]["nodeName"], 0) + _gpus(pod)
        for pod in pods:
            path = object_path("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
            ready = (pod["spec"].get("nodeSelector") or {}).get(POOL_LABEL) not in self.loading
            if pod["spec"].get("nodeName"):
                if ready != _is_ready(pod):
                    await self.api.merge_patch(path, {"status": _pod_status(ready)})
                continue
            fits = [n for n in nodes if self._fits(pod, n, used)]
            if fits:
                target = fits[0]["metadata"]["name"]
                used[target] = used.get(target, 0) + _gpus(pod)
                await self.api.merge_patch(path, {"spec": {"nodeName": target}, "status": _pod_status(ready)})
            elif not _condition(pod, "PodScheduled"):
                unschedulable = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastTransitionTime": _now(),
                }
                await self.api.merge_patch(
                    path, {"status": {"phase": "Pending", "conditions": [unschedulable]}}
                )

    def _fits(self, pod: Obj, candidate: Obj, used: dict[str, int]) -> bool:
        labels = candidate["metadata"]["labels"]
        if labels.get(POOL_LABEL) in self.refuse:
            return False
        if any(labels.get(k) != v for k, v in (pod["spec"].get("nodeSelector") or {}).items()):
            return False
        taints = [t for t in candidate["spec"].get("taints") or [] if t.get("effect") == "NoSchedule"]
        if not all(_tolerated(pod, t) for t in taints):
            return False
        free = int(candidate["status"]["allocatable"][GPU]) - used.get(candidate["metadata"]["name"], 0)
        return free >= _gpus(pod)

    async def _deployment_status(self, deployment: Obj) -> None:
        selector = deployment["spec"]["selector"]["matchLabels"]
        pods = [p for p in await self.api.list(object_path("Pod", self.namespace), selector)]
        status = {
            "replicas": len(pods),
            "readyReplicas": sum(_is_ready(p) for p in pods),
            "updatedReplicas": len(pods),
        }
        await self.api.merge_patch(
            object_path("Deployment", self.namespace, deployment["metadata"]["name"]), {"status": status}
        )

    async def _start_server(self, name: str) -> int:
        async def metrics(_: web.Request) -> web.Response:
            text = f"# TYPE tgi_queue_size gauge\ntgi_queue_size {self.load:g}\n"
            return web.Response(text=text)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port: int = runner.addresses[0][1]
        self._servers[name] = (runner, port)
        return port

    async def _stop_server(self, name: str) -> None:
        found = self._servers.pop(name, None)
        if found is not None:
            await found[0].cleanup()

    async def close(self) -> None:
        for name in list(self._servers):
            await self._stop_server(name)


def _condition(pod: Obj, type_: str) -> Obj | None:
    return next(
        (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None
    )


def _is_ready(pod: Obj) -> bool:
    condition = _condition(pod, "Ready")
    return condition is not None and condition.get("status") == "True"


def _pod_status(ready: bool) -> Obj:
    return {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
    }


@contextlib.asynccontextmanager
async def simulated(api: KubeApi, namespace: str, period: float = 0.05) -> AsyncIterator[SimCluster]:
    """The simulated controllers, running every `period` seconds until the block ends."""
    sim = SimCluster(api, namespace)

    async def loop() -> None:
        while True:
            await sim.tick()
            await asyncio.sleep(period)

    task = asyncio.create_task(loop())
    try:
        yield sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sim.close()
