"""What every builder shares: names, labels, owner references, security contexts, the wallet, pod overrides.

Builders are pure (no API calls, no kopf): a custom resource's identity and spec in, plain dicts out, so
tests can check every field without a cluster and the reconciler can apply them as they are.
"""

import re
from dataclasses import dataclass
from typing import Any

from quasar_operator.models import (
    API_VERSION,
    WALLET_COLDKEYPUB_KEY,
    WALLET_HOTKEY_KEY,
    PodOverrides,
    RopeScaling,
    SecretKeyRef,
    SubnetSpec,
    WalletSpec,
)

Obj = dict[str, Any]

MANAGED_BY = "quasar-operator"

# Where the wallet Secret is mounted: bittensor reads <path>/<name>/hotkeys/<hotkey> and
# <path>/<name>/coldkeypub.txt, so `--wallet.path` points here.
WALLET_MOUNT = "/etc/quasar/wallets"

# The neuron containers run as this unprivileged user (distroless's `nonroot`); a numeric id lets the kubelet
# check runAsNonRoot whatever the image's USER line says.
NEURON_UID = 65532

# Services, and the pods' label values, are DNS-1035 labels: 63 characters, lower case, no dots.
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_MAX_LABEL = 63


class BuildError(ValueError):
    """A resource the CRD schema accepted but that cannot be turned into working objects.

    The message names the field (`spec.engine.port: ...`), for the status condition and the Event.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Owner:
    """The custom resource the objects belong to."""

    kind: str  # QuasarMiner or QuasarValidator
    name: str
    namespace: str
    uid: str

    @property
    def component(self) -> str:
        """`quasar-miner` or `quasar-validator`: the app.kubernetes.io/name of everything it owns."""
        return "quasar-" + self.kind.removeprefix("Quasar").lower()


def child_name(owner: Owner, suffix: str, *, room: int = 0) -> str:
    """`<name>-<suffix>`, checked to be a valid Service name with `room` characters to spare.

    `room` is for names Kubernetes extends: a StatefulSet's pods carry a `controller-revision-hash` label of
    `<name>-<10 characters>`, and that label must fit in 63 characters too.
    """
    name = f"{owner.name}-{suffix}"
    if not _DNS_1035.fullmatch(name) or len(name) + room > _MAX_LABEL:
        raise BuildError(
            "metadata.name",
            f"{owner.name!r} gives the object name {name!r}, which must be a DNS-1035 label of at most "
            f"{_MAX_LABEL - room} characters (lower case letters, digits and '-', starting with a letter)",
        )
    return name


INSTANCE_LABEL = "app.kubernetes.io/instance"


def selector_labels(owner: Owner) -> dict[str, str]:
    """The labels that pick this resource's pods: stable for the resource's life (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": owner.component,
        INSTANCE_LABEL: owner.name,
        f"quasar.ai/{owner.component.removeprefix('quasar-')}": owner.name,
    }


def labels(owner: Owner) -> dict[str, str]:
    return {**selector_labels(owner), "app.kubernetes.io/managed-by": MANAGED_BY}


def owner_reference(owner: Owner) -> Obj:
    # controller + blockOwnerDeletion: the garbage collector deletes the children with the resource, and a
    # foreground deletion of the resource waits for them.
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: Owner, name: str) -> Obj:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner),
        "ownerReferences": [owner_reference(owner)],
    }


def restricted_security_context() -> Obj:
    """The Pod Security Standards' "restricted" profile, and a root filesystem nothing can write to."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NEURON_UID,
        "runAsGroup": NEURON_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def neuron_env() -> list[Obj]:
    # The root filesystem is read-only: anything that writes under $HOME (bittensor's and the HF
    # libraries' caches) writes to the /tmp emptyDir instead.
    return [{"name": "HOME", "value": "/tmp"}]


def secret_env(name: str, ref: SecretKeyRef) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def tmp_volume() -> tuple[Obj, Obj]:
    """A writable /tmp for a container with a read-only root filesystem: (volume, mount)."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


def wallet_volume(wallet: WalletSpec) -> tuple[Obj, Obj]:
    """The wallet Secret as bittensor lays a wallet out, read-only: (volume, mount).

    Only two items are projected, the hotkey and the coldkey's public key, so whatever else the Secret holds
    (a coldkey private key by mistake) never reaches the pod.
    """
    volume = {
        "name": "wallet",
        "secret": {
            "secretName": wallet.secret_name,
            "items": [
                {"key": WALLET_HOTKEY_KEY, "path": f"{wallet.name}/hotkeys/{wallet.hotkey}"},
                {"key": WALLET_COLDKEYPUB_KEY, "path": f"{wallet.name}/coldkeypub.txt"},
            ],
            # Owner and group (the pod's fsGroup) may read: the hotkey is a private key.
            "defaultMode": 0o440,
        },
    }
    mount = {"name": "wallet", "mountPath": WALLET_MOUNT, "readOnly": True}
    return volume, mount


def wallet_args(wallet: WalletSpec) -> list[str]:
    return [
        "--wallet.name",
        wallet.name,
        "--wallet.hotkey",
        wallet.hotkey,
        "--wallet.path",
        WALLET_MOUNT,
    ]


def number(value: float) -> str:
    """A float as a flag value, exactly (`repr` round-trips, `:g` keeps 6 digits); `4` rather than `4.0`."""
    return str(int(value)) if value.is_integer() else repr(value)


def rope_scaling_config(rope: RopeScaling) -> dict[str, str | float | int]:
    """The model config's `rope_scaling` object (Hugging Face's keys), as vLLM and SGLang take it."""
    config: dict[str, str | float | int] = {"rope_type": rope.type, "factor": rope.factor}
    if rope.original_max_position_embeddings is not None:
        config["original_max_position_embeddings"] = rope.original_max_position_embeddings
    return config


def subnet_args(subnet: SubnetSpec) -> list[str]:
    args = ["--netuid", str(subnet.netuid), "--subtensor.network", subnet.network]
    if subnet.chain_endpoint is not None:
        args += ["--subtensor.chain_endpoint", subnet.chain_endpoint]
    return args


def pod_security_context() -> Obj:
    # fsGroup makes the wallet files group-readable by the neuron user; OnRootMismatch keeps the kubelet
    # from walking a model cache of hundreds of gigabytes on every start to change its ownership.
    return {
        "fsGroup": NEURON_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def apply_pod_overrides(template: Obj, overrides: PodOverrides) -> Obj:
    """The pod template with the user's scheduling and metadata overrides applied (a new dict).

    The operator's labels win over the user's: the controller's selector must keep matching its pods.
    """
    meta = {
        **template["metadata"],
        "labels": {**overrides.labels, **template["metadata"]["labels"]},
    }
    if overrides.annotations:
        meta["annotations"] = {**template["metadata"].get("annotations", {}), **overrides.annotations}
    optional = {
        "tolerations": overrides.tolerations or None,
        "affinity": overrides.affinity,
        "nodeSelector": overrides.node_selector or None,
        "priorityClassName": overrides.priority_class_name,
        "runtimeClassName": overrides.runtime_class_name,
        "serviceAccountName": overrides.service_account_name,
        "imagePullSecrets": [{"name": name} for name in overrides.image_pull_secrets] or None,
    }
    spec = {**template["spec"], **{key: value for key, value in optional.items() if value is not None}}
    return {**template, "metadata": meta, "spec": spec}
