"""What a GPU node pool has room for, and where a miner's pods stand: pure functions of Nodes and Pods.

A pool's nodes are the Ready, schedulable nodes whose labels match its nodeSelector and required node
affinity and whose NoSchedule/NoExecute taints its tolerations tolerate: the scheduler's checks that decide
GPU placement. A node's free GPUs are its allocatable GPUs less what the unfinished pods bound to it request
(a GPU's request always equals its limit), and less what the pods still waiting for the scheduler will take:
those are placed on the nodes first fit (`place_waiting`), so two miners planning from the same listing do
not both count the same free GPUs. Free replicas are counted node by node: a replica's GPUs must all be on
one node.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quasar_operator.status import epoch

Obj = dict[str, Any]

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class PoolScheduling:
    """What decides whether a pool's pod fits a node."""

    node_selector: Mapping[str, str]
    affinity: Obj | None
    tolerations: Sequence[Obj]
    gpu_resource: str
    gpus_per_replica: int


def _quantity(value: Any) -> float:
    # Extended resources such as GPUs are whole numbers; a plain int is all a GPU count can be.
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def _requirement(expression: Obj, labels: Mapping[str, str]) -> bool:
    key, operator, values = (
        expression.get("key", ""),
        expression.get("operator"),
        expression.get("values") or [],
    )
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            have, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


def _term_matches(term: Obj, labels: Mapping[str, str], name: str) -> bool:
    expressions, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not expressions and not fields:
        return False  # Kubernetes: an empty term matches no node
    # matchFields can only name metadata.name.
    by_field = {"metadata.name": name}
    return all(_requirement(e, labels) for e in expressions) and all(
        _requirement(f, by_field) for f in fields
    )


def _affinity_allows(affinity: Obj | None, labels: Mapping[str, str], name: str) -> bool:
    required = ((affinity or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    # Terms are ORed; the requirements of one term are ANDed.
    return any(_term_matches(term, labels, name) for term in required.get("nodeSelectorTerms") or [])


def _tolerates(tolerations: Iterable[Obj], taint: Obj) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
            "value", ""
        ):
            return True
    return False


def _ready(node: Obj) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_fits(node: Obj, pool: PoolScheduling) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    spec = node.get("spec") or {}
    if spec.get("unschedulable") or not _ready(node):
        return False
    if any(labels.get(key) != value for key, value in pool.node_selector.items()):
        return False
    if not _affinity_allows(pool.affinity, labels, (node.get("metadata") or {}).get("name", "")):
        return False
    blocking = [t for t in spec.get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
    return all(_tolerates(pool.tolerations, taint) for taint in blocking)


def pod_gpus(pod: Obj, resource: str) -> float:
    total = 0.0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        request = (resources.get("requests") or {}).get(
            resource, (resources.get("limits") or {}).get(resource)
        )
        total += _quantity(request or 0)
    return total


def used_gpus(pods: Iterable[Obj], resource: str) -> dict[str, float]:
    """GPUs requested per node by the pods bound there that have not finished."""
    used: dict[str, float] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (pod.get("status") or {}).get("phase") not in FINISHED:
            used[node] = used.get(node, 0.0) + pod_gpus(pod, resource)
    return used


def pod_scheduling(pod: Obj, resource: str) -> PoolScheduling:
    """What decides where a pod may go, as a one-replica pool shape."""
    spec = pod.get("spec") or {}
    return PoolScheduling(
        node_selector=spec.get("nodeSelector") or {},
        affinity=spec.get("affinity"),
        tolerations=spec.get("tolerations") or [],
        gpu_resource=resource,
        gpus_per_replica=math.ceil(pod_gpus(pod, resource)),
    )


def waiting(pod: Obj) -> bool:
    """Not bound yet, and not refused by the scheduler: it will take GPUs as soon as it is scheduled."""
    if (pod.get("spec") or {}).get("nodeName") or (pod.get("status") or {}).get("phase") in FINISHED:
        return False
    condition = _condition(pod, "PodScheduled")
    return not (condition is not None and condition.get("reason") == "Unschedulable")


def place_waiting(
    nodes: Sequence[Obj], used: Mapping[str, float], pods: Iterable[Obj], resource: str
) -> dict[str, float]:
    """`used` plus the GPUs of waiting pods, each put on the first node it fits (as a scheduler might)."""
    total = dict(used)
    for pod in pods:
        shape = pod_scheduling(pod, resource)
        if shape.gpus_per_replica <= 0:
            continue
        for node in nodes:
            name = (node.get("metadata") or {}).get("name", "")
            room = _allocatable(node, resource) - total.get(name, 0.0)
            if room >= shape.gpus_per_replica and node_fits(node, shape):
                total[name] = total.get(name, 0.0) + shape.gpus_per_replica
                break
    return total


def _allocatable(node: Obj, resource: str) -> float:
    return _quantity(((node.get("status") or {}).get("allocatable") or {}).get(resource, 0))


def free_replicas(nodes: Iterable[Obj], used: Mapping[str, float], pool: PoolScheduling) -> int:
    """Further replicas of `pool`'s shape that fit on its nodes' free GPUs."""
    if pool.gpus_per_replica <= 0:
        raise ValueError("a pool's replicas need at least one GPU to be placed by GPU capacity")
    slots = 0
    for node in nodes:
        if not node_fits(node, pool):
            continue
        name = (node.get("metadata") or {}).get("name", "")
        free = _allocatable(node, pool.gpu_resource) - used.get(name, 0.0)
        slots += max(0, int(free // pool.gpus_per_replica))
    return slots


@dataclass(frozen=True)
class PodCounts:
    """A pool's pods of one miner, as the scheduler and kubelet report them."""

    scheduled: int = 0
    ready: int = 0
    unschedulable: int = 0
    unschedulable_since: float | None = None


def _condition(pod: Obj, type_: str) -> Obj | None:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def pod_ready(pod: Obj) -> bool:
    condition = _condition(pod, "Ready")
    return condition is not None and condition.get("status") == "True"


def count_pods(pods: Iterable[Obj], now: float) -> PodCounts:
    """Counts over one pool's live pods (the caller leaves out pods being deleted)."""
    scheduled = ready = unschedulable = 0
    since: float | None = None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in FINISHED:
            continue
        if (pod.get("spec") or {}).get("nodeName"):
            scheduled += 1
            ready += pod_ready(pod)
            continue
        condition = _condition(pod, "PodScheduled")
        if (
            condition is not None
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            unschedulable += 1
            transition = epoch(condition.get("lastTransitionTime"))
            at = now if transition is None else transition
            since = at if since is None else min(since, at)
    return PodCounts(scheduled, ready, unschedulable, since)
