"""kopf's handlers: when to reconcile, and what to do with the pipeline's result.

Every path (create, update, resume after a restart, and a timer for drift) runs the same idempotent
pipeline (`reconcile.py`), so a missed event or a child edited by hand converges on the next run. The
operator writes the resource's status, never its spec: `spec.replicas` belongs to whoever scales the
resource (a person, an HPA or KEDA through the scale subresource).
"""

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from quasar_operator.apply import ApiError, KubeApi, differs
from quasar_operator.metrics import DURATION, ERRORS, RECONCILES, STATUS_GAUGES
from quasar_operator.models import GROUP, VERSION
from quasar_operator.observe import Observer
from quasar_operator.reconcile import (
    Resource,
    Result,
    cleanup_paths,
    owned_by,
    reconcile_miner,
    reconcile_validator,
)
from quasar_operator.scaling import ScalingState
from quasar_operator.settings import Settings
from quasar_operator.status import rfc3339

Pipeline = Callable[[KubeApi, Resource, str, ScalingState], Awaitable[Result]]
KINDS: dict[str, tuple[str, Pipeline]] = {
    "QuasarMiner": ("quasarminers", reconcile_miner),
    "QuasarValidator": ("quasarvalidators", reconcile_validator),
}


def _now() -> str:
    return rfc3339(time.time())


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def find_credentials(kopf_settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """In a pod its service account; on a workstation the kubeconfig (KUBECONFIG, else ~/.kube/config)."""
    return kopf.login_with_service_account(settings=kopf_settings) or kopf.login_with_kubeconfig(
        settings=kopf_settings
    )


def looked_for() -> list[str]:
    """Where credentials were looked for, and what was found there (for the one-line error)."""
    kubeconfig = os.environ.get("KUBECONFIG")
    home = os.path.expanduser("~/.kube/config")
    return [
        f"no in-cluster service account ({SERVICE_ACCOUNT_TOKEN})",
        f"KUBECONFIG={kubeconfig}" if kubeconfig else "KUBECONFIG not set",
        f"no ~/.kube/config ({home})" if not os.path.exists(home) else f"~/.kube/config ({home})",
    ]


class Client:
    """The operator's own API client, opened on first use with the credentials kopf logged in with."""

    def __init__(self, settings: Settings, fixed: kopf.ConnectionInfo | None) -> None:
        self.settings = settings
        self.fixed = fixed
        self.connection = fixed
        self._api: KubeApi | None = None
        self.scaling = ScalingState(Observer(cluster_ttl=settings.cluster_ttl))

    async def login(self, kopf_settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
        """kopf logs in at start and again whenever the API server answers 401 (a service account's token
        is rotated by the kubelet): the operator's client then reopens with the fresh credentials."""
        if self.fixed is not None:
            return self.fixed
        fresh = find_credentials(kopf_settings)
        if fresh is None:
            # Only with --wait-for-cluster (else the command stops first): one line per retry, no traceback.
            message = f"no Kubernetes cluster found: {'; '.join(looked_for())}"
            raise kopf.TemporaryError(message, delay=self.settings.retry_delay)
        if fresh != self.connection:
            await self.close()
            self.connection = fresh
        return fresh

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            if self.connection is None:
                raise RuntimeError("the operator reconciled before logging in")
            manager = self.settings.field_manager
            self._api = KubeApi.connect(
                self.connection,
                timeout=self.settings.request_timeout,
                user_agent=manager,
                field_manager=manager,
            )
        return self._api

    async def close(self) -> None:
        await self.scaling.observer.close()
        if self._api is not None:
            await self._api.close()
            self._api = None


def configure(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """The kopf settings the operator needs whatever runs it (the CLI or the tests)."""
    kopf_settings.persistence.finalizer = settings.finalizer
    # The CRDs' status schemas have no free-form field for kopf's own bookkeeping: it goes to annotations.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=settings.annotation_prefix
    )
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=settings.annotation_prefix, key="last-handled-configuration"
    )
    kopf_settings.watching.server_timeout = settings.watch_server_timeout
    kopf_settings.watching.client_timeout = settings.watch_client_timeout
    kopf_settings.posting.reporting_component = settings.field_manager
    # At shutdown a timer may be mid-reconcile (awaiting the API): let it finish rather than orphan it, or
    # the client it uses is closed under it and its HTTP session leaks ("Unclosed client session").
    kopf_settings.background.instant_exit_timeout = 10.0


async def _run(
    kind: str, body: kopf.Body, patch: kopf.Patch, client: Client, logger: kopf.Logger, *, raise_: bool
) -> None:
    pipeline = KINDS[kind][1]
    resource = Resource.from_body(body)
    started = time.monotonic()
    result = await pipeline(client.api, resource, _now(), client.scaling)
    DURATION.labels(kind).observe(time.monotonic() - started)
    # An unchanged status is not written: every write wakes every watcher, and kopf's own patches test
    # the resourceVersion, which a needless write would keep moving.
    live = body.get("status")
    if result.replace_status and isinstance(live, Mapping):
        # A merge patch keeps the fields it does not name: the unreadable ones are removed explicitly.
        patch["status"] = {**dict.fromkeys(live), **result.status}
    elif differs(result.status, live if isinstance(live, Mapping) else None):
        patch["status"] = result.status
    STATUS_GAUGES.update(kind, resource.namespace, resource.name, result.status)
    for note in result.notes:
        post = kopf.warn if note.type == "Warning" else kopf.info
        post(body, reason=note.reason, message=note.message)
        logger.info("%s: %s", note.reason, note.message)
    failure = result.failure
    if failure is None:
        RECONCILES.labels(kind, "success").inc()
        return
    RECONCILES.labels(kind, "failure").inc()
    ERRORS.labels(kind, failure.reason).inc()
    already = any(
        c.get("type") == "Degraded" and c.get("status") == "True" and c.get("message") == failure.message
        for c in resource.conditions
    )
    # One Event (and log line) per new problem, not one per timer tick.
    if not already:
        kopf.warn(body, reason=failure.reason, message=failure.message)
        logger.warning("%s: %s", failure.reason, failure.message)
    if not raise_:
        return
    if result.retry:
        raise kopf.TemporaryError(failure.message, delay=client.settings.retry_delay)
    raise kopf.PermanentError(failure.message)


async def _cleanup(kind: str, body: kopf.Body, client: Client, logger: kopf.Logger) -> None:
    # Kubernetes' garbage collector would delete the owned objects too; deleting them here makes deletion
    # not depend on it (and waits for them before the finalizer goes).
    meta = body["metadata"]
    client.scaling.history.pop(meta["uid"], None)  # its autoscaler's memory goes with it
    STATUS_GAUGES.forget(kind, meta["namespace"], meta["name"])
    try:
        paths = await cleanup_paths(client.api, kind, meta["name"], meta["namespace"])
    except ApiError as exc:
        raise kopf.TemporaryError(f"cleanup: {exc}", delay=client.settings.retry_delay) from exc
    for path in paths:
        try:
            live = await client.api.get(path)
            if live is not None and owned_by(live, meta["uid"]):
                await client.api.delete(path)
                logger.info("deleted %s", path)
        except ApiError as exc:
            raise kopf.TemporaryError(f"cleanup of {path}: {exc}", delay=client.settings.retry_delay) from exc


def scales_itself(body: kopf.Body, **_: Any) -> bool:
    """Whether the miner scales or places itself. Read from the raw body, as the reconcile has not parsed it:
    a malformed spec (a string, `autoscaling: "on"`) is not dynamic, and its reconcile reports it."""
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return False
    placement, autoscaling = spec.get("placement"), spec.get("autoscaling")
    placed = isinstance(placement, Mapping) and bool(placement)
    scaled = isinstance(autoscaling, Mapping) and bool(autoscaling) and autoscaling.get("mode") != "external"
    return placed or scaled


def drifts_only(body: kopf.Body, **kwargs: Any) -> bool:
    return not scales_itself(body, **kwargs)


def build_registry(
    settings: Settings, connection: kopf.ConnectionInfo | None = None
) -> kopf.OperatorRegistry:
    """Every handler, registered on a registry of its own (the settings shape the timer and retries).

    `connection`: a fixed API server (the tests' emulator); None logs in as kubectl or a pod would.
    """
    registry = kopf.OperatorRegistry()
    client = Client(settings, connection)

    @kopf.on.login(registry=registry)
    async def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return await client.login(settings)

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await client.close()

    for kind, (plural, _pipeline) in KINDS.items():
        _register(registry, settings, client, kind, plural)
    return registry


def _register(
    registry: kopf.OperatorRegistry, settings: Settings, client: Client, kind: str, plural: str
) -> None:
    resource = (GROUP, VERSION, plural)

    async def reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        await _run(kind, body, patch, client, logger, raise_=True)

    async def repair(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        # The timer's next tick is its retry: it never raises, so kopf does not add its own backoff.
        await _run(kind, body, patch, client, logger, raise_=False)

    async def delete(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        await _cleanup(kind, body, client, logger)

    kopf.on.create(*resource, registry=registry, id="reconcile")(reconcile)
    kopf.on.update(*resource, registry=registry, id="reconcile")(reconcile)
    kopf.on.resume(*resource, registry=registry, id="reconcile")(reconcile)
    # Miners that scale or place themselves are reconciled more often: that is when their metrics are read
    # and their pools' state is acted on. The two timers' conditions exclude each other.
    # A first tick only after one interval: the create or resume handler has just reconciled the resource,
    # and a tick at once would apply the same objects again, racing it.
    kopf.timer(
        *resource,
        registry=registry,
        id="drift",
        interval=settings.drift_interval,
        initial_delay=settings.drift_interval,
        when=drifts_only,
    )(repair)
    if kind == "QuasarMiner":
        kopf.timer(
            *resource,
            registry=registry,
            id="scale",
            interval=settings.scale_interval,
            initial_delay=settings.scale_interval,
            when=scales_itself,
        )(repair)
    kopf.on.delete(*resource, registry=registry, id="cleanup")(delete)
