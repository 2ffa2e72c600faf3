"""The reconcile pipeline: a resource's body in, its objects applied and its status out.

CloudNativePG's style: a line of small steps, each returning early with a `Failure` that becomes the
status and an Event. Nothing here raises on a bad resource: the caller (kopf's handlers) decides about
retries, so one broken object never stops the operator from serving the others.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from quasar_operator.apply import ApiError, object_path
from quasar_operator.builders import (
    BuildError,
    announced_endpoint,
    miner_cache_claim,
    miner_endpoint,
    miner_metrics_service,
    miner_selector,
    miner_service,
    validator_service,
    validator_statefulset,
)
from quasar_operator.builders.common import Owner
from quasar_operator.builders.miner import KIND, miner_disruption_budget, miner_names
from quasar_operator.builders.validator import validator_name
from quasar_operator.models import QuasarMinerSpec, QuasarValidatorSpec, WalletSpec, error_summary
from quasar_operator.scaling import (
    Note,
    ScalingState,
    desired_replicas,
    miner_pods,
    owned_deployments_selector,
    place,
    previous_status,
)
from quasar_operator.status import Failure, Workload, compute

Obj = dict[str, Any]

INVALID_SPEC = "InvalidSpec"
SECRET_MISSING = "SecretMissing"
API_ERROR = "ApiError"
ADDRESS_PENDING = "AddressPending"


class Api(Protocol):
    async def get(self, path: str) -> Obj | None: ...

    async def apply(self, desired: Obj) -> Obj: ...

    async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[Obj]: ...

    async def merge_patch(self, path: str, patch: Obj) -> Obj | None: ...

    async def delete(self, path: str) -> bool: ...


@dataclass(frozen=True)
class Resource:
    """What the pipeline reads of a custom resource."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: Mapping[str, Any]
    conditions: list[Obj]
    status: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Resource":
        meta = body.get("metadata") or {}
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=meta.get("generation"),
            spec=body.get("spec") or {},
            status=body.get("status") or {},
            conditions=list((body.get("status") or {}).get("conditions") or []),
        )


@dataclass(frozen=True)
class Result:
    status: Obj
    failure: Failure | None = None
    # A failure that may clear by itself (a Secret created later, an API hiccup): retry with backoff.
    # An invalid spec only clears with a new generation, which brings its own event.
    retry: bool = False
    # Events about what the reconcile did (scaling, spilling), besides a failure's.
    notes: tuple[Note, ...] = ()


def parse_miner(resource: Resource) -> QuasarMinerSpec | Failure:
    try:
        spec = QuasarMinerSpec.model_validate(resource.spec)
        miner_names(resource.name, spec)  # every object name, checked before anything is applied
    except ValidationError as exc:
        return Failure(INVALID_SPEC, "spec." + error_summary(exc).replace("; ", "; spec."))
    except BuildError as exc:
        return Failure(INVALID_SPEC, str(exc))
    return spec


def parse_validator(resource: Resource) -> QuasarValidatorSpec | Failure:
    try:
        spec = QuasarValidatorSpec.model_validate(resource.spec)
        validator_name(resource.name)
    except ValidationError as exc:
        return Failure(INVALID_SPEC, "spec." + error_summary(exc).replace("; ", "; spec."))
    except BuildError as exc:
        return Failure(INVALID_SPEC, str(exc))
    return spec


async def check_wallet(api: Api, resource: Resource, wallet: WalletSpec) -> Failure | None:
    # Without it the pods would sit in ContainerCreating with the cause visible only on the pod's events.
    if await api.get(object_path("Secret", resource.namespace, wallet.secret_name)) is None:
        return Failure(
            SECRET_MISSING,
            f"spec.wallet.secretName: Secret {resource.namespace}/{wallet.secret_name} does not exist",
        )
    return None


def _failed(resource: Resource, failure: Failure, now: str, *, retry: bool) -> Result:
    status = compute(generation=resource.generation, previous=resource.conditions, now=now, failure=failure)
    return Result(status, failure, retry)


async def reconcile_miner(api: Api, resource: Resource, now: str, scaling: ScalingState) -> Result:
    spec = parse_miner(resource)
    if isinstance(spec, Failure):
        return _failed(resource, spec, now, retry=False)
    try:
        missing = await check_wallet(api, resource, spec.wallet)
        if missing is not None:
            return _failed(resource, missing, now, retry=True)
        return await _apply_miner(api, resource, spec, now, scaling)
    except ApiError as exc:
        return _failed(resource, Failure(API_ERROR, str(exc)), now, retry=True)


async def _apply_miner(
    api: Api, resource: Resource, spec: QuasarMinerSpec, now: str, scaling: ScalingState
) -> Result:
    name, namespace, uid = resource.name, resource.namespace, resource.uid
    claim = miner_cache_claim(name, namespace, uid, spec)
    if claim is not None:
        await api.apply(claim)
    await api.apply(miner_metrics_service(name, namespace, uid, spec))
    await api.apply(miner_disruption_budget(name, namespace, uid, spec))
    # The Service first: the Deployment announces the address the Service gets.
    service = await api.apply(miner_service(name, namespace, uid, spec))
    extra: Obj = {"selector": miner_selector(name)}
    endpoint = miner_endpoint(spec, service.get("status"))
    if endpoint is None:
        waiting = Failure(ADDRESS_PENDING, "waiting for the load balancer to assign an IP address")
        status = compute(
            generation=resource.generation, previous=resource.conditions, now=now, waiting=waiting
        )
        return Result({**status, **extra, "endpoint": None})
    owner = Owner(KIND, name, namespace, uid)
    previous = previous_status(resource.status)
    clock = scaling.clock()
    pods = await miner_pods(api, scaling, owner, spec)
    desired, scale_status, notes = await desired_replicas(scaling, owner, spec, pods, previous, clock)
    owned = [
        d
        for d in await api.list(object_path("Deployment", namespace), owned_deployments_selector(name))
        if owned_by(d, uid)
    ]
    try:
        applied, pool_status, pool_notes = await place(
            api, scaling, owner, spec, endpoint, desired, owned, pods, previous, clock
        )
    except BuildError as exc:
        return _failed(resource, Failure(INVALID_SPEC, str(exc)), now, retry=False)
    if (pool_status.get("unplaced") or 0) == (previous.unplaced or 0):
        # Spilling and reopening are one-off transitions; a shortfall is told once, when it changes.
        pool_notes = [n for n in pool_notes if n.reason != "InsufficientCapacity"]
    workload = Workload.total(applied, desired)
    status = compute(generation=resource.generation, previous=resource.conditions, now=now, workload=workload)
    return Result(
        {
            **status,
            **extra,
            **scale_status,
            **pool_status,
            "endpoint": announced_endpoint(spec, service.get("status")),
        },
        notes=(*notes, *pool_notes),
    )


async def reconcile_validator(api: Api, resource: Resource, now: str, scaling: ScalingState) -> Result:
    spec = parse_validator(resource)
    if isinstance(spec, Failure):
        return _failed(resource, spec, now, retry=False)
    try:
        missing = await check_wallet(api, resource, spec.wallet)
        if missing is not None:
            return _failed(resource, missing, now, retry=True)
        name, namespace, uid = resource.name, resource.namespace, resource.uid
        # The headless Service first: the StatefulSet names it as its serviceName.
        await api.apply(validator_service(name, namespace, uid, spec))
        statefulset = await api.apply(validator_statefulset(name, namespace, uid, spec))
    except BuildError as exc:
        return _failed(resource, Failure(INVALID_SPEC, str(exc)), now, retry=False)
    except ApiError as exc:
        return _failed(resource, Failure(API_ERROR, str(exc)), now, retry=True)
    workload = Workload.from_object(statefulset, 1)
    return Result(
        compute(generation=resource.generation, previous=resource.conditions, now=now, workload=workload)
    )


def children(kind: str, name: str, namespace: str) -> list[str]:
    """The paths of every object the operator may have created for a resource, to delete with it.

    From the name alone: a spec that no longer parses must still be cleaned up. An `existingClaim` is
    among none of them, and the caller deletes only what carries the resource's uid as its owner.
    """
    if kind == "QuasarMiner":
        # Each pool's Deployment too: `cleanup_paths` adds those it finds by label.
        base = f"{name}-miner"
        return [
            object_path("Deployment", namespace, base),
            object_path("Service", namespace, base),
            object_path("Service", namespace, f"{base}-metrics"),
            object_path("PodDisruptionBudget", namespace, base),
            object_path("PersistentVolumeClaim", namespace, f"{base}-cache"),
        ]
    base = f"{name}-validator"
    return [object_path("StatefulSet", namespace, base), object_path("Service", namespace, base)]


async def cleanup_paths(api: Api, kind: str, name: str, namespace: str) -> list[str]:
    """`children`, and the Deployments of pools, found by the miner's labels (the spec may not parse)."""
    paths = children(kind, name, namespace)
    if kind == "QuasarMiner":
        found = await api.list(object_path("Deployment", namespace), owned_deployments_selector(name))
        paths += [object_path("Deployment", namespace, d["metadata"]["name"]) for d in found]
    return list(dict.fromkeys(paths))


def owned_by(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])
