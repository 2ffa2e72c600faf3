"""The miner's replicas: how many (the autoscaler) and where (placement), as steps of its reconcile.

1. `desired_replicas`: spec.replicas (fixed, or written by an HPA/KEDA in external mode), or the operator's
   autoscaler over the engines' metrics; always within min/max.
2. `place`: each pool's Deployment and its replica count from the pools' observed state; Deployments of
   pools no longer in the spec (or the single Deployment of a miner that gained pools) drain through the
   same make-before-break plan and are deleted once empty.

Without `spec.placement` the miner has one implicit pool: its `<name>-miner` Deployment, scheduled by
`spec.pod`. The operator never writes the resource's spec; what it decides goes to the status.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from quasar_operator import autoscaler, capacity, placement
from quasar_operator.apply import matches, object_path, without_nulls
from quasar_operator.builders.common import Owner, selector_labels
from quasar_operator.builders.miner import KIND, POOL_LABEL, Endpoint, for_pool, miner_deployment, miner_names
from quasar_operator.models import MinerStatus, PoolSpec, QuasarMinerSpec
from quasar_operator.observe import ClusterView, Lister, Observer
from quasar_operator.status import epoch, rfc3339

Obj = dict[str, Any]
IMPLICIT_POOL = ""


class Api(Lister, Protocol):
    async def apply(self, desired: Obj) -> Obj: ...

    async def merge_patch(self, path: str, patch: Obj) -> Obj | None: ...

    async def delete(self, path: str) -> bool: ...


@dataclass
class ScalingState:
    """What the operator keeps in memory between reconciles: the observer and each miner's recent
    recommendations (a restart starts them afresh, which only delays a scale-down by one window)."""

    observer: Observer = field(default_factory=Observer)
    history: dict[str, tuple[autoscaler.Recommendation, ...]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Note:
    """An Event to post about the resource."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Scaled:
    status: Obj  # desiredReplicas, metricValue, lastScale, pools, unplaced
    applied: list[Obj]  # the Deployments as the API server returned them
    desired: int
    notes: list[Note]


async def miner_pods(api: Api, state: ScalingState, owner: Owner, spec: QuasarMinerSpec) -> list[Obj]:
    """The miner's live pods, read once per reconcile, when its autoscaler or placement needs them."""
    operator_scaled = spec.autoscaling is not None and spec.autoscaling.mode == "operator"
    if spec.placement is None and not operator_scaled:
        return []
    return await state.observer.pods(api, owner.namespace, selector_labels(owner))


async def desired_replicas(
    state: ScalingState,
    owner: Owner,
    spec: QuasarMinerSpec,
    pods: list[Obj],
    previous: MinerStatus,
    now: float,
) -> tuple[int, Obj, list[Note]]:
    """The replicas to run, the status fields that explain them, and an Event when they changed."""
    scaling = spec.autoscaling
    if scaling is None:
        return spec.replicas, {"desiredReplicas": spec.replicas}, []
    current = previous.desired_replicas if previous.desired_replicas is not None else spec.replicas
    if scaling.mode == "external":
        wanted = autoscaler.clamp(spec.replicas, scaling)
        reason = f"spec.replicas {spec.replicas} (external autoscaler), within [{scaling.min_replicas}, "
        decision = autoscaler.Decision(wanted, reason + f"{scaling.max_replicas}]", (), None)
    else:
        last = previous.last_scale
        down_at = epoch(last.time) if last is not None and last.replicas_to < last.replicas_from else None
        decision = autoscaler.decide(
            spec=scaling,
            values=await state.observer.metric(pods, scaling.metric),
            current=current,
            history=state.history.get(owner.uid, ()),
            now=now,
            last_scale_down=down_at,
        )
        state.history[owner.uid] = decision.history
    status: Obj = {"desiredReplicas": decision.replicas, "metricValue": decision.metric_value}
    if decision.replicas == current:
        return decision.replicas, status, []
    status["lastScale"] = {
        "time": rfc3339(now),
        "replicasFrom": current,
        "replicasTo": decision.replicas,
        "reason": decision.reason,
    }
    return decision.replicas, status, [Note("Normal", "Scaled", decision.reason)]


def _replicas(deployment: Obj | None) -> tuple[int, int]:
    """A Deployment's (spec.replicas, status.readyReplicas)."""
    if deployment is None:
        return 0, 0
    return int((deployment.get("spec") or {}).get("replicas") or 0), int(
        (deployment.get("status") or {}).get("readyReplicas") or 0
    )


def _shape(spec: QuasarMinerSpec, pool: PoolSpec) -> capacity.PoolScheduling:
    effective = for_pool(spec, pool)
    return capacity.PoolScheduling(
        node_selector=effective.pod.node_selector,
        affinity=effective.pod.affinity,
        tolerations=effective.pod.tolerations,
        gpu_resource=pool.gpu_resource,
        gpus_per_replica=effective.model.gpus_per_replica,
    )


def _mine(owner: Owner) -> Callable[[Obj], bool]:
    selector = selector_labels(owner)
    return lambda pod: (
        (pod.get("metadata") or {}).get("namespace") == owner.namespace and matches(pod, selector)
    )


def _pool_free(owner: Owner, spec: QuasarMinerSpec, pool: PoolSpec, cluster: ClusterView) -> int | None:
    shape = _shape(spec, pool)
    if pool.node_autoscaling or shape.gpus_per_replica == 0:
        return None
    # Other miners' waiting pods and fresh claims count as taken; this miner's own are in its room already.
    used = cluster.committed(pool.gpu_resource, _mine(owner))
    return capacity.free_replicas(cluster.nodes, used, shape)


def _pod_template(owner: Owner, spec: QuasarMinerSpec, pool: PoolSpec) -> Obj:
    """A pool's pod as far as scheduling goes: what a claim stands for until listings show the real ones."""
    shape = _shape(spec, pool)
    return {
        "metadata": {
            "namespace": owner.namespace,
            "labels": {**selector_labels(owner), POOL_LABEL: pool.name},
        },
        "spec": {
            "nodeSelector": dict(shape.node_selector),
            "affinity": shape.affinity,
            "tolerations": list(shape.tolerations),
            "containers": [{"resources": {"limits": {pool.gpu_resource: str(shape.gpus_per_replica)}}}],
        },
    }


def _pool_views(
    owner: Owner,
    spec: QuasarMinerSpec,
    desired: int,
    live: Mapping[str, Obj],
    pods: list[Obj],
    cluster: ClusterView | None,
    previous: MinerStatus,
    now: float,
) -> list[placement.PoolView]:
    names = miner_names(owner.name, spec)
    if spec.placement is None or cluster is None:
        replicas, ready = _replicas(live.get(names.deployment))
        return [placement.PoolView(IMPLICIT_POOL, desired, replicas, ready, replicas, None, None, None)]
    before = {p.name: p for p in previous.pools}
    views = []
    for pool in spec.placement.pools:
        replicas, ready = _replicas(live.get(names.pool_deployments[pool.name]))
        counts = capacity.count_pods([p for p in pods if _pool_of(p) == pool.name], now)
        old = before.get(pool.name)
        views.append(
            placement.PoolView(
                name=pool.name,
                max_replicas=pool.max_replicas,
                replicas=replicas,
                ready=ready,
                scheduled=counts.scheduled,
                unschedulable_since=counts.unschedulable_since,
                free=_pool_free(owner, spec, pool, cluster),
                full_since=epoch(old.full_since) if old is not None else None,
                spills=old.spills if old is not None else 0,
            )
        )
    return views


def _pool_of(pod: Obj) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(POOL_LABEL)


def _retired_views(retired: Mapping[str, Obj]) -> list[placement.PoolView]:
    views = []
    for name, deployment in retired.items():
        replicas, ready = _replicas(deployment)
        views.append(placement.PoolView(name, 0, replicas, ready, replicas, None, 0, None))
    return views


async def place(
    api: Api,
    state: ScalingState,
    owner: Owner,
    spec: QuasarMinerSpec,
    endpoint: Endpoint,
    desired: int,
    owned: list[Obj],
    pods: list[Obj],
    previous: MinerStatus,
    now: float,
) -> tuple[list[Obj], Obj, list[Note]]:
    """Apply each pool's Deployment; drain and delete retired ones. `owned`: the miner's Deployments."""
    names = miner_names(owner.name, spec)
    wanted = names.pool_deployments if spec.placement is not None else {IMPLICIT_POOL: names.deployment}
    live = {d["metadata"]["name"]: d for d in owned}
    retired = {name: d for name, d in live.items() if name not in wanted.values()}
    cluster = await state.observer.cluster(api) if spec.placement is not None else None
    # From the listing to the claims below nothing awaits: no other miner's reconcile plans in between.
    views = _pool_views(owner, spec, desired, live, pods, cluster, previous, now)
    views += _retired_views(retired)
    spill_after = spec.placement.spill_after_seconds if spec.placement is not None else 0
    plan = placement.plan(desired, views, now, spill_after)
    pools = {pool.name: pool for pool in spec.placement.pools} if spec.placement is not None else {}
    for view in views:
        if view.name in pools and plan.replicas(view.name) > view.replicas:
            state.observer.claim(_pod_template(owner, spec, pools[view.name]), plan.replicas(view.name))
    applied = []
    for pool_name in wanted:
        built = miner_deployment(
            owner.name,
            owner.namespace,
            owner.uid,
            spec,
            endpoint,
            pool=pools.get(pool_name),
            replicas=plan.replicas(pool_name),
        )
        applied.append(await api.apply(built))
    for name, deployment in retired.items():
        await _drain(api, owner, name, deployment, plan.replicas(name))
    return applied, _placement_status(spec, plan, views, applied), _placement_notes(plan, desired)


async def _drain(api: Api, owner: Owner, name: str, deployment: Obj, replicas: int) -> None:
    path = object_path("Deployment", owner.namespace, name)
    pods_left = int((deployment.get("status") or {}).get("replicas") or 0)
    if replicas == 0 and pods_left == 0:
        await api.delete(path)
    elif _replicas(deployment)[0] != replicas:
        # Not an apply: the retired pool's configuration is gone from the spec, and an apply configuration
        # of replicas alone would remove the template the operator owns. Only the count goes down.
        await api.merge_patch(path, {"spec": {"replicas": replicas}})


def _placement_status(
    spec: QuasarMinerSpec, plan: placement.Plan, views: list[placement.PoolView], applied: list[Obj]
) -> Obj:
    if spec.placement is None:
        return {"unplaced": plan.unplaced, "pools": None}  # None: a merge patch removes stale pools
    by_name = {view.name: view for view in views}
    shares = {share.name: share for share in plan.shares}
    pools = []
    for pool, deployment in zip(spec.placement.pools, applied, strict=True):
        view, share = by_name[pool.name], shares[pool.name]
        status = deployment.get("status") or {}
        # Unset fields are left out, not null: the API server stores no nulls, and a status that reads back
        # different from what the operator computes would be written again at every reconcile.
        pools.append(
            without_nulls(
                {
                    "name": pool.name,
                    "desired": share.replicas,
                    "replicas": int(status.get("replicas") or 0),
                    "ready": int(status.get("readyReplicas") or 0),
                    "pending": max(0, view.replicas - view.scheduled),
                    "free": view.free,
                    "spot": pool.spot,
                    "fullSince": None if share.full_since is None else rfc3339(share.full_since),
                    "spills": share.spills,
                }
            )
        )
    return {"pools": pools, "unplaced": plan.unplaced}


def _placement_notes(plan: placement.Plan, desired: int) -> list[Note]:
    notes = [
        Note("Warning", "PoolFull", f"pool {name} cannot schedule more replicas: spilling to the next pool")
        for name in plan.spilled
    ]
    notes += [Note("Normal", "PoolReopened", f"pool {name} has free GPUs again") for name in plan.reopened]
    if plan.unplaced:
        notes.append(
            Note("Warning", "InsufficientCapacity", f"{plan.unplaced} of {desired} replicas fit in no pool")
        )
    return notes


def owned_deployments_selector(name: str) -> dict[str, str]:
    return selector_labels(Owner(KIND, name, "", ""))
