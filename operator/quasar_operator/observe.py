"""What the operator reads to scale and place miners: their pods, the cluster's GPU nodes, the engines' load.

The edge of the scaling code: API reads and HTTP scrapes here, every decision in the pure modules
(`autoscaler`, `placement`, `capacity`).

- The cluster view (every Node and every Pod, for free GPUs) is listed at most once per `cluster_ttl` and
  shared by all miners' reconciles: with hundreds of miners, one list per period instead of one per miner.
- Engine metrics are scraped from each ready pod's `/metrics` concurrently, each with a short timeout; a pod
  that does not answer simply does not report. TGI serves them on its `engine-metrics` port, vLLM and
  SGLang on their API port (`engine`).
- Each engine names the same signal its own way (GAUGES); a pod exports only its engine's names, so the
  first known name found is the pod's, whatever its kind.
"""

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from quasar_operator.apply import ALL_PODS_PATH, NODES_PATH, ApiError, object_path
from quasar_operator.builders.common import INSTANCE_LABEL
from quasar_operator.builders.miner import POOL_LABEL
from quasar_operator.capacity import place_waiting, pod_ready, used_gpus, waiting

Obj = dict[str, Any]

# The autoscaling gauges, as each engine names them (TGI, vLLM, SGLang). Sources: TGI's router
# (`metrics::gauge!` in its queue and batching loop; docs/autoscaling.md cites each); vLLM
# vllm/v1/metrics/loggers.py, PrometheusStatLogger (labels model_name, engine: one series per engine core
# under data parallelism); SGLang python/sglang/srt/metrics/collector.py, SchedulerMetricsCollector (label
# model_name, more in some versions). Series of one gauge are summed: the pod's total.
GAUGES: dict[str, tuple[str, ...]] = {
    "queueSize": ("tgi_queue_size", "vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    "batchSize": ("tgi_batch_current_size", "vllm:num_requests_running", "sglang:num_running_reqs"),
}
# queueTime: TGI only (the CRD refuses it for the other engines).
QUEUE_DURATION = "tgi_request_queue_duration"
# Where a pod serves its metrics: TGI's own Prometheus port, else the engine's API port.
METRICS_PORT_NAMES = ("engine-metrics", "engine")
# A pod's last queue-duration totals are forgotten after this long without a read (the pod is gone).
FORGET_AFTER_S = 3600.0


class Lister(Protocol):
    async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[Obj]: ...


# How long a claim may wait for the listing to show its pods before it is dropped (a Deployment controller
# creates them within seconds).
CLAIM_TTL_S = 60.0


@dataclass(frozen=True)
class Claim:
    """Pods a miner decided a pool's Deployment is to have: until a listing shows them all, the missing ones
    count as taking GPUs, so miners planning from the same listing do not count the same free GPUs twice."""

    template: Obj  # one of the pods, as far as scheduling goes
    expected: int
    at: float


@dataclass
class ClusterView:
    """One listing of Nodes and Pods, shared by every miner's reconcile until the next."""

    nodes: list[Obj]
    pods: list[Obj]
    claims: dict[str, Claim] = field(default_factory=dict)  # the observer's, by `pool_key`
    _bound: dict[str, dict[str, float]] = field(default_factory=dict)

    def committed(self, resource: str, mine: Callable[[Obj], bool]) -> dict[str, float]:
        """GPUs per node taken or about to be: every bound pod's, then, each put on the first node it fits,
        the waiting pods' and the claims' not yet listed, except those that are `mine`."""
        if resource not in self._bound:
            self._bound[resource] = used_gpus(self.pods, resource)
        others = [p for p in self._waiting if not mine(p)]
        for key, claim in self.claims.items():
            if not mine(claim.template):
                others += [claim.template] * max(0, claim.expected - self._listed[key])
        return place_waiting(self.nodes, self._bound[resource], others, resource)

    # Read by every miner's reconcile, computed once per listing.
    @functools.cached_property
    def _waiting(self) -> list[Obj]:
        return [p for p in self.pods if waiting(p)]

    @functools.cached_property
    def _listed(self) -> Counter[str | None]:
        return Counter(pool_key(p) for p in self.pods)


def pool_key(pod: Obj) -> str | None:
    """`namespace/miner/pool` of a pool's pod (its Deployment), from its labels; None for any other pod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    miner, pool = labels.get(INSTANCE_LABEL), labels.get(POOL_LABEL)
    return None if miner is None or pool is None else f"{meta.get('namespace')}/{miner}/{pool}"


def live(pods: Sequence[Obj]) -> list[Obj]:
    """Pods not being deleted: a terminating pod is draining, not serving nor waiting to be placed."""
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


def metrics_address(pod: Obj) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    ports = {
        port.get("name"): port.get("containerPort")
        for container in (pod.get("spec") or {}).get("containers") or []
        for port in container.get("ports") or []
    }
    found = next((ports[name] for name in METRICS_PORT_NAMES if ports.get(name)), None)
    if found is None:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{found}/metrics"


def read_metric(text: str, metric: str) -> float | tuple[float, float] | None:
    """A gauge's value (any engine's name for it), or for queueTime the queue-duration histogram's (sum,
    count); None when absent."""
    wanted = GAUGES.get(metric, (QUEUE_DURATION,))
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        if metric in GAUGES:
            return sum(sample.value for sample in family.samples)
        sums = sum(s.value for s in family.samples if s.name.endswith("_sum"))
        counts = sum(s.value for s in family.samples if s.name.endswith("_count"))
        return sums, counts
    return None


# What a user who placed a miner across pools without the cluster-wide reads must change.
CLUSTER_READ_HINT = (
    "placement counts the GPUs every pod holds on each node, so it lists Nodes and Pods cluster-wide: "
    "install the chart with rbac.listPodsClusterWide=true (or operator.clusterWide=true)"
)


@dataclass
class Observer:
    """Reads for the scaling decisions, with the little memory they need between reconciles."""

    cluster_ttl: float = 5.0
    scrape_timeout: float = 5.0
    _cluster: ClusterView | None = None
    _cluster_at: float = 0.0
    _cluster_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _claims: dict[str, Claim] = field(default_factory=dict)
    # queueTime: each pod's histogram (sum, count) at the last scrape, so the mean covers the interval.
    _queue_totals: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    async def pods(self, api: Lister, namespace: str, selector: dict[str, str]) -> list[Obj]:
        return live(await api.list(object_path("Pod", namespace), selector))

    async def cluster(self, api: Lister) -> ClusterView:
        async with self._cluster_lock:
            now = time.monotonic()
            if self._cluster is None or now - self._cluster_at >= self.cluster_ttl:
                try:
                    nodes, pods = await asyncio.gather(api.list(NODES_PATH), api.list(ALL_PODS_PATH))
                except ApiError as exc:
                    if exc.status != 403:
                        raise
                    raise ApiError(403, f"{exc.message}; {CLUSTER_READ_HINT}") from exc
                self._claims = {k: c for k, c in self._claims.items() if now - c.at < CLAIM_TTL_S}
                self._cluster, self._cluster_at = ClusterView(nodes, pods, self._claims), now
            return self._cluster

    def claim(self, template: Obj, expected: int) -> None:
        """The pool of `template` (a pod as its Deployment makes them) is to have `expected` pods."""
        key = pool_key(template)
        if key is None:
            raise ValueError("a claim's pod needs the miner's and the pool's labels")
        self._claims[key] = Claim(template, expected, time.monotonic())

    async def metric(self, pods: Sequence[Obj], metric: str) -> list[float]:
        """The metric of every ready pod that answered."""
        targets = [(p, metrics_address(p)) for p in pods if pod_ready(p)]
        read = await asyncio.gather(*(self._scrape(url, metric) for _, url in targets if url))
        values = []
        for (pod, _), value in zip([t for t in targets if t[1]], read, strict=True):
            if isinstance(value, tuple):
                value = self._queue_time((pod.get("metadata") or {}).get("uid", ""), value)
            if value is not None:
                values.append(value)
        return values

    def _queue_time(self, uid: str, totals: tuple[float, float]) -> float | None:
        now = time.monotonic()
        before = self._queue_totals.get(uid)
        self._queue_totals = {k: v for k, v in self._queue_totals.items() if now - v[2] < FORGET_AFTER_S}
        self._queue_totals[uid] = (*totals, now)
        if before is None or totals[1] < before[1]:
            return None  # the first read, or the engine restarted: no interval to average over yet
        served = totals[1] - before[1]
        return (totals[0] - before[0]) / served if served else 0.0

    async def _scrape(self, url: str, metric: str) -> float | tuple[float, float] | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.scrape_timeout))
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    return None
                return read_metric(await response.text(), metric)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
