"""The reconcile pipeline: a resource's body in, its objects applied and its status out.

CloudNativePG's style: a line of small steps, each returning early with a `Failure` that becomes the
status and an Event. Nothing here raises on a bad resource: the caller (kopf's handlers) decides about
retries, so one broken object never stops the operator from serving the others.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

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
from quasar_operator.models import (
    Condition,
    MinerStatus,
    QuasarMinerSpec,
    QuasarValidatorSpec,
    ValidatorStatus,
    WalletSpec,
    error_summary,
)
from quasar_operator.scaling import (
    Note,
    ScalingState,
    desired_replicas,
    miner_pods,
    owned_deployments_selector,
    place,
)
from quasar_operator.status import Failure, Workload, compute
from quasar_operator.wallet import NEEDED_KEYS, coldkeys, data_keys

Obj = dict[str, Any]

INVALID_SPEC = "InvalidSpec"
INVALID_STATUS = "InvalidStatus"
SECRET_MISSING = "SecretMissing"
SECRET_HAS_COLDKEY = "SecretHasColdkey"
SECRET_INCOMPLETE = "SecretIncomplete"
API_ERROR = "ApiError"
ADDRESS_PENDING = "AddressPending"


class Api(Protocol):
    async def get(self, path: str) -> Obj | None: ...

    async def get_metadata(self, path: str) -> Obj | None: ...

    async def apply(self, desired: Obj) -> Obj: ...

    async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[Obj]: ...

    async def merge_patch(self, path: str, patch: Obj) -> Obj | None: ...

    async def delete(self, path: str) -> bool: ...


@dataclass(frozen=True)
class Resource:
    """What the pipeline reads of a custom resource: its identity, and its spec and status as the API server
    returned them (anything at all until parsed: an emulator, or an object stored before its CRD had a
    schema, can hold a spec that is a string)."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: Any
    status: Any = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Resource":
        # The API server always sets these; kopf hands over nothing without them.
        meta = body["metadata"]
        generation = meta.get("generation")
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=generation if type(generation) is int else None,
            spec=body.get("spec"),
            status=body.get("status"),
        )

    @property
    def conditions(self) -> list[Obj]:
        """The previous conditions when they are well formed; none otherwise (they are written anew)."""
        found = self.status.get("conditions") if isinstance(self.status, Mapping) else None
        try:
            return [c.model_dump(by_alias=True) for c in _CONDITIONS.validate_python(found or [])]
        except ValidationError:
            return []


_CONDITIONS = TypeAdapter(list[Condition])


@dataclass(frozen=True)
class Result:
    status: Obj
    failure: Failure | None = None
    # A failure that may clear by itself (a Secret created later, an API hiccup): retry with backoff.
    # An invalid spec only clears with a new generation, which brings its own event.
    retry: bool = False
    # Events about what the reconcile did (scaling, spilling), besides a failure's.
    notes: tuple[Note, ...] = ()
    # The live status could not be read: `status` replaces it whole rather than being merged into it.
    replace_status: bool = False


SpecT = TypeVar("SpecT", bound=BaseModel)
StatusT = TypeVar("StatusT", bound=BaseModel)


def _parse(
    resource: Resource,
    now: str,
    models: tuple[type[SpecT], type[StatusT]],
    check_names: Callable[[str, SpecT], object],
) -> tuple[SpecT, StatusT] | Result:
    """The spec and the previous status, or the Result that says which field is wrong.

    A bad spec waits for the user's next generation. A bad status is the operator's own to fix: it is
    reported once and written anew, and the retry reconciles from the fresh one.
    """
    spec_model, status_model = models
    try:
        spec = spec_model.model_validate(resource.spec)
        check_names(resource.name, spec)  # every object name, checked before anything is applied
    except ValidationError as exc:
        return _failed(resource, Failure(INVALID_SPEC, error_summary(exc, "spec")), now, retry=False)
    except BuildError as exc:
        return _failed(resource, Failure(INVALID_SPEC, str(exc)), now, retry=False)
    try:
        status = status_model.model_validate({} if resource.status is None else resource.status)
    except ValidationError as exc:
        message = f"{error_summary(exc, 'status')} (the operator writes its status anew)"
        failed = _failed(resource, Failure(INVALID_STATUS, message), now, retry=True)
        return replace(failed, replace_status=True)
    return spec, status


def parse_miner(resource: Resource, now: str) -> tuple[QuasarMinerSpec, MinerStatus] | Result:
    return _parse(resource, now, (QuasarMinerSpec, MinerStatus), miner_names)


def parse_validator(resource: Resource, now: str) -> tuple[QuasarValidatorSpec, ValidatorStatus] | Result:
    return _parse(resource, now, (QuasarValidatorSpec, ValidatorStatus), lambda name, _: validator_name(name))


async def check_wallet(api: Api, resource: Resource, wallet: WalletSpec) -> Failure | None:
    """The wallet Secret exists, has the keys the pods mount and no coldkey private key.

    Without it the pods would sit in ContainerCreating with the cause visible only on the pod's events.
    Only its metadata is read (`wallet.py`): the key names, never the keys.
    """
    secret = f"spec.wallet.secretName: Secret {resource.namespace}/{wallet.secret_name}"
    metadata = await api.get_metadata(object_path("Secret", resource.namespace, wallet.secret_name))
    if metadata is None:
        return Failure(SECRET_MISSING, f"{secret} does not exist")
    keys = data_keys(metadata)
    if keys is None:
        return None  # its keys are unknown; the pods mount only the two they need, whatever else it holds
    private = coldkeys(keys)
    if private:
        return Failure(
            SECRET_HAS_COLDKEY,
            f"{secret} holds a coldkey private key under {', '.join(private)}: remove it from the Secret "
            f"(a neuron needs only {' and '.join(NEEDED_KEYS)}; keep the coldkey off the cluster)",
        )
    missing = [key for key in NEEDED_KEYS if key not in keys]
    if missing:
        return Failure(SECRET_INCOMPLETE, f"{secret} has no key {', '.join(missing)}, which the pods mount")
    return None


def _failed(resource: Resource, failure: Failure, now: str, *, retry: bool) -> Result:
    status = compute(generation=resource.generation, previous=resource.conditions, now=now, failure=failure)
    return Result(status, failure, retry)


async def reconcile_miner(api: Api, resource: Resource, now: str, scaling: ScalingState) -> Result:
    parsed = parse_miner(resource, now)
    if isinstance(parsed, Result):
        return parsed
    spec, previous = parsed
    try:
        refused = await check_wallet(api, resource, spec.wallet)
        if refused is not None:
            return _failed(resource, refused, now, retry=True)
        return await _apply_miner(api, resource, spec, previous, now, scaling)
    except ApiError as exc:
        return _failed(resource, Failure(API_ERROR, str(exc)), now, retry=True)


async def _apply_miner(
    api: Api,
    resource: Resource,
    spec: QuasarMinerSpec,
    previous: MinerStatus,
    now: str,
    scaling: ScalingState,
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
    parsed = parse_validator(resource, now)
    if isinstance(parsed, Result):
        return parsed
    spec = parsed[0]
    try:
        refused = await check_wallet(api, resource, spec.wallet)
        if refused is not None:
            return _failed(resource, refused, now, retry=True)
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
