"""A simulated GPU cluster behind kmock's emulator: the controllers a real cluster has and the emulator lacks.

kmock stores objects; nothing acts on them. For the placement and autoscaling tests, this module plays, over
the API like the real components do:

- the Deployment controller: a Deployment's pods are created up to its replicas and removed beyond them (the
  unscheduled and not-ready ones first, as the real one prefers), and its status counts them;
- the scheduler: an unscheduled pod is bound to the first node whose labels match its nodeSelector, whose
  NoSchedule taints it tolerates and that has the GPUs it asks for free; otherwise it gets
  `PodScheduled=False, reason Unschedulable`, as the real scheduler reports;
- the kubelet: a bound pod runs (a pod IP, Running) and is Ready unless its pool is `loading` (or, with
  `ready_after`, until that many seconds after it was bound: its model loading); each pod's engine metrics
  are served over real HTTP on loopback from `load` (requests queued per replica), or from `queue` (a
  function of the pod's labels, for a load that differs by miner).

Tests drive it through plain attributes: nodes (added with `add_nodes`), `refuse` (pools whose nodes the
scheduler will not use, for a pool that is full in ways free GPUs do not show), `loading`, `load`. The
engine-metrics port of a simulated pod is rewritten to its metrics server's port (one server per pod on
127.0.0.1), the way a CNI gives each pod its own address.
"""

import asyncio
import contextlib
import datetime
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    # The queue a pod reports, from its labels; None: `load` for every pod.
    queue: Callable[[Mapping[str, str]], float] | None = None
    ready_after: float = 0.0  # seconds from binding to Ready (the model loading)
    ticks: int = 0
    refused: int = 0  # pods the scheduler found no node for
    _names: "itertools.count[int]" = field(default_factory=itertools.count)
    _servers: dict[str, tuple[web.AppRunner, int]] = field(default_factory=dict)
    _bound_at: dict[str, float] = field(default_factory=dict)

    async def add_nodes(self, pool: str, count: int, gpus: int) -> None:
        for _ in range(count):
            await self.api.create(NODES_PATH, node(f"{pool}-{next(self._names)}", pool, gpus))

    async def tick(self) -> None:
        """One pass of every controller. Each step decides first, then sends its writes concurrently (a
        pass with hundreds of pods to create or bind would otherwise take a round trip each)."""
        deployments = await self.api.list(object_path("Deployment", self.namespace))
        pods = [p for p in await self.api.list(ALL_PODS_PATH) if not p["metadata"].get("deletionTimestamp")]
        await asyncio.gather(*(self._reconcile_deployment(deployment, pods) for deployment in deployments))
        pods = [p for p in await self.api.list(ALL_PODS_PATH) if not p["metadata"].get("deletionTimestamp")]
        await self._schedule(pods, await self.api.list(NODES_PATH))
        pods = await self.api.list(object_path("Pod", self.namespace))
        await asyncio.gather(*(self._deployment_status(deployment, pods) for deployment in deployments))
        self.ticks += 1

    async def _reconcile_deployment(self, deployment: Obj, pods: list[Obj]) -> None:
        selector = deployment["spec"]["selector"]["matchLabels"]
        mine = [p for p in pods if matches(p, selector)]
        wanted = int(deployment["spec"].get("replicas") or 0)
        # The real controller removes unscheduled, then not-ready pods first.
        mine.sort(key=lambda p: (bool(p["spec"].get("nodeName")), _is_ready(p)))
        await asyncio.gather(
            *(self._create_pod(deployment) for _ in range(wanted - len(mine))),
            *(self._delete_pod(pod["metadata"]["name"]) for pod in mine[: max(0, len(mine) - wanted)]),
        )

    async def _delete_pod(self, name: str) -> None:
        await self.api.delete(object_path("Pod", self.namespace, name))
        await self._stop_server(name)
        self._bound_at.pop(name, None)

    async def _create_pod(self, deployment: Obj) -> None:
        template = deployment["spec"]["template"]
        name = f"{deployment['metadata']['name']}-{next(self._names)}"
        port = await self._start_server(name, template["metadata"]["labels"])
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
        patches: list[tuple[str, Obj]] = []
        used: dict[str, int] = {}
        for pod in pods:
            if pod["spec"].get("nodeName"):
                used[pod["spec"]["nodeName"]] = used.get(pod["spec"]["nodeName"], 0) + _gpus(pod)
        for pod in pods:
            path = object_path("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
            ready = (pod["spec"].get("nodeSelector") or {}).get(POOL_LABEL) not in self.loading
            if pod["spec"].get("nodeName"):
                ready = ready and self._loaded(pod["metadata"]["name"])
                if ready != _is_ready(pod):
                    patches.append((path, {"status": _pod_status(ready)}))
                continue
            fits = [n for n in nodes if self._fits(pod, n, used)]
            if fits:
                target = fits[0]["metadata"]["name"]
                used[target] = used.get(target, 0) + _gpus(pod)
                self._bound_at[pod["metadata"]["name"]] = time.monotonic()
                ready = ready and self.ready_after <= 0
                patches.append((path, {"spec": {"nodeName": target}, "status": _pod_status(ready)}))
            elif not _condition(pod, "PodScheduled"):
                unschedulable = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastTransitionTime": _now(),
                }
                patches.append((path, {"status": {"phase": "Pending", "conditions": [unschedulable]}}))
                self.refused += 1
        await asyncio.gather(*(self.api.merge_patch(path, patch) for path, patch in patches))

    def _loaded(self, name: str) -> bool:
        bound = self._bound_at.setdefault(name, time.monotonic())
        return time.monotonic() - bound >= self.ready_after

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

    async def _deployment_status(self, deployment: Obj, pods: list[Obj]) -> None:
        """`pods`: the namespace's pods as they are after this tick's scheduling."""
        selector = deployment["spec"]["selector"]["matchLabels"]
        mine = [p for p in pods if matches(p, selector)]
        status = {
            "replicas": len(mine),
            "readyReplicas": sum(_is_ready(p) for p in mine),
            "updatedReplicas": len(mine),
        }
        live = deployment.get("status") or {}
        if all(live.get(key) == value for key, value in status.items()):
            return  # an unchanged status is not written: every write wakes every watcher
        await self.api.merge_patch(
            object_path("Deployment", self.namespace, deployment["metadata"]["name"]), {"status": status}
        )

    async def _start_server(self, name: str, labels: Mapping[str, str]) -> int:
        async def metrics(_: web.Request) -> web.Response:
            queue = self.load if self.queue is None else self.queue(labels)
            text = f"# TYPE tgi_queue_size gauge\ntgi_queue_size {queue:g}\n"
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


ClusterT = TypeVar("ClusterT", bound=SimCluster)


def simulated(api: KubeApi, namespace: str, period: float = 0.05) -> AbstractAsyncContextManager[SimCluster]:
    """The simulated controllers, running every `period` seconds until the block ends."""
    return running(SimCluster(api, namespace), period)


@contextlib.asynccontextmanager
async def running(sim: ClusterT, period: float = 0.05) -> AsyncIterator[ClusterT]:
    """`sim` (a SimCluster or a subclass) ticking every `period` seconds until the block ends."""

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
