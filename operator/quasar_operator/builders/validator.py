"""The objects of a QuasarValidator: a one-replica StatefulSet with its state PVC, and a headless Service.

A StatefulSet rather than a Deployment: its volumeClaimTemplate gives the one pod the same claim across
restarts and rescheduling, so the moving-average scores (the state file) survive both. The headless Service
also carries the validator's Prometheus port (`validator-metrics`), which the chart's ServiceMonitor selects:
it is cluster-internal already, so unlike the miner's public Service it needs no metrics Service beside it.
"""

import posixpath

from quasar_operator.builders.common import (
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
from quasar_operator.models import QuasarValidatorSpec

KIND = "QuasarValidator"

STATE_MOUNT = "/var/lib/quasar"
STATE_FILE = f"{STATE_MOUNT}/state.json"
DATA_MOUNT = "/var/lib/quasar-data"
# A StatefulSet's pods carry `controller-revision-hash: <name>-<hash of up to 10 characters>`, a label
# value of at most 63 characters: the StatefulSet's name needs that much room.
_REVISION_HASH_ROOM = 11
# The validator's /metrics (`quasar validator --metrics.port`): fixed, the pod runs nothing else.
METRICS_PORT = 8092
# The Service's port, named by the ServiceMonitor; the container's is `metrics` (15 characters at most).
METRICS_PORT_NAME = "validator-metrics"


def validator_name(name: str) -> str:
    """The StatefulSet's name, also its headless Service's (the StatefulSet's serviceName)."""
    return child_name(Owner(KIND, name, "", ""), "validator", room=_REVISION_HASH_ROOM)


def _weights(weights: dict[str, float]) -> str:
    return ",".join(f"{key}={number(value)}" for key, value in weights.items())


def validator_args(spec: QuasarValidatorSpec) -> list[str]:
    """`quasar validator`'s flags; an unset field leaves the validator's own default."""
    args = [*subnet_args(spec.subnet), *wallet_args(spec.wallet)]
    if spec.sample_size is not None:
        args += ["--neuron.sample_size", str(spec.sample_size)]
    if spec.timeout_seconds is not None:
        args += ["--neuron.timeout", number(spec.timeout_seconds)]
    if spec.epoch_length is not None:
        args += ["--neuron.epoch_length", str(spec.epoch_length)]
    if spec.moving_average_alpha is not None:
        args += ["--neuron.moving_average_alpha", number(spec.moving_average_alpha)]
    if spec.tasks is not None:
        args += ["--neuron.tasks", _weights(spec.tasks)]
    if spec.bucket_weights is not None:
        args += ["--neuron.bucket_weights", _weights(spec.bucket_weights)]
    if spec.tokenizer is not None:
        args += ["--neuron.tokenizer", spec.tokenizer]
    if spec.data is not None:
        args += ["--neuron.data", posixpath.join(DATA_MOUNT, spec.data.path).rstrip("/")]
    args += ["--neuron.state_path", STATE_FILE, "--metrics.port", str(METRICS_PORT)]
    if spec.wandb.mode == "disabled":
        args.append("--wandb.off")
    else:
        args += ["--wandb.project", spec.wandb.project]
        if spec.wandb.entity is not None:
            args += ["--wandb.entity", spec.wandb.entity]
    if spec.neuron.debug:
        args.append("--logging.debug")
    return [*args, *spec.neuron.args]


def _env(spec: QuasarValidatorSpec) -> list[Obj]:
    env = [
        *neuron_env(),
        # The tokenizer and LongBench downloads are cached on the state volume: a restart does not fetch them
        # again.
        {"name": "HF_HOME", "value": f"{STATE_MOUNT}/hf"},
    ]
    wandb = spec.wandb
    if wandb.mode != "disabled":
        # Offline runs are written beside the state, so they survive restarts until `wandb sync`.
        env += [{"name": "WANDB_MODE", "value": wandb.mode}, {"name": "WANDB_DIR", "value": STATE_MOUNT}]
    if wandb.mode != "disabled" and wandb.api_key_secret is not None:
        env.append(secret_env("WANDB_API_KEY", wandb.api_key_secret))
    return env


def validator_container(spec: QuasarValidatorSpec) -> Obj:
    neuron = spec.neuron
    mounts = [{"name": "state", "mountPath": STATE_MOUNT}, wallet_volume(spec.wallet)[1], tmp_volume()[1]]
    if spec.data is not None:
        mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
    resources = {
        key: dict(value)
        for key, value in {"requests": neuron.resources.requests, "limits": neuron.resources.limits}.items()
        if value
    }
    # No probes: a crash ends the process and the kubelet restarts it. Its only HTTP server is /metrics,
    # answered on the event loop that grading also runs on: a slow answer there is no sign of a hang.
    return {
        "name": "validator",
        "image": neuron.image,
        "imagePullPolicy": neuron.image_pull_policy,
        "command": ["quasar", "validator"],
        "args": validator_args(spec),
        "env": _env(spec),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": restricted_security_context(),
    }


def validator_statefulset(name: str, namespace: str, uid: str, spec: QuasarValidatorSpec) -> Obj:
    owner = Owner(KIND, name, namespace, uid)
    sts_name = validator_name(name)
    volumes: list[Obj] = [wallet_volume(spec.wallet)[0], tmp_volume()[0]]
    if spec.data is not None:
        volumes.append(
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": spec.data.existing_claim, "readOnly": True},
            }
        )
    state_claim: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.state.size}},
    }
    if spec.state.storage_class_name is not None:
        state_claim["storageClassName"] = spec.state.storage_class_name
    template = {
        "metadata": {"labels": labels(owner)},
        "spec": {
            "containers": [validator_container(spec)],
            "volumes": volumes,
            "securityContext": pod_security_context(),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(owner, sts_name),
        "spec": {
            # One validator per hotkey: two would set weights twice and race on the state file.
            "replicas": 1,
            "serviceName": sts_name,
            "selector": {"matchLabels": selector_labels(owner)},
            "template": apply_pod_overrides(template, spec.pod),
            "volumeClaimTemplates": [
                {"metadata": {"name": "state", "labels": labels(owner)}, "spec": state_claim}
            ],
            # The scores outlive the resource: deleting and re-creating a QuasarValidator of the same name
            # finds the same claim and resumes. Deleting the claim is a deliberate, manual act.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
        },
    }


def validator_service(name: str, namespace: str, uid: str, spec: QuasarValidatorSpec) -> Obj:
    """The headless Service a StatefulSet names as its serviceName (the pod's stable DNS name), with the
    metrics port Prometheus scrapes (a ServiceMonitor selects the Service by label and port name)."""
    owner = Owner(KIND, name, namespace, uid)
    port = {
        "name": METRICS_PORT_NAME,
        "port": METRICS_PORT,
        "targetPort": "metrics",
        "protocol": "TCP",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, validator_name(name)),
        "spec": {"clusterIP": "None", "selector": selector_labels(owner), "ports": [port]},
    }
