"""The operator's settings in one place: what the command line and the environment can change, and the
names it owns (finalizer, annotation prefix, field manager).

The environment variables exist for the Helm chart (a Deployment sets env more readably than args); a flag
given on the command line wins.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

from quasar_operator.models import GROUP

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
FIELD_MANAGER = "quasar-operator"


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    return default if value is None or value == "" else float(value)


@dataclass(frozen=True)
class Settings:
    # None: every namespace (kopf's cluster-wide mode); otherwise only these.
    namespaces: tuple[str, ...] | None = None
    finalizer: str = FINALIZER
    annotation_prefix: str = ANNOTATION_PREFIX
    field_manager: str = FIELD_MANAGER
    # The API server closes a watch after this long and kopf re-opens it: a silently dead connection (a
    # load balancer dropping idle streams) then costs at most this long, not forever. Whole seconds: the
    # API server refuses `timeoutSeconds=300.0` (400, "strconv.ParseInt").
    watch_server_timeout: int = 300
    # The client gives up a little after the server should have closed the stream.
    watch_client_timeout: float = 330.0
    # Every resource is re-applied this often even without an event: a child edited or deleted by hand
    # is repaired within this interval.
    drift_interval: float = 60.0
    # Miners with an autoscaler or pools are reconciled this often: their metrics read, their pools checked.
    scale_interval: float = 15.0
    # How long one listing of the cluster's Nodes and Pods (for free GPUs) serves every miner's reconcile.
    cluster_ttl: float = 5.0
    # Backoff before retrying a resource whose wallet Secret is missing (it may be created any moment).
    retry_delay: float = 30.0
    # Seconds an API request to the operator's own client may take.
    request_timeout: float = 30.0
    # Where the liveness and metrics endpoints listen: every address in a pod (the kubelet probes the pod's
    # IP); the tests give 127.0.0.1.
    listen_address: str = "0.0.0.0"
    liveness_port: int = 8080
    metrics_port: int = 9090
    # With no credentials at start, retry the login (kopf's backoff) instead of exiting with one line.
    wait_for_cluster: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Defaults overridden by `QUASAR_OPERATOR_*` variables (`NAMESPACES` is comma-separated)."""
        env = os.environ if env is None else env
        names = [n.strip() for n in env.get("QUASAR_OPERATOR_NAMESPACES", "").split(",") if n.strip()]
        return cls(
            namespaces=tuple(names) or None,
            watch_server_timeout=int(
                _float(env, "QUASAR_OPERATOR_WATCH_SERVER_TIMEOUT", cls.watch_server_timeout)
            ),
            watch_client_timeout=_float(
                env, "QUASAR_OPERATOR_WATCH_CLIENT_TIMEOUT", cls.watch_client_timeout
            ),
            drift_interval=_float(env, "QUASAR_OPERATOR_DRIFT_INTERVAL", cls.drift_interval),
            scale_interval=_float(env, "QUASAR_OPERATOR_SCALE_INTERVAL", cls.scale_interval),
            cluster_ttl=_float(env, "QUASAR_OPERATOR_CLUSTER_TTL", cls.cluster_ttl),
            retry_delay=_float(env, "QUASAR_OPERATOR_RETRY_DELAY", cls.retry_delay),
            listen_address=env.get("QUASAR_OPERATOR_LISTEN_ADDRESS") or cls.listen_address,
        )
