"""The operator's Prometheus metrics: its reconciles, and each resource's state as the status it wrote says.

The per-resource gauges are what a dashboard or alert needs without reading the API server: a QuasarMiner's
replicas per pool (desired, ready, pending) and every resource's Ready condition. A resource's series go
with it when it is deleted. Its namespace and name are `object_namespace` and `object_name`: a scrape gives
every series the operator pod's own `namespace`, which would rename a `namespace` label the operator set.
"""

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "quasar_operator_reconciles_total", "Reconciles run, by kind and outcome.", ["kind", "outcome"]
)
ERRORS = Counter(
    "quasar_operator_reconcile_errors_total",
    "Reconciles that failed, by kind and reason.",
    ["kind", "reason"],
)
DURATION = Histogram("quasar_operator_reconcile_seconds", "Time a reconcile took.", ["kind"])
REPLICAS = Gauge(
    "quasar_operator_miner_replicas",
    "A QuasarMiner's replicas by pool (empty: a miner without placement pools) and state: desired (what the "
    "operator runs), ready, pending (the scheduler cannot place them).",
    ["object_namespace", "object_name", "pool", "state"],
)
READY = Gauge(
    "quasar_operator_resource_ready",
    "1 while a QuasarMiner's or QuasarValidator's Ready condition is True, else 0.",
    ["kind", "object_namespace", "object_name"],
)
STATES = ("desired", "ready", "pending")


def replica_counts(status: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """(pool, state) -> replicas, from a miner's status: per pool, or the miner's totals without pools."""
    pools = status.get("pools") or []
    if pools:
        return {(pool["name"], state): int(pool.get(state) or 0) for pool in pools for state in STATES}
    return {
        ("", "desired"): int(status.get("desiredReplicas") or 0),
        ("", "ready"): int(status.get("readyReplicas") or 0),
    }


def is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


class StatusGauges:
    """Sets each resource's gauges from its status, and removes the series it no longer has."""

    def __init__(self) -> None:
        self._ready: set[tuple[str, str, str]] = set()
        self._replicas: dict[tuple[str, str], set[tuple[str, str]]] = {}

    def update(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        READY.labels(kind, namespace, name).set(1 if is_ready(status) else 0)
        self._ready.add((kind, namespace, name))
        if kind != "QuasarMiner":
            return
        counts = replica_counts(status)
        for pool, state in self._replicas.get((namespace, name), set()) - counts.keys():
            REPLICAS.remove(namespace, name, pool, state)
        for (pool, state), value in counts.items():
            REPLICAS.labels(namespace, name, pool, state).set(value)
        self._replicas[(namespace, name)] = set(counts)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        if (kind, namespace, name) in self._ready:
            self._ready.remove((kind, namespace, name))
            READY.remove(kind, namespace, name)
        for pool, state in self._replicas.pop((namespace, name), set()):
            REPLICAS.remove(namespace, name, pool, state)


STATUS_GAUGES = StatusGauges()
