"""The QuasarMiner builders: every spec field lands where it should, and every object is valid Kubernetes."""

import hashlib
import json
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from quasar_operator.builders import (
    BuildError,
    Endpoint,
    announced_endpoint,
    miner_cache_claim,
    miner_deployment,
    miner_endpoint,
    miner_metrics_service,
    miner_selector,
    miner_service,
)
from quasar_operator.builders.engines.tgi import DRAIN_S as ENGINE_DRAIN_S
from quasar_operator.builders.miner import (
    MINER_METRICS_PORT,
    POOL_LABEL,
    PRESTOP_SLEEP_S,
    miner_disruption_budget,
)
from quasar_operator.crds import CRD_DIR
from quasar_operator.models import (
    AXON_PORT,
    NEURON_IMAGE,
    SGLANG_IMAGE,
    TGI_IMAGE,
    VLLM_IMAGE,
    QuasarMinerSpec,
)

from neurons.miner import build_parser

# The oldest Kubernetes release the objects are for: 1.30 turned the preStop `sleep` action on by default.
K8S_VERSION = "1.30.0"

NAME, NAMESPACE, UID = "alpha", "miners", "0b8f3c1e-1111-2222-3333-444455556666"
ENDPOINT = Endpoint("203.0.113.5", 8091)
MINIMAL: dict[str, Any] = {
    "model": {"id": "Qwen/Qwen2.5-7B-Instruct-1M"},
    "wallet": {"secretName": "miner-wallet"},
    "subnet": {"netuid": 42},
}
FULL: dict[str, Any] = {
    "model": {
        "id": "Qwen/Qwen2.5-14B-Instruct-1M",
        "revision": "abc123",
        "maxInputTokens": 1_000_000,
        "maxTotalTokens": 1_010_000,
        "quantize": "fp8",
        "dtype": "bfloat16",
        "ropeScaling": {"type": "dynamic", "factor": 4.0},
        "gpusPerReplica": 4,
        "shards": 2,
        "extraArgs": ["--max-batch-prefill-tokens", "65536"],
    },
    "engine": {
        "image": "example.com/tgi:3.3.5",
        "imagePullPolicy": "Always",
        "port": 8080,
        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "128Gi"}},
        "shmSize": "16Gi",
        "startupTimeoutSeconds": 2700,
    },
    "wallet": {"secretName": "miner-wallet", "name": "cold", "hotkey": "hot1"},
    "subnet": {"netuid": 7, "network": "test", "chainEndpoint": "wss://test.chain.example:443"},
    "exposure": {
        "serviceType": "NodePort",
        "port": 9100,
        "nodePort": 30091,
        "externalIP": "198.51.100.7",
        "externalPort": 30091,
        "annotations": {"example.com/lb": "x"},
    },
    "replicas": 3,
    "cache": {
        "size": "500Gi",
        "storageClassName": "fast",
        "accessMode": "ReadWriteMany",
        "hfTokenSecret": {"name": "hf", "key": "token"},
    },
    "neuron": {
        "image": "example.com/quasar:dev",
        "imagePullPolicy": "Never",
        "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}},
        "args": ["--miner.max_new_tokens", "512"],
        "debug": True,
        "minStake": 500,
        "engineTimeoutSeconds": 1800,
    },
    "pod": {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                    ]
                }
            }
        },
        "nodeSelector": {"pool": "gpu"},
        "priorityClassName": "miners",
        "runtimeClassName": "nvidia",
        "serviceAccountName": "miner",
        "imagePullSecrets": ["registry"],
        "annotations": {"example.com/note": "hi"},
        "labels": {"team": "ml", "app.kubernetes.io/instance": "hijack"},
    },
}


def spec(raw: dict[str, Any] = MINIMAL, **changes: Any) -> QuasarMinerSpec:
    merged = {**raw, **changes}
    return QuasarMinerSpec.model_validate(merged)


def deployment(s: QuasarMinerSpec, endpoint: Endpoint = ENDPOINT, name: str = NAME) -> dict[str, Any]:
    return miner_deployment(name, NAMESPACE, UID, s, endpoint)


def containers(s: QuasarMinerSpec) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment(s)["spec"]["template"]["spec"]["containers"]}


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def all_objects(s: QuasarMinerSpec, name: str = NAME) -> list[dict[str, Any]]:
    pools = s.placement.pools if s.placement is not None else []
    deployments = [miner_deployment(name, NAMESPACE, UID, s, ENDPOINT, pool=p, replicas=1) for p in pools]
    objects = [
        *(deployments or [deployment(s, name=name)]),
        miner_service(name, NAMESPACE, UID, s),
        miner_metrics_service(name, NAMESPACE, UID, s),
        miner_disruption_budget(name, NAMESPACE, UID, s),
    ]
    claim = miner_cache_claim(name, NAMESPACE, UID, s)
    return objects if claim is None else [*objects, claim]


POOLS: list[dict[str, Any]] = [
    {
        "name": "h100",
        "nodeSelector": {"pool": "h100", "zone": "a"},
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        "maxReplicas": 4,
    },
    {
        "name": "mig",
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
        },
        "gpuResource": "nvidia.com/mig-3g.40gb",
        "maxReplicas": 2,
        "model": {"gpusPerReplica": 1, "quantize": "awq", "extraArgs": ["--cuda-graphs", "1"]},
    },
]

SPECS = {
    "minimal": MINIMAL,
    "full": FULL,
    "existing-claim": {**MINIMAL, "cache": {"existingClaim": "models"}},
    "cpu": {**MINIMAL, "model": {"id": "tiny", "gpusPerReplica": 0}},
    "pools": {**FULL, "placement": {"pools": [POOLS[0], POOLS[1]]}},
}


# ------------------------------------------------------------------------------------ valid objects


@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_every_object_passes_kubernetes_validate(raw: dict[str, Any]) -> None:
    for obj in all_objects(spec(raw)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_every_object_is_owned_by_the_miner_and_labelled(raw: dict[str, Any]) -> None:
    for obj in all_objects(spec(raw)):
        meta = obj["metadata"]
        assert meta["namespace"] == NAMESPACE
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "quasar.ai/v1alpha1",
                "kind": "QuasarMiner",
                "name": NAME,
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "quasar-operator"
        assert meta["labels"]["app.kubernetes.io/name"] == "quasar-miner"
        assert meta["labels"]["quasar.ai/miner"] == NAME


def test_services_select_the_deployments_pods() -> None:
    s = spec(FULL)
    d = deployment(s)
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    selector = d["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "quasar-miner",
        "app.kubernetes.io/instance": NAME,
        "quasar.ai/miner": NAME,
    }
    # The user's label of the same key lost: the selector still matches the pods.
    assert selector.items() <= pod_labels.items()
    for service in (miner_service(NAME, NAMESPACE, UID, s), miner_metrics_service(NAME, NAMESPACE, UID, s)):
        assert service["spec"]["selector"] == selector
    # The scale subresource's selector (status.selector) picks the same pods.
    assert dict(term.split("=") for term in miner_selector(NAME).split(",")) == selector


@pytest.mark.parametrize("example", sorted(p.name for p in (CRD_DIR / "examples").glob("quasarminer*.yaml")))
def test_the_crd_examples_build_valid_objects(example: str) -> None:
    resource = yaml.safe_load((CRD_DIR / "examples" / example).read_text())
    s = QuasarMinerSpec.model_validate(resource["spec"])
    endpoint = miner_endpoint(s, {"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}]}})
    assert endpoint is not None
    name = resource["metadata"]["name"]
    for obj in all_objects(s, name):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (_, miner) = miner_deployment(name, NAMESPACE, UID, s, endpoint)["spec"]["template"]["spec"]["containers"]
    args = build_parser("quasar miner").parse_args(miner["args"])
    assert (args.external_ip, args.model_name) == (endpoint.ip, s.model.id)


# ------------------------------------------------------------------------------------ the engine


def test_engine_defaults() -> None:
    engine = containers(spec())["engine"]
    args = engine["args"]
    assert engine["image"] == TGI_IMAGE
    assert flag(args, "--model-id") == "Qwen/Qwen2.5-7B-Instruct-1M"
    assert flag(args, "--num-shard") == "1"
    assert flag(args, "--port") == "80"
    assert flag(args, "--hostname") == "0.0.0.0"
    assert flag(args, "--prometheus-port") == "9000"
    # A 2M-token prompt is about 8 MB: TGI's 2 MB default would refuse it.
    assert int(flag(args, "--payload-limit")) >= 32 * 1024 * 1024
    assert flag(args, "--graceful-termination-timeout") == str(ENGINE_DRAIN_S)
    for absent in ("--revision", "--quantize", "--dtype", "--max-input-tokens", "--rope-scaling"):
        assert absent not in args
    assert engine["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert {"name": "HF_HOME", "value": "/data"} in engine["env"]
    assert not any(e["name"] == "HF_TOKEN" for e in engine["env"])


@pytest.mark.parametrize(
    ("flag_name", "value"),
    [
        ("--model-id", "Qwen/Qwen2.5-14B-Instruct-1M"),
        ("--revision", "abc123"),
        ("--max-input-tokens", "1000000"),
        ("--max-total-tokens", "1010000"),
        ("--quantize", "fp8"),
        ("--dtype", "bfloat16"),
        ("--rope-scaling", "dynamic"),
        ("--rope-factor", "4"),
        ("--num-shard", "2"),
        ("--port", "8080"),
        ("--max-batch-prefill-tokens", "65536"),
    ],
)
def test_engine_args_from_the_spec(flag_name: str, value: str) -> None:
    assert flag(containers(spec(FULL))["engine"]["args"], flag_name) == value


def test_extra_engine_args_come_last() -> None:
    assert containers(spec(FULL))["engine"]["args"][-2:] == ["--max-batch-prefill-tokens", "65536"]


def test_shards_default_to_the_gpus_and_no_gpu_means_no_shard_flag() -> None:
    assert (
        flag(containers(spec(model={"id": "m", "gpusPerReplica": 8}))["engine"]["args"], "--num-shard") == "8"
    )
    engine = containers(spec(SPECS["cpu"]))["engine"]
    assert "--num-shard" not in engine["args"]
    assert engine["resources"] == {}


def test_engine_container_fields_from_the_spec() -> None:
    engine = containers(spec(FULL))["engine"]
    assert engine["image"] == "example.com/tgi:3.3.5"
    assert engine["imagePullPolicy"] == "Always"
    assert engine["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"memory": "128Gi", "nvidia.com/gpu": "4"},
    }
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in engine[
        "env"
    ]
    ports = {p["name"]: p["containerPort"] for p in engine["ports"]}
    assert ports == {"engine": 8080, "engine-metrics": 9000}


def test_gpus_per_replica_wins_over_a_gpu_in_the_engine_resources() -> None:
    raw = {
        **MINIMAL,
        "engine": {"resources": {"requests": {"nvidia.com/gpu": 3}, "limits": {"nvidia.com/gpu": 3}}},
    }
    assert containers(spec(raw))["engine"]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}


def test_engine_probes_give_a_long_startup_and_a_lenient_liveness() -> None:
    engine = containers(spec(FULL))["engine"]
    startup = engine["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "engine"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 2700
    assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": "engine"}
    liveness = engine["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 300
    default = containers(spec())["engine"]["startupProbe"]
    assert default["periodSeconds"] * default["failureThreshold"] == 3600


def test_cache_and_shared_memory_volumes() -> None:
    pod = deployment(spec(FULL))["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": "alpha-miner-cache"}}
    assert volumes["shm"] == {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    mounts = {m["name"]: m["mountPath"] for m in containers(spec(FULL))["engine"]["volumeMounts"]}
    assert mounts == {"cache": "/data", "shm": "/dev/shm"}
    existing = deployment(spec(SPECS["existing-claim"]))["spec"]["template"]["spec"]["volumes"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "models"}} in existing


def test_termination_outlasts_the_prestop_sleep_and_tgis_drain() -> None:
    pod = deployment(spec())["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > PRESTOP_SLEEP_S + ENGINE_DRAIN_S
    for container in pod["containers"]:
        assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}}


# ------------------------------------------------------------------------------------ the miner sidecar


def test_sidecar_flags_all_exist_in_the_miners_parser() -> None:
    s = spec(FULL)
    miner = containers(s)["miner"]
    assert miner["command"] == ["quasar", "miner"]
    args = build_parser("quasar miner").parse_args(miner["args"])
    assert args.netuid == 7
    assert args.network == "test"
    assert args.chain_endpoint == "wss://test.chain.example:443"
    assert (args.wallet_name, args.wallet_hotkey, args.wallet_path) == ("cold", "hot1", "/etc/quasar/wallets")
    assert args.axon_port == AXON_PORT
    assert (args.metrics_host, args.metrics_port) == ("0.0.0.0", MINER_METRICS_PORT)
    assert (args.external_ip, args.external_port) == ("203.0.113.5", 8091)
    assert args.engine_url == "http://127.0.0.1:8080"
    assert args.engine_kind == "tgi"
    assert args.model_name == "Qwen/Qwen2.5-14B-Instruct-1M"
    assert args.min_stake == 500
    assert args.debug is True
    assert args.engine_timeout == 1800
    assert args.max_new_tokens == 512  # from neuron.args, appended last


def test_sidecar_defaults_parse_too() -> None:
    args = build_parser("quasar miner").parse_args(containers(spec())["miner"]["args"])
    assert args.chain_endpoint is None
    assert args.debug is False
    assert args.engine_url == "http://127.0.0.1:80"
    assert args.engine_timeout == 3600  # the miner's default: no flag given


def test_engine_timeout_from_the_spec() -> None:
    raw = {**MINIMAL, "neuron": {"engineTimeoutSeconds": 900}}
    args = build_parser("quasar miner").parse_args(containers(spec(raw))["miner"]["args"])
    assert args.engine_timeout == 900


def test_sidecar_container() -> None:
    miner = containers(spec(FULL))["miner"]
    assert miner["image"] == "example.com/quasar:dev"
    assert miner["imagePullPolicy"] == "Never"
    assert miner["resources"] == {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}
    assert miner["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "axon"}
    assert miner["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "axon"}
    assert miner["ports"] == [
        {"name": "axon", "containerPort": AXON_PORT, "protocol": "TCP"},
        {"name": "miner-metrics", "containerPort": MINER_METRICS_PORT, "protocol": "TCP"},
    ]
    assert containers(spec())["miner"]["image"] == NEURON_IMAGE


def test_sidecar_runs_locked_down() -> None:
    miner = containers(spec())["miner"]
    context = miner["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["name"]: m for m in miner["volumeMounts"]}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert mounts["wallet"] == {"name": "wallet", "mountPath": "/etc/quasar/wallets", "readOnly": True}
    assert containers(spec())["engine"]["securityContext"]["allowPrivilegeEscalation"] is False


def test_only_the_hotkey_and_coldkeypub_are_mounted() -> None:
    pod = deployment(spec(FULL))["spec"]["template"]["spec"]
    (wallet,) = [v for v in pod["volumes"] if v["name"] == "wallet"]
    assert wallet["secret"]["secretName"] == "miner-wallet"
    # bittensor's layout under --wallet.path: <name>/hotkeys/<hotkey> and <name>/coldkeypub.txt.
    assert wallet["secret"]["items"] == [
        {"key": "hotkey", "path": "cold/hotkeys/hot1"},
        {"key": "coldkeypub.txt", "path": "cold/coldkeypub.txt"},
    ]
    assert not any(
        "coldkey" in item["path"] and "pub" not in item["path"] for item in wallet["secret"]["items"]
    )
    # Only the miner sees the wallet.
    engine_mounts = {m["name"] for m in containers(spec(FULL))["engine"]["volumeMounts"]}
    assert "wallet" not in engine_mounts


# ------------------------------------------------------------------------------------ the Deployment


def test_deployment_fields() -> None:
    d = deployment(spec(FULL))
    assert d["metadata"]["name"] == "alpha-miner"
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["progressDeadlineSeconds"] > 2700
    assert d["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = d["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["fsGroup"] == containers(spec())["miner"]["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("mode", ["ReadWriteOnce", "ReadWriteOncePod"])
def test_a_cache_only_one_node_can_mount_recreates(mode: str) -> None:
    d = deployment(spec(cache={"accessMode": mode}))
    assert d["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tolerations", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        ("nodeSelector", {"pool": "gpu"}),
        ("priorityClassName", "miners"),
        ("runtimeClassName", "nvidia"),
        ("serviceAccountName", "miner"),
        ("imagePullSecrets", [{"name": "registry"}]),
    ],
)
def test_pod_overrides(key: str, value: Any) -> None:
    assert deployment(spec(FULL))["spec"]["template"]["spec"][key] == value


def test_pod_override_affinity_annotations_and_labels() -> None:
    template = deployment(spec(FULL))["spec"]["template"]
    assert template["spec"]["affinity"] == FULL["pod"]["affinity"]
    assert template["metadata"]["annotations"] == {"example.com/note": "hi"}
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == NAME
    plain = deployment(spec())["spec"]["template"]
    assert "annotations" not in plain["metadata"]
    assert not {"tolerations", "affinity", "nodeSelector", "priorityClassName"} & plain["spec"].keys()


# ------------------------------------------------------------------------------------ Services and the PVC


def test_load_balancer_service_by_default() -> None:
    service = miner_service(NAME, NAMESPACE, UID, spec())
    assert service["metadata"]["name"] == "alpha-miner"
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [
        {"name": "axon", "port": AXON_PORT, "targetPort": "axon", "protocol": "TCP"}
    ]
    assert "annotations" not in service["metadata"]


def test_node_port_service() -> None:
    service = miner_service(NAME, NAMESPACE, UID, spec(FULL))
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [
        {"name": "axon", "port": 9100, "targetPort": "axon", "protocol": "TCP", "nodePort": 30091}
    ]
    assert service["metadata"]["annotations"] == {"example.com/lb": "x"}


def test_metrics_service_names_its_ports_for_prometheus() -> None:
    service = miner_metrics_service(NAME, NAMESPACE, UID, spec())
    assert service["metadata"]["name"] == "alpha-miner-metrics"
    assert service["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {
        "engine-metrics": (9000, "engine-metrics"),
        "miner-metrics": (MINER_METRICS_PORT, "miner-metrics"),
    }


@pytest.mark.parametrize("example", sorted(p.name for p in (CRD_DIR / "examples").glob("quasarminer*.yaml")))
def test_metrics_reach_the_cluster_only_and_validators_the_axon_only(example: str) -> None:
    """The public Service carries the axon and nothing else; the metrics Service leads to the pods' metrics
    ports (which exist), never to the axon."""
    s = QuasarMinerSpec.model_validate(yaml.safe_load((CRD_DIR / "examples" / example).read_text())["spec"])
    pods = [miner_deployment("m", NAMESPACE, UID, s, ENDPOINT)]
    pools = s.placement.pools if s.placement is not None else []
    pods += [miner_deployment("m", NAMESPACE, UID, s, ENDPOINT, pool=pool) for pool in pools]
    public = miner_service("m", NAMESPACE, UID, s)["spec"]["ports"]
    assert [port["targetPort"] for port in public] == ["axon"]
    internal = {p["targetPort"] for p in miner_metrics_service("m", NAMESPACE, UID, s)["spec"]["ports"]}
    assert "miner-metrics" in internal
    for pod in (d["spec"]["template"]["spec"] for d in pods):
        named = {port["name"] for c in pod["containers"] for port in c["ports"]}
        assert internal <= named - {"axon"}


def test_cache_claim() -> None:
    claim = miner_cache_claim(NAME, NAMESPACE, UID, spec(FULL))
    assert claim is not None
    assert claim["metadata"]["name"] == "alpha-miner-cache"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "500Gi"}},
        "storageClassName": "fast",
    }
    default = miner_cache_claim(NAME, NAMESPACE, UID, spec())
    assert default is not None
    assert default["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "200Gi"}},
    }
    assert miner_cache_claim(NAME, NAMESPACE, UID, spec(SPECS["existing-claim"])) is None


# ------------------------------------------------------------------------------------ the endpoint


@pytest.mark.parametrize(
    ("exposure", "status", "expected"),
    [
        ({}, None, None),
        ({}, {"loadBalancer": {}}, None),
        ({}, {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}]}}, None),
        ({}, {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}, "203.0.113.9:8091"),
        (
            {},
            {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}, {"ip": "203.0.113.9"}]}},
            "203.0.113.9:8091",
        ),
        ({"port": 443}, {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}, "203.0.113.9:443"),
        ({"externalIP": "198.51.100.1"}, None, "198.51.100.1:8091"),
        ({"externalIP": "198.51.100.1", "externalPort": 9999}, None, "198.51.100.1:9999"),
        ({}, {"loadBalancer": {"ingress": [{"ip": "2001:db8::1"}]}}, "[2001:db8::1]:8091"),
        (
            {"serviceType": "NodePort", "nodePort": 30091, "externalIP": "198.51.100.1"},
            None,
            "198.51.100.1:30091",
        ),
        (
            {"serviceType": "NodePort", "nodePort": 30091, "externalIP": "198.51.100.1", "externalPort": 443},
            None,
            "198.51.100.1:443",
        ),
    ],
)
def test_announced_endpoint(
    exposure: dict[str, Any], status: dict[str, Any] | None, expected: str | None
) -> None:
    s = spec(exposure=exposure)
    assert announced_endpoint(s, status) == expected
    found = miner_endpoint(s, status)
    assert (None if found is None else str(found)) == expected


def test_the_announced_endpoint_reaches_the_sidecar() -> None:
    s = spec(exposure={"externalIP": "2001:db8::5", "externalPort": 443})
    found = miner_endpoint(s, None)
    assert found is not None
    (_, miner) = deployment(s, found)["spec"]["template"]["spec"]["containers"]
    args = build_parser("quasar miner").parse_args(miner["args"])
    assert (args.external_ip, args.external_port) == ("2001:db8::5", 443)


# ------------------------------------------------------------------------------------ what cannot be built


@pytest.mark.parametrize(
    ("port", "what"), [(AXON_PORT, "axon"), (MINER_METRICS_PORT, "miner's metrics"), (9000, "Prometheus")]
)
def test_engine_port_colliding_in_the_pod_is_refused(port: int, what: str) -> None:
    with pytest.raises(BuildError, match=rf"spec\.engine\.port: {port} is .*{what}"):
        deployment(spec(engine={"port": port}))


def test_a_single_pod_cache_with_several_replicas_is_refused() -> None:
    with pytest.raises(BuildError, match=r"spec\.cache\.accessMode: ReadWriteOncePod .* up to 2 replicas"):
        deployment(spec(replicas=2, cache={"accessMode": "ReadWriteOncePod"}))


@pytest.mark.parametrize("name", ["a" * 50, "with.dots", "9starts-with-digit"])
def test_a_name_that_cannot_name_the_services_is_refused(name: str) -> None:
    for build in (miner_service, miner_metrics_service, miner_cache_claim):
        with pytest.raises(BuildError, match=r"metadata\.name: .* DNS-1035 label"):
            build(name, NAMESPACE, UID, spec())
    with pytest.raises(BuildError, match=r"metadata\.name"):
        miner_deployment(name, NAMESPACE, UID, spec(), ENDPOINT)


def test_the_longest_name_that_fits() -> None:
    name = "a" * (63 - len("-miner-metrics"))
    for obj in all_objects(spec(), name):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert miner_metrics_service(name, NAMESPACE, UID, spec())["metadata"]["name"] == name + "-miner-metrics"


# ------------------------------------------------------------------------------------ pools


def pool_deployments(s: QuasarMinerSpec) -> dict[str, dict[str, Any]]:
    assert s.placement is not None
    return {
        p.name: miner_deployment(NAME, NAMESPACE, UID, s, ENDPOINT, pool=p, replicas=i + 2)
        for i, p in enumerate(s.placement.pools)
    }


def test_each_pool_has_its_own_deployment_selecting_only_its_pods() -> None:
    built = pool_deployments(spec(SPECS["pools"]))
    assert {name: d["metadata"]["name"] for name, d in built.items()} == {
        "h100": "alpha-miner-h100",
        "mig": "alpha-miner-mig",
    }
    assert [d["spec"]["replicas"] for d in built.values()] == [2, 3]
    selectors = [d["spec"]["selector"]["matchLabels"] for d in built.values()]
    for (name, d), selector in zip(built.items(), selectors, strict=True):
        assert selector[POOL_LABEL] == name
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    # The Service, the PDB and the scale subresource select every pool's pods; the pools never overlap.
    common = selectors[0].items() & selectors[1].items()
    assert dict(common) == miner_service(NAME, NAMESPACE, UID, spec(SPECS["pools"]))["spec"]["selector"]
    assert selectors[0][POOL_LABEL] != selectors[1][POOL_LABEL]


def test_a_pool_adds_its_scheduling_to_the_pods() -> None:
    s = spec(SPECS["pools"])
    h100 = pool_deployments(s)["h100"]["spec"]["template"]["spec"]
    assert h100["nodeSelector"] == {**FULL["pod"]["nodeSelector"], "pool": "h100", "zone": "a"}
    assert h100["tolerations"] == [*FULL["pod"]["tolerations"], POOLS[0]["tolerations"][0]]
    assert h100["affinity"] == FULL["pod"]["affinity"]  # the pool names none: the pod's stays
    mig = pool_deployments(s)["mig"]["spec"]["template"]["spec"]
    assert mig["affinity"] == POOLS[1]["affinity"]  # the pool's replaces the pod's


def test_a_pool_overrides_the_engine() -> None:
    s = spec(SPECS["pools"])
    h100, mig = (
        {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}["engine"]
        for d in pool_deployments(s).values()
    )
    assert h100["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert (flag(h100["args"], "--num-shard"), flag(h100["args"], "--quantize")) == ("2", "fp8")
    assert h100["args"][-2:] == FULL["model"]["extraArgs"]
    # One MIG slice: its resource, one shard (the miner's 2 were for 4 GPUs), its quantisation and args.
    assert mig["resources"]["limits"] == {"nvidia.com/mig-3g.40gb": "1", "memory": "128Gi"}
    assert (flag(mig["args"], "--num-shard"), flag(mig["args"], "--quantize")) == ("1", "awq")
    assert mig["args"][-2:] == ["--cuda-graphs", "1"]


def test_the_disruption_budget_spares_all_but_one_pod() -> None:
    pdb = miner_disruption_budget(NAME, NAMESPACE, UID, spec(FULL))
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment(spec(FULL))["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# ------------------------------------------------------------------------------------ engines


def canonical_sha256(objects: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# The Deployments (one per pool) and metrics Service the TGI examples built before vLLM and SGLang existed
# (commit dfe6933): an object written then must keep exactly its pods. Changed once on purpose since: the
# miner's metrics moved off the axon port (its container's --metrics.host/--metrics.port flags and
# miner-metrics port, the metrics Service's miner-metrics port); with those undone the objects hashed as
# at dfe6933 (d362bc6f..., 79f1dbb8...). And the full example's neuron.args repeated `--engine.kind=tgi`,
# which neuron.args may no longer set (a flag the operator derives); it passes `--miner.max_new_tokens=512`
# instead, and with that one argument undone the objects hash as before (6d6113ef...).
TGI_EXAMPLE_OBJECTS = {
    "quasarminer.yaml": "6a230afc3f7f4de49200fee45b77edaa4b1c329fb34e960ee6503373279691cd",
    "quasarminer-full.yaml": "68264ceef56bd3d676105d274e49c35d6323fd67c1e967b1c9d727852c08194e",
}


@pytest.mark.parametrize("example", sorted(TGI_EXAMPLE_OBJECTS))
def test_the_tgi_examples_build_the_same_objects_as_before_other_engines(example: str) -> None:
    s = QuasarMinerSpec.model_validate(yaml.safe_load((CRD_DIR / "examples" / example).read_text())["spec"])
    endpoint = Endpoint("203.0.113.5", 8091)
    pools = s.placement.pools if s.placement is not None else []
    objects = [
        miner_deployment("m", "ns", "uid", s, endpoint),
        *(miner_deployment("m", "ns", "uid", s, endpoint, pool=p) for p in pools),
        miner_metrics_service("m", "ns", "uid", s),
    ]
    assert canonical_sha256(objects) == TGI_EXAMPLE_OBJECTS[example]


SEEDISH: dict[str, Any] = {
    **MINIMAL,
    "model": {
        "id": "Qwen/Qwen3-Next-80B-A3B-Thinking",
        "revision": "abc123",
        "maxTotalTokens": 262_144,
        "dtype": "bfloat16",
        "quantize": "fp8",
        "ropeScaling": {"type": "yarn", "factor": 4.0, "originalMaxPositionEmbeddings": 262_144},
        "gpuMemoryFraction": 0.9,
        "trustRemoteCode": True,
        "gpusPerReplica": 4,
        "extraArgs": ["--max-num-seqs=8"],
    },
}
# Each engine's flag for each model field, and the value the spec above gives it.
ENGINE_FLAGS = {
    "vllm": {
        "--revision": "abc123",
        "--tensor-parallel-size": "4",
        "--quantization": "fp8",
        "--dtype": "bfloat16",
        "--max-model-len": "262144",
        "--hf-overrides": '{"rope_scaling":{"rope_type":"yarn","factor":4.0,'
        '"original_max_position_embeddings":262144}}',
        "--gpu-memory-utilization": "0.9",
        "--host": "0.0.0.0",
        "--port": "8000",
    },
    "sglang": {
        "--model-path": "Qwen/Qwen3-Next-80B-A3B-Thinking",
        "--revision": "abc123",
        "--tp-size": "4",
        "--quantization": "fp8",
        "--dtype": "bfloat16",
        "--context-length": "262144",
        "--json-model-override-args": '{"rope_scaling":{"rope_type":"yarn","factor":4.0,'
        '"original_max_position_embeddings":262144}}',
        "--mem-fraction-static": "0.9",
        "--host": "0.0.0.0",
        "--port": "30000",
    },
}


@pytest.mark.parametrize("kind", sorted(ENGINE_FLAGS))
def test_each_engine_gets_every_model_field_under_its_own_flag(kind: str) -> None:
    s = spec(SEEDISH, engine={"kind": kind})
    engine = containers(s)["engine"]
    args = engine["args"]
    assert {name: flag(args, name) for name in ENGINE_FLAGS[kind]} == ENGINE_FLAGS[kind]
    assert "--trust-remote-code" in args
    assert args[-1] == "--max-num-seqs=8"  # extra args last, so the engine's own parser has the last word
    assert engine["image"] == {"vllm": VLLM_IMAGE, "sglang": SGLANG_IMAGE}[kind]
    assert (
        engine["command"]
        == {"vllm": ["vllm", "serve"], "sglang": ["python3", "-m", "sglang.launch_server"]}[kind]
    )
    if kind == "vllm":
        assert args[0] == "Qwen/Qwen3-Next-80B-A3B-Thinking"  # `vllm serve`'s positional model
    else:
        assert "--enable-metrics" in args  # SGLang's Prometheus metrics are off otherwise


@pytest.mark.parametrize("kind", ["tgi", "vllm", "sglang"])
def test_remote_code_runs_only_when_the_spec_opts_in(kind: str) -> None:
    model = {"id": "m", "gpusPerReplica": 1}
    off = containers(spec(model=model, engine={"kind": kind}))["engine"]["args"]
    on = containers(spec(model={**model, "trustRemoteCode": True}, engine={"kind": kind}))["engine"]["args"]
    assert "--trust-remote-code" not in off
    assert "--trust-remote-code" in on


@pytest.mark.parametrize(
    ("kind", "startup", "readiness"),
    [("vllm", "/health", "/health"), ("sglang", "/health", "/v1/models")],
)
def test_openai_engines_probe_their_own_health_and_serve_metrics_on_their_port(
    kind: str, startup: str, readiness: str
) -> None:
    s = spec(SEEDISH, engine={"kind": kind, "startupTimeoutSeconds": 7200})
    engine = containers(s)["engine"]
    assert engine["startupProbe"]["httpGet"] == {"path": startup, "port": "engine"}
    assert engine["startupProbe"]["periodSeconds"] * engine["startupProbe"]["failureThreshold"] >= 7200
    assert engine["readinessProbe"]["httpGet"] == {"path": readiness, "port": "engine"}
    assert engine["livenessProbe"]["tcpSocket"] == {"port": "engine"}
    assert [p["name"] for p in engine["ports"]] == ["engine"]
    metrics = miner_metrics_service(NAME, NAMESPACE, UID, s)["spec"]["ports"][0]
    assert (metrics["name"], metrics["targetPort"]) == ("engine-metrics", "engine")
    mounts = {m["name"]: m["mountPath"] for m in engine["volumeMounts"]}
    assert mounts == {"cache": "/data", "shm": "/dev/shm"}
    assert {"name": "HF_HOME", "value": "/data"} in engine["env"]
    for obj in all_objects(s):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("kind", "api"), [("vllm", None), ("vllm", "completions"), ("sglang", "chat")])
def test_the_sidecar_asks_the_engine_through_its_kind_and_api(kind: str, api: str | None) -> None:
    engine_spec = {"kind": kind} if api is None else {"kind": kind, "api": api}
    s = spec(SEEDISH, engine=engine_spec)
    args = build_parser("quasar miner").parse_args(containers(s)["miner"]["args"])
    assert (args.engine_kind, args.engine_api) == (kind, api or "chat")
    assert args.engine_url == f"http://127.0.0.1:{s.engine.container_port}"
    assert args.model_name == "Qwen/Qwen3-Next-80B-A3B-Thinking"


def test_tgi_sidecar_gets_no_api_flag() -> None:
    assert "--engine.api" not in containers(spec())["miner"]["args"]


def test_a_pool_setting_the_memory_fraction_the_model_sets_is_refused() -> None:
    raw = {
        **SEEDISH,
        "engine": {"kind": "vllm"},
        "cache": {"accessMode": "ReadWriteMany"},
        "placement": {
            "pools": [
                {"name": "a100", "maxReplicas": 1, "model": {"extraArgs": ["--gpu-memory-utilization=0.8"]}}
            ]
        },
    }
    s = spec(raw)
    with pytest.raises(BuildError, match=r"pools\[a100\]\.model\.extraArgs"):
        miner_deployment(NAME, NAMESPACE, UID, s, ENDPOINT, pool=s.placement.pools[0])  # type: ignore[union-attr]
