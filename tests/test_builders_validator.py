"""The QuasarValidator builders: every spec field lands where it should; every object is valid Kubernetes."""

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from quasar_operator.builders import BuildError, validator_service, validator_statefulset
from quasar_operator.builders.validator import METRICS_PORT, METRICS_PORT_NAME, STATE_FILE, STATE_MOUNT
from quasar_operator.crds import CRD_DIR
from quasar_operator.models import NEURON_IMAGE, QuasarValidatorSpec

from neurons.validator import build_parser, config_from_args

K8S_VERSION = "1.30.0"  # the same target as the miner's objects and the CRDs

NAME, NAMESPACE, UID = "beta", "validators", "5d1e2f3a-aaaa-bbbb-cccc-ddddeeeeffff"
MINIMAL: dict[str, Any] = {"wallet": {"secretName": "validator-wallet"}, "subnet": {"netuid": 42}}
FULL: dict[str, Any] = {
    "wallet": {"secretName": "validator-wallet", "name": "cold", "hotkey": "val"},
    "subnet": {"netuid": 7, "network": "local", "chainEndpoint": "ws://subtensor.chain:9944"},
    "neuron": {
        "image": "example.com/quasar:dev",
        "imagePullPolicy": "Always",
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
        "args": ["--neuron.round_pause", "5"],
        "debug": True,
    },
    "tasks": {"niah_single": 2, "qasper": 1},
    "bucketWeights": {"32k": 1, "124k": 1, "2m": 0.5},
    "sampleSize": 32,
    "timeoutSeconds": 300,
    "epochLength": 360,
    "movingAverageAlpha": 0.0512345678,
    "tokenizer": "Qwen/Qwen2.5-7B-Instruct-1M",
    "data": {"existingClaim": "longbench", "path": "longbench/data.zip"},
    "state": {"size": "5Gi", "storageClassName": "durable"},
    "wandb": {
        "mode": "online",
        "project": "quasar-prod",
        "entity": "team",
        "apiKeySecret": {"name": "wandb", "key": "api-key"},
    },
    "pod": {
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "validators", "effect": "NoSchedule"}
        ],
        "affinity": {"podAntiAffinity": {}},
        "nodeSelector": {"pool": "cpu"},
        "priorityClassName": "validators",
        "annotations": {"example.com/note": "hi"},
        "labels": {"team": "scoring"},
    },
}
SPECS = {"minimal": MINIMAL, "full": FULL, "offline": {**MINIMAL, "wandb": {"mode": "offline"}}}


def spec(raw: dict[str, Any] = MINIMAL, **changes: Any) -> QuasarValidatorSpec:
    return QuasarValidatorSpec.model_validate({**raw, **changes})


def statefulset(s: QuasarValidatorSpec, name: str = NAME) -> dict[str, Any]:
    return validator_statefulset(name, NAMESPACE, UID, s)


def container(s: QuasarValidatorSpec) -> dict[str, Any]:
    (only,) = statefulset(s)["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(s: QuasarValidatorSpec) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(s)["env"]}


def parsed(s: QuasarValidatorSpec) -> Any:
    """The container's flags as `quasar validator` reads them: an unknown flag exits the test."""
    return build_parser("quasar validator").parse_args(container(s)["args"])


@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_every_object_passes_kubernetes_validate(raw: dict[str, Any]) -> None:
    s = spec(raw)
    for obj in (statefulset(s), validator_service(NAME, NAMESPACE, UID, s)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_every_object_is_owned_by_the_validator_and_labelled(raw: dict[str, Any]) -> None:
    s = spec(raw)
    for obj in (statefulset(s), validator_service(NAME, NAMESPACE, UID, s)):
        meta = obj["metadata"]
        assert meta["name"] == "beta-validator"
        assert meta["namespace"] == NAMESPACE
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "quasar.ai/v1alpha1",
                "kind": "QuasarValidator",
                "name": NAME,
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "quasar-operator"
        assert meta["labels"]["quasar.ai/validator"] == NAME


@pytest.mark.parametrize("example", ["quasarvalidator.yaml", "quasarvalidator-full.yaml"])
def test_the_crd_examples_build_valid_objects(example: str) -> None:
    resource = yaml.safe_load((CRD_DIR / "examples" / example).read_text())
    s = QuasarValidatorSpec.model_validate(resource["spec"])
    name = resource["metadata"]["name"]
    sts = validator_statefulset(name, NAMESPACE, UID, s)
    for obj in (sts, validator_service(name, NAMESPACE, UID, s)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    config_from_args(build_parser("quasar validator").parse_args(c["args"]))


def test_statefulset_of_one_with_a_state_claim() -> None:
    sts = statefulset(spec(FULL))["spec"]
    assert sts["replicas"] == 1
    assert sts["serviceName"] == "beta-validator"
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "durable",
    }
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    default = statefulset(spec())["spec"]["volumeClaimTemplates"][0]["spec"]
    assert default == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    mounts = {m["name"]: m["mountPath"] for m in container(spec())["volumeMounts"]}
    assert mounts["state"] == STATE_MOUNT
    assert STATE_FILE.startswith(STATE_MOUNT + "/")


def test_headless_service_selects_the_pod() -> None:
    s = spec(FULL)
    service = validator_service(NAME, NAMESPACE, UID, s)
    assert service["spec"]["clusterIP"] == "None"
    sts = statefulset(s)["spec"]
    assert service["spec"]["selector"] == sts["selector"]["matchLabels"]
    assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()


def test_the_metrics_port_is_served_on_every_interface_and_reached_through_the_service() -> None:
    s = spec(FULL)
    config = config_from_args(parsed(s))
    assert (config.metrics_host, config.metrics_port) == ("0.0.0.0", METRICS_PORT)
    (container_port,) = container(s)["ports"]
    assert container_port["containerPort"] == METRICS_PORT
    (service_port,) = validator_service(NAME, NAMESPACE, UID, s)["spec"]["ports"]
    assert service_port["name"] == METRICS_PORT_NAME
    assert service_port["targetPort"] == container_port["name"]
    assert service_port["port"] == METRICS_PORT


def test_defaults_leave_the_validators_own() -> None:
    c = container(spec())
    assert c["image"] == NEURON_IMAGE
    assert c["command"] == ["quasar", "validator"]
    args = parsed(spec())
    assert args.netuid == 42
    assert args.network == "finney"
    assert args.chain_endpoint is None
    assert (args.wallet_name, args.wallet_hotkey, args.wallet_path) == (
        "default",
        "default",
        "/etc/quasar/wallets",
    )
    assert str(args.state_path) == STATE_FILE
    assert args.wandb_off is True
    assert args.epoch_length is None  # the validator's default (100 blocks)
    assert args.bucket_weights is None
    assert args.tokenizer is None
    assert args.data is None
    assert "WANDB_MODE" not in env(spec())
    assert c["resources"] == {}


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("netuid", 7),
        ("network", "local"),
        ("chain_endpoint", "ws://subtensor.chain:9944"),
        ("wallet_name", "cold"),
        ("wallet_hotkey", "val"),
        ("sample_size", 32),
        ("timeout", 300.0),
        ("epoch_length", 360),
        ("alpha", 0.0512345678),  # exactly: not rounded to 6 digits
        ("tasks", "niah_single=2,qasper=1"),
        ("bucket_weights", "32k=1,124k=1,2m=0.5"),
        ("tokenizer", "Qwen/Qwen2.5-7B-Instruct-1M"),
        ("wandb_off", False),
        ("wandb_project", "quasar-prod"),
        ("wandb_entity", "team"),
        ("debug", True),
        ("round_pause", 5.0),
    ],
)
def test_spec_fields_reach_the_validators_flags(attribute: str, value: Any) -> None:
    assert getattr(parsed(spec(FULL)), attribute) == value


def test_the_flags_the_validator_accepts_as_a_config() -> None:
    # The same path `quasar validator` takes: the flags parse and pass its own checks (90% rule, task names).
    config = config_from_args(parsed(spec(FULL)))
    assert config.tasks == {"niah_single": 2.0, "qasper": 1.0}
    assert config.bucket_weights == {"32k": 1.0, "124k": 1.0, "2m": 0.5}


def test_data_claim_is_mounted_read_only() -> None:
    s = spec(FULL)
    assert str(parsed(s).data) == "/var/lib/quasar-data/longbench/data.zip"
    volumes = {v["name"]: v for v in statefulset(s)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "longbench", "readOnly": True}
    mounts = {m["name"]: m for m in container(s)["volumeMounts"]}
    assert mounts["data"]["readOnly"] is True
    root = spec(data={"existingClaim": "longbench"})
    assert str(parsed(root).data) == "/var/lib/quasar-data"


def test_wandb_online_gets_the_key_from_its_secret() -> None:
    variables = env(spec(FULL))
    assert variables["WANDB_MODE"] == "online"
    assert variables["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert variables["WANDB_DIR"] == STATE_MOUNT


def test_wandb_offline_writes_beside_the_state() -> None:
    s = spec(SPECS["offline"])
    variables = env(s)
    assert variables["WANDB_MODE"] == "offline"
    assert variables["WANDB_DIR"] == STATE_MOUNT
    assert "WANDB_API_KEY" not in variables
    assert parsed(s).wandb_off is False


def test_container_fields_and_lockdown() -> None:
    c = container(spec(FULL))
    assert c["image"] == "example.com/quasar:dev"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
    context = c["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp", STATE_MOUNT, "/etc/quasar/wallets"}
    assert env(spec())["HF_HOME"].startswith(STATE_MOUNT + "/")


def test_only_the_hotkey_and_coldkeypub_are_mounted() -> None:
    pod = statefulset(spec(FULL))["spec"]["template"]["spec"]
    (wallet,) = [v for v in pod["volumes"] if v["name"] == "wallet"]
    assert wallet["secret"]["secretName"] == "validator-wallet"
    assert wallet["secret"]["items"] == [
        {"key": "hotkey", "path": "cold/hotkeys/val"},
        {"key": "coldkeypub.txt", "path": "cold/coldkeypub.txt"},
    ]
    (mount,) = [m for m in container(spec(FULL))["volumeMounts"] if m["name"] == "wallet"]
    assert mount["readOnly"] is True


def test_pod_overrides() -> None:
    template = statefulset(spec(FULL))["spec"]["template"]
    assert template["spec"]["tolerations"] == FULL["pod"]["tolerations"]
    assert template["spec"]["affinity"] == {"podAntiAffinity": {}}
    assert template["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert template["spec"]["priorityClassName"] == "validators"
    assert template["metadata"]["annotations"] == {"example.com/note": "hi"}
    assert template["metadata"]["labels"]["team"] == "scoring"
    assert template["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", ["b" * 43, "with.dots"])
def test_a_name_too_long_for_the_statefulsets_pods_is_refused(name: str) -> None:
    # 43 + "-validator" is 53: the pods' controller-revision-hash label (name + 11) would pass 63.
    with pytest.raises(BuildError, match=r"metadata\.name: .* at most 52 characters"):
        statefulset(spec(), name)
    with pytest.raises(BuildError, match=r"metadata\.name"):
        validator_service(name, NAMESPACE, UID, spec())


def test_the_longest_name_that_fits() -> None:
    name = "b" * 42
    kubernetes_validate.validate(statefulset(spec(), name), K8S_VERSION, strict=True)
    assert len(statefulset(spec(), name)["metadata"]["name"]) + 11 == 63
