"""The objects of a QuasarMiner: the engine + miner Deployment, its Services, the model cache PVC.

Two Services: `<name>-miner`, public (LoadBalancer or NodePort), carries the axon port alone; the miner's
and the engine's metrics are on ports of their own that only `<name>-miner-metrics`, cluster-internal,
carries (a ServiceMonitor selects its ports by name).

Each function builds one object from the resource's identity and spec. The Deployment also needs the
address announced on chain (`miner_endpoint`): with a LoadBalancer that is only known once the cloud has
assigned one, so the reconciler applies the Services first and the Deployment once the address exists.
"""

import math
from dataclasses import dataclass

from quasar_operator.builders.common import (
    BuildError,
    Obj,
    Owner,
    apply_pod_overrides,
    child_name,
    labels,
    metadata,
    neuron_env,
    number,
    pod_security_context,
    restricted_security_context,
    secret_env,
    selector_labels,
    subnet_args,
    tmp_volume,
    wallet_args,
    wallet_volume,
)
from quasar_operator.builders.engines import engine
from quasar_operator.builders.engines.tgi import DRAIN_S as ENGINE_DRAIN_S
from quasar_operator.models import AXON_PORT, GPU_RESOURCE, PoolSpec, QuasarMinerSpec, sets_memory_fraction

KIND = "QuasarMiner"

# Time for the endpoint removal to reach kube-proxy and the load balancer before the containers get SIGTERM,
# so no new query arrives at a pod that is stopping.
PRESTOP_SLEEP_S = 15
# The kubelet kills the pod this long after it starts stopping: the preStop sleep, TGI's drain (vLLM and
# SGLang finish running requests on SIGTERM too), and margin.
TERMINATION_GRACE_S = PRESTOP_SLEEP_S + ENGINE_DRAIN_S + 15
STARTUP_PROBE_PERIOD_S = 10
CACHE_MOUNT = "/data"  # the TGI image's HF_HOME; HF_HOME for every engine
# The label that tells the pools' pods apart: each pool's Deployment selects on it too, so no two
# Deployments ever claim the same pods.
POOL_LABEL = "quasar.ai/pool"
# The miner's /metrics (`quasar miner --metrics.port`, its default too), apart from the public axon port.
MINER_METRICS_PORT = 9091
# The container's port and the metrics Service's, which the chart's ServiceMonitor names.
MINER_METRICS_PORT_NAME = "miner-metrics"


@dataclass(frozen=True)
class Endpoint:
    """The address validators reach the miner at, as announced on chain."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class MinerNames:
    deployment: str
    service: str
    metrics_service: str
    cache_claim: str
    disruption_budget: str
    # The Deployment of each pool in spec.placement, by pool name.
    pool_deployments: dict[str, str]


def pool_deployment_name(name: str, pool: str) -> str:
    return child_name(Owner(KIND, name, "", ""), f"miner-{pool}")


def miner_names(name: str, spec: QuasarMinerSpec) -> MinerNames:
    """Every object name, all checked at once so that a name too long fails every builder the same way."""
    owner = Owner(KIND, name, "", "")
    pools = spec.placement.pools if spec.placement is not None else []
    return MinerNames(
        deployment=child_name(owner, "miner"),
        service=child_name(owner, "miner"),
        metrics_service=child_name(owner, "miner-metrics"),
        cache_claim=spec.cache.existing_claim or child_name(owner, "miner-cache"),
        disruption_budget=child_name(owner, "miner"),
        pool_deployments={pool.name: pool_deployment_name(name, pool.name) for pool in pools},
    )


def for_pool(spec: QuasarMinerSpec, pool: PoolSpec) -> QuasarMinerSpec:
    """The spec as one pool runs it: its engine overrides and scheduling merged over the miner's own."""
    overrides = pool.model.model_dump(exclude_none=True)
    model = spec.model.model_copy(update=overrides)
    if (
        pool.model.gpus_per_replica is not None
        and pool.model.shards is None
        and spec.model.shards is not None
    ):
        # The miner's shard count was chosen for its own GPU count; here the pool's applies.
        model = model.model_copy(update={"shards": None})
    pod = spec.pod.model_copy(
        update={
            "node_selector": {**spec.pod.node_selector, **pool.node_selector},
            "tolerations": [*spec.pod.tolerations, *pool.tolerations],
            "affinity": pool.affinity if pool.affinity is not None else spec.pod.affinity,
        }
    )
    return spec.model_copy(update={"model": model, "pod": pod})


def miner_selector(name: str) -> str:
    """The pods' label selector as a string: `status.selector`, what the scale subresource gives an HPA."""
    owner = Owner(KIND, name, "", "")
    return ",".join(f"{key}={value}" for key, value in selector_labels(owner).items())


def miner_endpoint(spec: QuasarMinerSpec, service_status: Obj | None) -> Endpoint | None:
    """The endpoint to announce, or None while the load balancer has no IP address yet.

    `service_status` is the miner Service's `.status` as the API server reports it. The chain stores an IP
    address, so a load balancer that only reports a host name (AWS ELB) needs `exposure.externalIP`.
    """
    exposure = spec.exposure
    if exposure.service_type == "NodePort":
        # The models require both (the node's public address and a fixed node port); this guards specs
        # built without validation.
        if exposure.external_ip is None or exposure.node_port is None:
            raise BuildError("spec.exposure", "serviceType NodePort needs externalIP and nodePort")
        ip, port = exposure.external_ip, exposure.node_port
    else:
        balancer: Obj = (service_status or {}).get("loadBalancer") or {}
        ingress: list[Obj] = balancer.get("ingress") or []
        found = exposure.external_ip or next((i["ip"] for i in ingress if i.get("ip")), None)
        if found is None:
            return None
        ip, port = found, exposure.port
    return Endpoint(ip, exposure.external_port or port)


def announced_endpoint(spec: QuasarMinerSpec, service_status: Obj | None) -> str | None:
    """`ip:port` (IPv6 in brackets) for the status, or None while there is no address yet."""
    endpoint = miner_endpoint(spec, service_status)
    return None if endpoint is None else str(endpoint)


def _check_ports(spec: QuasarMinerSpec) -> None:
    # The engine and the miner share the pod's network namespace: one port each.
    taken = {AXON_PORT: "the miner's axon port", MINER_METRICS_PORT: "the miner's metrics port"}
    metrics_port = engine(spec).metrics_port
    if metrics_port is not None:
        taken[metrics_port] = "TGI's Prometheus port"
    port = spec.engine.container_port
    if port in taken:
        raise BuildError("spec.engine.port", f"{port} is {taken[port]} in the same pod")


def _check_pool_memory(spec: QuasarMinerSpec, pool: PoolSpec) -> None:
    # A pool's extraArgs replace the miner's, so the models' rule on spec.model cannot see them.
    if spec.model.gpu_memory_fraction is not None and sets_memory_fraction(pool.model.extra_args or ()):
        raise BuildError(
            f"spec.placement.pools[{pool.name}].model.extraArgs",
            "sets the GPU memory fraction that spec.model.gpuMemoryFraction sets",
        )


def most_replicas(spec: QuasarMinerSpec) -> int:
    """The most replicas the spec can ask for: its autoscaler's maximum, or spec.replicas."""
    return spec.autoscaling.max_replicas if spec.autoscaling is not None else spec.replicas


def _check_cache(spec: QuasarMinerSpec) -> None:
    if spec.cache.access_mode == "ReadWriteOncePod" and most_replicas(spec) > 1:
        raise BuildError(
            "spec.cache.accessMode",
            f"ReadWriteOncePod lets one pod mount the cache, but up to {most_replicas(spec)} replicas run",
        )


def engine_args(spec: QuasarMinerSpec) -> list[str]:
    """The engine's flags, derived from the spec by its kind's module (builders/engines/)."""
    return engine(spec).args(spec)


def _engine_resources(spec: QuasarMinerSpec, gpu: str) -> Obj:
    # gpusPerReplica is the one source of the GPU count; a GPU request elsewhere in the spec is overridden.
    requests = {k: v for k, v in spec.engine.resources.requests.items() if k != gpu}
    limits = {k: v for k, v in spec.engine.resources.limits.items() if k != gpu}
    if spec.model.gpus_per_replica:
        limits[gpu] = str(spec.model.gpus_per_replica)
    return {key: value for key, value in {"requests": requests, "limits": limits}.items() if value}


def _prestop() -> Obj:
    return {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}}


def engine_ports(spec: QuasarMinerSpec) -> list[Obj]:
    """The engine's ports: `engine`, and `engine-metrics` where the metrics have a port of their own (TGI).
    vLLM and SGLang serve `/metrics` on `engine`, which the observer and the metrics Service then use."""
    ports = [{"name": "engine", "containerPort": spec.engine.container_port, "protocol": "TCP"}]
    metrics_port = engine(spec).metrics_port
    if metrics_port is not None:
        ports.append({"name": "engine-metrics", "containerPort": metrics_port, "protocol": "TCP"})
    return ports


def engine_container(spec: QuasarMinerSpec, gpu_resource: str = GPU_RESOURCE) -> Obj:
    kind = engine(spec)
    env: list[Obj] = [{"name": "HF_HOME", "value": CACHE_MOUNT}]
    token = spec.cache.hf_token_secret
    if token is not None:
        env.append(secret_env("HF_TOKEN", token))
    command = {} if kind.command is None else {"command": list(kind.command)}
    return {
        "name": "engine",
        "image": spec.engine.container_image,
        "imagePullPolicy": spec.engine.image_pull_policy,
        **command,
        "args": engine_args(spec),
        "env": env,
        "ports": engine_ports(spec),
        "resources": _engine_resources(spec, gpu_resource),
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_MOUNT},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        # The engines only listen (or answer their health route) once the model is downloaded and loaded:
        # the startup probe carries the whole budget, and the other probes only start after it passed.
        "startupProbe": {
            "httpGet": {"path": kind.startup_path, "port": "engine"},
            "periodSeconds": STARTUP_PROBE_PERIOD_S,
            "timeoutSeconds": 10,
            "failureThreshold": math.ceil(spec.engine.startup_timeout_seconds / STARTUP_PROBE_PERIOD_S),
        },
        "readinessProbe": {
            "httpGet": {"path": kind.readiness_path, "port": "engine"},
            "periodSeconds": 10,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
        # Liveness only asks whether the port accepts connections, for five minutes: /health can wait behind
        # a prefill of millions of tokens, and restarting a busy engine would reload the whole model.
        "livenessProbe": {
            "tcpSocket": {"port": "engine"},
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "failureThreshold": 10,
        },
        "lifecycle": _prestop(),
        # The engine images run as root and write the cache; they still get no way to gain more privileges.
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def miner_args(spec: QuasarMinerSpec, endpoint: Endpoint) -> list[str]:
    neuron = spec.neuron
    args = [
        *subnet_args(spec.subnet),
        *wallet_args(spec.wallet),
        "--axon.port",
        str(AXON_PORT),
        "--axon.external_ip",
        endpoint.ip,
        "--axon.external_port",
        str(endpoint.port),
        # Every address of the pod: Prometheus scrapes the pod's; the public Service does not carry the port.
        "--metrics.host",
        "0.0.0.0",
        "--metrics.port",
        str(MINER_METRICS_PORT),
        "--engine.url",
        f"http://127.0.0.1:{spec.engine.container_port}",
        "--engine.kind",
        spec.engine.kind,
        # The miner refuses to serve if the engine reports another model (TGI's model_id, the models vLLM
        # and SGLang list): the same string as the engine's model flag.
        "--miner.model_name",
        spec.model.id,
    ]
    if spec.engine.kind != "tgi":
        args += ["--engine.api", spec.engine.api or "chat"]
    if neuron.min_stake is not None:
        args += ["--blacklist.min_stake", number(neuron.min_stake)]
    if neuron.engine_timeout_seconds is not None:
        args += ["--engine.timeout", str(neuron.engine_timeout_seconds)]
    if neuron.debug:
        args.append("--logging.debug")
    return [*args, *neuron.args]


def miner_container(spec: QuasarMinerSpec, endpoint: Endpoint) -> Obj:
    neuron = spec.neuron
    resources = {
        key: dict(value)
        for key, value in {"requests": neuron.resources.requests, "limits": neuron.resources.limits}.items()
        if value
    }
    return {
        "name": "miner",
        "image": neuron.image,
        "imagePullPolicy": neuron.image_pull_policy,
        "command": ["quasar", "miner"],
        "args": miner_args(spec, endpoint),
        "env": neuron_env(),
        "ports": [
            {"name": "axon", "containerPort": AXON_PORT, "protocol": "TCP"},
            {"name": MINER_METRICS_PORT_NAME, "containerPort": MINER_METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": resources,
        "volumeMounts": [wallet_volume(spec.wallet)[1], tmp_volume()[1]],
        # Ready only when the engine serves the configured model and the chain shows the announced endpoint.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "axon"},
            "periodSeconds": 10,
            "timeoutSeconds": 15,  # /readyz may wait up to 10 s for the engine's /info
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "axon"},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "lifecycle": _prestop(),
        "securityContext": restricted_security_context(),
    }


def _strategy(spec: QuasarMinerSpec) -> Obj:
    # A surge pod must mount the cache while the old pod still holds it: only a ReadWriteMany claim lets it
    # do so on any node. Otherwise it would wait forever holding a GPU, so the old pod goes first.
    if spec.cache.access_mode == "ReadWriteMany":
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    return {"type": "Recreate"}


def miner_deployment(
    name: str,
    namespace: str,
    uid: str,
    spec: QuasarMinerSpec,
    endpoint: Endpoint,
    *,
    pool: PoolSpec | None = None,
    replicas: int | None = None,
) -> Obj:
    """The engine + miner pods; `endpoint` is what `miner_endpoint` found for the Service.

    Without `pool`, the miner's one Deployment (`<name>-miner`); with one, that pool's
    (`<name>-miner-<pool>`), its pods labelled with the pool and scheduled on it. `replicas` defaults to
    spec.replicas.
    """
    _check_ports(spec)
    _check_cache(spec)
    owner = Owner(KIND, name, namespace, uid)
    names = miner_names(name, spec)
    deployment_name, selector, gpu = names.deployment, selector_labels(owner), GPU_RESOURCE
    if pool is not None:
        deployment_name = names.pool_deployments[pool.name]
        selector = {**selector, POOL_LABEL: pool.name}
        gpu = pool.gpu_resource
        _check_pool_memory(spec, pool)
        spec = for_pool(spec, pool)
    volumes = [
        {"name": "cache", "persistentVolumeClaim": {"claimName": names.cache_claim}},
        # NCCL exchanges tensors between shards through shared memory; the container default is 64 MB.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.engine.shm_size}},
        wallet_volume(spec.wallet)[0],
        tmp_volume()[0],
    ]
    template = {
        "metadata": {"labels": {**labels(owner), **selector}},
        "spec": {
            "containers": [engine_container(spec, gpu), miner_container(spec, endpoint)],
            "volumes": volumes,
            "securityContext": pod_security_context(),
            "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
            # The neurons never call the Kubernetes API, and service environment variables only add noise.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, deployment_name),
        "spec": {
            "replicas": spec.replicas if replicas is None else replicas,
            "selector": {"matchLabels": selector},
            "strategy": _strategy(spec),
            # The default 10 minutes would report a rollout as failed while the model is still loading.
            "progressDeadlineSeconds": spec.engine.startup_timeout_seconds + 600,
            "template": apply_pod_overrides(template, spec.pod),
        },
    }


def miner_service(name: str, namespace: str, uid: str, spec: QuasarMinerSpec) -> Obj:
    """The Service validators reach the miners through (LoadBalancer or NodePort): the axon port only."""
    owner = Owner(KIND, name, namespace, uid)
    exposure = spec.exposure
    port: Obj = {"name": "axon", "port": exposure.port, "targetPort": "axon", "protocol": "TCP"}
    if exposure.node_port is not None:
        port["nodePort"] = exposure.node_port
    meta = metadata(owner, miner_names(name, spec).service)
    if exposure.annotations:
        meta["annotations"] = dict(exposure.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": exposure.service_type, "selector": selector_labels(owner), "ports": [port]},
    }


def miner_metrics_service(name: str, namespace: str, uid: str, spec: QuasarMinerSpec) -> Obj:
    """A cluster-internal Service for Prometheus (a ServiceMonitor selects it by label and port name):
    the engine's metrics (queue and batch size: the autoscaling signals) and the miner's own. Its
    `engine-metrics` port leads to TGI's Prometheus port, or to vLLM's and SGLang's API port, which serves
    `/metrics` too; `miner-metrics` to the miner's metrics listener, which the public Service leaves out."""
    owner = Owner(KIND, name, namespace, uid)
    metrics = engine_ports(spec)[-1]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, miner_names(name, spec).metrics_service),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [
                {
                    "name": "engine-metrics",
                    "port": metrics["containerPort"],
                    "targetPort": metrics["name"],
                    "protocol": "TCP",
                },
                {
                    "name": MINER_METRICS_PORT_NAME,
                    "port": MINER_METRICS_PORT,
                    "targetPort": MINER_METRICS_PORT_NAME,
                    "protocol": "TCP",
                },
            ],
        },
    }


def miner_cache_claim(name: str, namespace: str, uid: str, spec: QuasarMinerSpec) -> Obj | None:
    """The model cache PVC, or None for an existing claim (the operator leaves that one alone)."""
    cache = spec.cache
    if cache.existing_claim is not None:
        return None
    owner = Owner(KIND, name, namespace, uid)
    claim: Obj = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name is not None:
        claim["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(owner, miner_names(name, spec).cache_claim),
        "spec": claim,
    }


def miner_disruption_budget(name: str, namespace: str, uid: str, spec: QuasarMinerSpec) -> Obj:
    """At most one of the miner's pods, over every pool, evicted at a time (node drains, spot reclaims
    announced through the eviction API); a pod that is not ready may always go, so it never blocks a drain."""
    owner = Owner(KIND, name, namespace, uid)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, miner_names(name, spec).disruption_budget),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
