"""The QuasarMiner and QuasarValidator custom resources as pydantic models.

These models are the single source of truth: `quasar_operator.crds` generates the CustomResourceDefinitions
from them (field descriptions, defaults, enums, bounds and CEL rules all come from here), and the operator
parses every object kopf hands it with them. Python names are snake_case; the JSON (Kubernetes) names are
camelCase through the alias generator.

Cross-field rules live twice on purpose: as CEL `x-kubernetes-validations` (so the API server rejects
nonsense at `kubectl apply`) and as pydantic validators (so objects that reached the cluster before a rule
existed, or that never pass through an API server, such as tests and the emulator, get the same message).
Both use the message of the same `Rule`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from evaluation.buckets import BUCKETS, MAX_BUCKET_SHARE
from evaluation.tasks import TASKS

GROUP = "quasar.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "quasar"

# Each engine's image, pinned (never `latest`) so that every replica, and every reconcile after an operator
# upgrade, runs the same engine unless the spec says otherwise. TGI: a recent 3.x release. vLLM: 0.11.2, the
# release vLLM's Kimi-Linear recipe names (0.12.0 has a Kimi-Linear bug); it serves Qwen3-Next too. SGLang:
# a 0.5.5 release (Qwen3-Next since 0.5.2). Tags, not digests: none was verified here.
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.5"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.2"
SGLANG_IMAGE = "lmsysorg/sglang:v0.5.5.post3"
TGI_PORT = 80
EngineKind = Literal["tgi", "vllm", "sglang"]
ENGINE_IMAGES: dict[str, str] = {"tgi": TGI_IMAGE, "vllm": VLLM_IMAGE, "sglang": SGLANG_IMAGE}
# Each engine's own default port (TGI's image, `vllm serve`, `sglang.launch_server`).
ENGINE_PORTS: dict[str, int] = {"tgi": TGI_PORT, "vllm": 8000, "sglang": 30000}
# The image built from this repository (images/), tagged with the package version.
NEURON_IMAGE = "ghcr.io/quasar-subnet/quasar:0.1.0"
# The miner's axon port (`quasar miner --axon.port` default).
AXON_PORT = 8091

# Bittensor's on-disk wallet layout: the Secret's keys are the file names the neurons read.
WALLET_HOTKEY_KEY = "hotkey"
WALLET_COLDKEYPUB_KEY = "coldkeypub.txt"

# Engine flags the operator derives from the spec, of every engine: letting `extraArgs` repeat them would make
# the spec lie (and TGI refuses a repeated flag). One list for all engines keeps the rule local to
# spec.model; no engine has another engine's flag under another meaning. TGI's first, then vLLM's (with
# its short forms) and SGLang's, then `--config`: vLLM and SGLang read flags from that YAML file in the
# container, where the operator cannot see them (a file setting trust-remote-code would run the model's code
# while the spec says false).
MANAGED_ENGINE_FLAGS = (
    "--model-id",
    "--revision",
    "--port",
    "--hostname",
    "--num-shard",
    "--max-input-tokens",
    "--max-total-tokens",
    "--quantize",
    "--dtype",
    "--rope-scaling",
    "--rope-factor",
    "--trust-remote-code",
    "--model",
    "--host",
    "--tensor-parallel-size",
    "-tp",
    "--max-model-len",
    "--quantization",
    "-q",
    "--served-model-name",
    "--model-path",
    "--tp-size",
    "--context-length",
    "--json-model-override-args",
    "--hf-overrides",
    "--config",
)
# The GPU memory fraction flags, managed only when model.gpuMemoryFraction is set (TGI specs have long passed
# --cuda-memory-fraction in extraArgs).
MEMORY_FRACTION_FLAGS = ("--cuda-memory-fraction", "--gpu-memory-utilization", "--mem-fraction-static")


def _camel(name: str) -> str:
    # Kubernetes spells initialisms in capitals (`externalIP`): to_camel alone would write `externalIp`.
    return to_camel(name).replace("Ip", "IP")


class _Base(BaseModel):
    """Common configuration: camelCase aliases, Python names also accepted, unknown fields rejected, strict
    types.

    Unknown fields are errors rather than silently dropped so that a typo never means a setting that quietly
    does nothing, even from a client that asked the API server to prune unknown fields instead of refusing.
    Types are strict, as the CRD's schema is: `replicas: true` or `port: "80"` is an error, not 1 or 80 (a
    whole number is still a valid float, as JSON does not tell 2 from 2.0).
    """

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=_camel), validate_by_name=True, extra="forbid", strict=True
    )


@dataclass(frozen=True)
class Rule:
    """A CEL rule for the CRD, with the message the pydantic validator raises for the same fault."""

    rule: str
    message: str
    field_path: str | None = None

    def crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _rules(*rules: Rule) -> dict[str, Any]:
    return {"x-kubernetes-validations": [r.crd() for r in rules]}


def _enforce(*broken: tuple[bool, Rule]) -> None:
    """Raise one error listing the message of every broken rule, so one apply shows every fault."""
    messages = [rule.message for is_broken, rule in broken if is_broken]
    if messages:
        raise ValueError("; ".join(messages))


# apimachinery's resource.Quantity syntax (the pattern Kubernetes' own CRDs use): `200GB` fails at apply
# instead of when the operator creates the PVC.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _quantity(value: Any) -> Any:
    # Quantities may be written as YAML integers (`cpu: 2`, int-or-string in the CRD); the API hands them
    # back as they came. A fraction (`cpu: 0.5`) is refused by the schema, so it is an error here too.
    return str(value) if type(value) is int else value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    Field(pattern=QUANTITY_PATTERN),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
# Opaque Kubernetes objects (affinity, tolerations) are checked by the API server when the operator creates
# the pod, so the CRD keeps them as free-form objects instead of copying the whole core/v1 schema.
FreeForm = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
]


def _ip_address(value: str) -> str:
    ipaddress.ip_address(value)  # raises ValueError, which pydantic reports at the field's path
    return value


# The CRD checks the address with OpenAPI formats rather than CEL's isIP(), which Kubernetes 1.30 lacks.
IPAddress = Annotated[
    str,
    AfterValidator(_ip_address),
    WithJsonSchema({"type": "string", "maxLength": 45, "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]
K8sName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]


class SecretKeyRef(_Base):
    """One key of a Secret in the resource's namespace."""

    name: K8sName = Field(description="Name of the Secret (same namespace as the resource).")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret.")


class ResourceRequirements(_Base):
    """Compute resources of one container, as in core/v1 ResourceRequirements."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources (cpu, memory, ...)."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum resources (cpu, memory, ...)."
    )


# ---------------------------------------------------------------------------------------------------- shared


class WalletSpec(_Base):
    """The neuron's Bittensor wallet: a hotkey and the coldkey's public key, never a coldkey private key."""

    secret_name: K8sName = Field(
        description=(
            f"Secret holding the hotkey file under key `{WALLET_HOTKEY_KEY}` and the coldkey's public key "
            f"file under key `{WALLET_COLDKEYPUB_KEY}` (bittensor's wallet layout); the pods mount only "
            "these two. Never put the coldkey private key in it: the neurons only sign with the hotkey, and "
            "the operator refuses a Secret with a key named like a coldkey (it reads key names, not values)."
        )
    )
    name: str = Field(
        "default",
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Wallet (coldkey) name.",
    )
    hotkey: str = Field(
        "default", min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$", description="Hotkey name."
    )


class SubnetSpec(_Base):
    """The subnet the neuron takes part in, and how it reaches the chain."""

    netuid: int = Field(ge=0, le=65535, description="The subnet's netuid.")
    network: Literal["finney", "test", "local"] = Field("finney", description="Bittensor network.")
    chain_endpoint: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^wss?://",
        description="ws:// or wss:// Subtensor endpoint; overrides `network`.",
    )


class NeuronSpec(_Base):
    """The neuron container (`quasar miner` or `quasar validator`)."""

    image: str = Field(NEURON_IMAGE, min_length=1, description="Neuron image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of the neuron container."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Resources of the neuron container."
    )
    args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra command-line flags, appended after the ones the operator derives from the spec.",
    )
    debug: bool = Field(False, description="Debug logging (`--logging.debug`).")


class PodOverrides(_Base):
    """Scheduling and metadata of the pods the operator creates."""

    tolerations: list[FreeForm] = Field(default_factory=list, description="core/v1 Tolerations.")
    affinity: FreeForm | None = Field(None, description="core/v1 Affinity.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    priority_class_name: str | None = Field(None, max_length=253, description="PriorityClass of the pods.")
    runtime_class_name: str | None = Field(
        None, max_length=253, description="RuntimeClass of the pods (for example `nvidia`)."
    )
    service_account_name: str | None = Field(
        None, max_length=253, description="ServiceAccount the pods run as."
    )
    image_pull_secrets: list[K8sName] = Field(
        default_factory=list, description="Names of Secrets used to pull the images."
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on the pods.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels on the pods (the operator's own labels win on conflict).",
    )


class Condition(_Base):
    """A status condition, as in metav1.Condition."""

    type: Literal["Ready", "Progressing", "Degraded", "Reconciled"] = Field(description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field("", max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: str | None = Field(
        None,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation this condition was computed from."
    )


Conditions = Annotated[
    list[Condition],
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
]


class _StatusBase(_Base):
    # The operator writes status; tolerate fields a newer operator added so an older one can still read it.
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation last reconciled."
    )
    conditions: Conditions = Field(
        default_factory=list, description="Ready, Progressing, Degraded, Reconciled."
    )
    replicas: int | None = Field(None, ge=0, description="Pods that exist.")
    ready_replicas: int | None = Field(None, ge=0, description="Pods that are ready.")


# ------------------------------------------------------------------------------------------------- miner

_MAX_TOKENS = Rule(
    rule="!has(self.maxInputTokens) || "
    "(has(self.maxTotalTokens) && self.maxInputTokens < self.maxTotalTokens)",
    message="maxInputTokens must be less than maxTotalTokens (and needs maxTotalTokens set)",
    field_path=".maxInputTokens",
)
_SHARDS = Rule(
    rule="!has(self.shards) || self.shards <= self.gpusPerReplica",
    message="shards cannot exceed gpusPerReplica",
    field_path=".shards",
)


def _sets_flag_cel(flags: Iterable[str]) -> str:
    """CEL: whether the arg `a` is one of `flags`, as `--flag` or `--flag=value`.

    Comparisons and prefixes rather than one regular expression: the API server estimates a regex match at
    the string's length times the pattern's, and these rules run over every pool's extraArgs (a regex over
    all engines' flags would exceed its cost budget)."""
    listed = "[" + ", ".join(f"'{f}'" for f in flags) + "]"
    return f"{listed}.exists(f, a == f || a.startsWith(f + '='))"


def _sets_flag(args: Iterable[str], flags: Iterable[str]) -> bool:
    """Whether an arg sets one of `flags` as the engines' parsers read them.

    Stricter than `_sets_flag_cel`, which sees the spellings the engines document (`--flag`,
    `--flag=value`): the parsers also take vLLM's `_` for `-` (`--trust_remote_code`) and `--flag.key`
    for JSON flags, argparse's unique prefixes (`--max-model`, `-t` for `-tp`), a boolean's negation
    (`--no-trust-remote-code`) and a short flag's attached value (`-qawq`). The API server cannot afford
    those checks (no regex over extraArgs); the operator refuses them instead of building the pods."""
    return _names_any([_engine_flag_name(a) for a in args if a.startswith("-")], flags)


def _sets_neuron_flag(args: Iterable[str], flags: Iterable[str]) -> bool:
    """Whether an arg sets one of `flags` as the neurons' parsers (argparse, prefixes taken) read them."""
    return _names_any([a.split("=", 1)[0] for a in args if a.startswith("-")], flags)


def _names_any(names: list[str], flags: Iterable[str]) -> bool:
    return any(_names_flag(name, flag) for name in names for flag in flags)


def _engine_flag_name(arg: str) -> str:
    """The option an engine argument names, spelled as the flags are listed: dashes, no value, no
    negation."""
    name = arg.split("=", 1)[0]
    if not name.startswith("--"):
        return name
    name = "--" + name[2:].split(".", 1)[0].replace("_", "-")
    return "--" + name[len("--no-") :] if name.startswith("--no-") else name


def _names_flag(name: str, flag: str) -> bool:
    """Whether the option `name` is `flag`, a prefix argparse would expand to it, or (a short flag) the
    flag with its value attached."""
    if flag.startswith("--"):
        return len(name) > 2 and flag.startswith(name)
    return len(name) > 1 and not name.startswith("--") and (name.startswith(flag) or flag.startswith(name))


_EXTRA_ARGS = Rule(
    rule=f"!has(self.extraArgs) || self.extraArgs.all(a, !{_sets_flag_cel(MANAGED_ENGINE_FLAGS)})",
    message="extraArgs cannot set flags the operator derives from the spec, nor read flags from a file: "
    + ", ".join(MANAGED_ENGINE_FLAGS),
    field_path=".extraArgs",
)
_MEMORY_FRACTION = Rule(
    rule="!has(self.gpuMemoryFraction) || !has(self.extraArgs) "
    f"|| self.extraArgs.all(a, !{_sets_flag_cel(MEMORY_FRACTION_FLAGS)})",
    message="extraArgs cannot set the GPU memory fraction that gpuMemoryFraction sets: "
    + ", ".join(MEMORY_FRACTION_FLAGS),
    field_path=".extraArgs",
)


Quantize = Literal[
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "gptq",
    "marlin",
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "fp8",
]
Dtype = Literal["float16", "bfloat16"]
# 512 characters a flag: the CEL rule over every pool's extraArgs must fit the API server's cost budget
# (1024 exceeded it 1.34x on kube-apiserver v1.37).
ExtraArgs = list[Annotated[str, Field(max_length=512)]]


def _managed_flags(args: Iterable[str]) -> bool:
    return _sets_flag(args, MANAGED_ENGINE_FLAGS)


def sets_memory_fraction(args: Iterable[str]) -> bool:
    """Whether `args` set a GPU memory fraction flag (any engine's)."""
    return _sets_flag(args, MEMORY_FRACTION_FLAGS)


# What vLLM and SGLang take of TGI's quantisation names (`--quantization` choices; tests/test_engine_args.py
# holds the engines' own lists, with their sources).
ENGINE_QUANTIZE: dict[str, tuple[str, ...]] = {
    "vllm": ("awq", "compressed-tensors", "gptq", "bitsandbytes", "fp8"),
    "sglang": ("awq", "compressed-tensors", "gptq", "marlin", "bitsandbytes", "fp8"),
}

_YARN_ORIGINAL = Rule(
    rule="(self.type == 'yarn') == has(self.originalMaxPositionEmbeddings)",
    message="originalMaxPositionEmbeddings is needed by type yarn and taken by no other type",
    field_path=".originalMaxPositionEmbeddings",
)


class RopeScaling(_Base):
    """RoPE scaling, to serve contexts longer than the model was trained on."""

    model_config = ConfigDict(json_schema_extra=_rules(_YARN_ORIGINAL))

    type: Literal["linear", "dynamic", "yarn"] = Field(
        description=(
            "TGI `--rope-scaling` (linear, dynamic); vLLM `--rope-scaling` and SGLang "
            "`--json-model-override-args` as the config's rope_scaling.rope_type (also yarn)."
        )
    )
    factor: float = Field(gt=0, description="Context multiplier (TGI `--rope-factor`, rope_scaling.factor).")
    original_max_position_embeddings: int | None = Field(
        None,
        ge=1,
        description="The context the model was trained on (rope_scaling.original_max_position_embeddings); "
        "yarn only.",
    )

    @model_validator(mode="after")
    def _check(self) -> RopeScaling:
        _enforce(
            ((self.type == "yarn") != (self.original_max_position_embeddings is not None), _YARN_ORIGINAL)
        )
        return self


class ModelSpec(_Base):
    """The model the engine serves. Flags are named as TGI, vLLM and SGLang spell them, in that order."""

    model_config = ConfigDict(json_schema_extra=_rules(_MAX_TOKENS, _SHARDS, _EXTRA_ARGS, _MEMORY_FRACTION))

    id: str = Field(
        min_length=1,
        max_length=256,
        description="Hugging Face Hub model id (`--model-id`; vLLM's positional model; `--model-path`).",
    )
    revision: str | None = Field(None, max_length=256, description="Branch, tag or commit (`--revision`).")
    max_input_tokens: int | None = Field(
        None,
        ge=1,
        description="Longest prompt in tokens (`--max-input-tokens`; TGI only); less than maxTotalTokens.",
    )
    max_total_tokens: int | None = Field(
        None,
        ge=2,
        description="Longest prompt plus generation in tokens: the context (`--max-total-tokens`, "
        "`--max-model-len`, `--context-length`).",
    )
    quantize: Quantize | None = Field(
        None, description="Quantization (`--quantize`, `--quantization`); vLLM and SGLang take fewer kinds."
    )
    dtype: Dtype | None = Field(None, description="Weights dtype (`--dtype`).")
    rope_scaling: RopeScaling | None = Field(
        None,
        description="RoPE scaling (TGI `--rope-scaling`, `--rope-factor`; vLLM `--rope-scaling`; SGLang "
        "`--json-model-override-args`).",
    )
    gpu_memory_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of each GPU's memory the engine may use for weights and cache "
        "(`--cuda-memory-fraction`, `--gpu-memory-utilization`, `--mem-fraction-static`); default: the "
        "engine's.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run the Python code the model's Hub repository ships (`--trust-remote-code`): needed by "
        "models whose architecture the engine lacks (Kimi-Linear). It runs with the engine's privileges: "
        "opt in only for a repository you trust, pinned by revision.",
    )
    gpus_per_replica: int = Field(
        1, ge=0, le=16, description="GPUs (`nvidia.com/gpu`) each replica requests."
    )
    shards: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Tensor-parallel shards (`--num-shard`, `--tensor-parallel-size`, `--tp-size`); defaults "
        "to gpusPerReplica.",
    )
    # 1024 characters (not more) keeps the CEL rule over these args well inside the API server's cost budget.
    extra_args: ExtraArgs = Field(
        default_factory=list,
        max_length=64,
        description="Extra engine flags, appended after the ones the operator derives from the spec.",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        _enforce(
            (
                self.max_input_tokens is not None
                and (self.max_total_tokens is None or self.max_input_tokens >= self.max_total_tokens),
                _MAX_TOKENS,
            ),
            (self.shards is not None and self.shards > self.gpus_per_replica, _SHARDS),
            (_managed_flags(self.extra_args), _EXTRA_ARGS),
            (
                self.gpu_memory_fraction is not None and sets_memory_fraction(self.extra_args),
                _MEMORY_FRACTION,
            ),
        )
        return self


_API_TGI = Rule(
    rule="self.kind != 'tgi' || !has(self.api)",
    message="engine tgi takes no api: the miner asks TGI's own /generate",
    field_path=".api",
)


class EngineSpec(_Base):
    """The inference engine next to the miner: TGI, vLLM or SGLang."""

    model_config = ConfigDict(json_schema_extra=_rules(_API_TGI))

    kind: EngineKind = Field(
        "tgi",
        description="Engine kind: tgi (TGI's launcher and /generate), vllm (`vllm serve`) or sglang "
        "(`sglang.launch_server`), the last two asked through their OpenAI API. Default tgi, so objects "
        "written before vLLM and SGLang existed keep their pods.",
    )
    image: str | None = Field(
        None,
        min_length=1,
        description=f"Engine image (default: the kind's pinned image: {TGI_IMAGE}, {VLLM_IMAGE}, "
        f"{SGLANG_IMAGE}).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of the engine container."
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port the engine listens on inside the pod (default: the kind's own, 80, 8000, 30000).",
    )
    api: Literal["chat", "completions"] | None = Field(
        None,
        description="vllm and sglang: the OpenAI route the miner uses (`--engine.api`): chat (the server "
        "applies the model's chat template: instruct and thinking models) or completions (the prompt as it "
        "is: base models). Default chat.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Resources of the engine container; model.gpusPerReplica sets the GPU limit.",
    )
    shm_size: Quantity = Field(
        "1Gi", description="Size of the in-memory /dev/shm (NCCL needs it for sharding)."
    )
    startup_timeout_seconds: int = Field(
        3600,
        ge=60,
        le=86400,
        description="How long the engine may take to download and load the model before it counts as failed.",
    )

    @model_validator(mode="after")
    def _check(self) -> EngineSpec:
        _enforce((self.kind == "tgi" and self.api is not None, _API_TGI))
        return self

    @property
    def container_image(self) -> str:
        """The image the engine runs: the spec's, or the kind's pinned default."""
        return self.image or ENGINE_IMAGES[self.kind]

    @property
    def container_port(self) -> int:
        """The port the engine listens on: the spec's, or the kind's default."""
        return self.port or ENGINE_PORTS[self.kind]


_NODE_PORT = Rule(
    rule="self.serviceType == 'NodePort' || !has(self.nodePort)",
    message="nodePort needs serviceType NodePort",
    field_path=".nodePort",
)
_NODE_PORT_ADDRESS = Rule(
    rule="self.serviceType != 'NodePort' || (has(self.externalIP) && has(self.nodePort))",
    message="serviceType NodePort needs externalIP and nodePort: the endpoint announced on chain",
)


class ExposureSpec(_Base):
    """How validators reach the miner from outside the cluster, and the address announced on chain."""

    model_config = ConfigDict(json_schema_extra=_rules(_NODE_PORT, _NODE_PORT_ADDRESS))

    service_type: Literal["LoadBalancer", "NodePort"] = Field("LoadBalancer", description="Service type.")
    port: int = Field(AXON_PORT, ge=1, le=65535, description="Service port.")
    node_port: int | None = Field(
        None, ge=1, le=65535, description="Node port (serviceType NodePort only; cluster's node port range)."
    )
    external_ip: IPAddress | None = Field(
        None,
        description=(
            "IP address announced on chain (`--axon.external_ip`). Default with LoadBalancer: the load "
            "balancer's address once assigned."
        ),
    )
    external_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "Port announced on chain (`--axon.external_port`). Default: nodePort for NodePort, port for "
            "LoadBalancer."
        ),
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations on the Service (cloud load balancer settings)."
    )

    @model_validator(mode="after")
    def _check(self) -> ExposureSpec:
        _enforce(
            (self.node_port is not None and self.service_type != "NodePort", _NODE_PORT),
            (
                self.service_type == "NodePort" and (self.external_ip is None or self.node_port is None),
                _NODE_PORT_ADDRESS,
            ),
        )
        return self


_CACHE_CLAIM = Rule(
    rule="!has(self.existingClaim) || !has(self.storageClassName)",
    message="storageClassName applies to a claim the operator creates, not to existingClaim",
    field_path=".storageClassName",
)


class CacheSpec(_Base):
    """The model cache at the engine's HF_HOME (/data): a PVC the operator creates, or an existing one."""

    model_config = ConfigDict(json_schema_extra=_rules(_CACHE_CLAIM))

    size: Quantity = Field("200Gi", description="Size of the PVC the operator creates.")
    storage_class_name: str | None = Field(
        None, max_length=253, description="StorageClass of the PVC the operator creates (default: cluster's)."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        "ReadWriteOnce", description="Access mode of the PVC; replicas on several nodes need ReadWriteMany."
    )
    existing_claim: K8sName | None = Field(None, description="Use this PVC instead of creating one.")
    hf_token_secret: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token (HF_TOKEN), for gated or private models."
    )

    @model_validator(mode="after")
    def _check(self) -> CacheSpec:
        _enforce((self.existing_claim is not None and self.storage_class_name is not None, _CACHE_CLAIM))
        return self


# `quasar miner` and `quasar validator` flags the operator derives from the spec: every one a field sets,
# whether set or not (the field is the way to set it). Repeated in neuron.args, one would win (argparse
# keeps the last) and the spec would lie: a miner announcing another port, a validator keeping its state
# off its volume.
_SUBNET_AND_WALLET_FLAGS = (
    "--netuid",
    "--subtensor.network",
    "--subtensor.chain_endpoint",
    "--wallet.name",
    "--wallet.hotkey",
    "--wallet.path",
)
MINER_NEURON_FLAGS = (
    *_SUBNET_AND_WALLET_FLAGS,
    "--axon.port",
    "--axon.external_ip",
    "--axon.external_port",
    "--metrics.host",
    "--metrics.port",
    "--engine.url",
    "--engine.kind",
    "--engine.api",
    "--engine.timeout",
    "--miner.model_name",
    "--blacklist.min_stake",
    "--logging.debug",
)
VALIDATOR_NEURON_FLAGS = (
    *_SUBNET_AND_WALLET_FLAGS,
    "--neuron.sample_size",
    "--neuron.timeout",
    "--neuron.epoch_length",
    "--neuron.moving_average_alpha",
    "--neuron.tasks",
    "--neuron.bucket_weights",
    "--neuron.tokenizer",
    "--neuron.data",
    "--neuron.state_path",
    "--metrics.port",
    "--wandb.off",
    "--wandb.project",
    "--wandb.entity",
    "--logging.debug",
)


def _neuron_args_rule(flags: tuple[str, ...]) -> Rule:
    return Rule(
        rule=f"!has(self.args) || self.args.all(a, !{_sets_flag_cel(flags)})",
        message="args cannot set flags the operator derives from the spec (set its fields instead): "
        + ", ".join(flags),
        field_path=".args",
    )


_MINER_NEURON_ARGS = _neuron_args_rule(MINER_NEURON_FLAGS)
_VALIDATOR_NEURON_ARGS = _neuron_args_rule(VALIDATOR_NEURON_FLAGS)


class MinerNeuronSpec(NeuronSpec):
    """The miner sidecar (`quasar miner`): talks to the engine on localhost."""

    model_config = ConfigDict(json_schema_extra=_rules(_MINER_NEURON_ARGS))

    min_stake: float | None = Field(
        None, ge=0, description="Least stake a validator needs to be served (`--blacklist.min_stake`)."
    )
    engine_timeout_seconds: int | None = Field(
        None, ge=1, description="Most seconds one generation may take (`--engine.timeout`)."
    )

    @model_validator(mode="after")
    def _check(self) -> MinerNeuronSpec:
        _enforce((_sets_neuron_flag(self.args, MINER_NEURON_FLAGS), _MINER_NEURON_ARGS))
        return self


class ValidatorNeuronSpec(NeuronSpec):
    """The validator (`quasar validator`)."""

    model_config = ConfigDict(json_schema_extra=_rules(_VALIDATOR_NEURON_ARGS))

    @model_validator(mode="after")
    def _check(self) -> ValidatorNeuronSpec:
        _enforce((_sets_neuron_flag(self.args, VALIDATOR_NEURON_FLAGS), _VALIDATOR_NEURON_ARGS))
        return self


def _default(model: type[BaseModel]) -> Any:
    # An all-defaults sub-object. The CRD's default is the object with its defaults filled in, not `{}`: the
    # API server checks a default against the schema's CEL rules, and a rule reading a defaulted field of
    # `{}` fails with "no such key" (kube-apiserver v1.37 refused both CRDs so).
    defaults = model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return Field(default_factory=model, json_schema_extra={"default": defaults})


GPU_RESOURCE = "nvidia.com/gpu"

_POOL_SHARDS = Rule(
    rule="!has(self.shards) || !has(self.gpusPerReplica) || self.shards <= self.gpusPerReplica",
    message="shards cannot exceed gpusPerReplica",
    field_path=".shards",
)


class PoolModelSpec(_Base):
    """Engine settings that differ on one pool's GPUs (for example more shards, or a quantisation on smaller
    GPUs). Unset fields keep spec.model's."""

    model_config = ConfigDict(json_schema_extra=_rules(_POOL_SHARDS, _EXTRA_ARGS))

    gpus_per_replica: int | None = Field(None, ge=1, le=16, description="GPUs each replica requests here.")
    shards: int | None = Field(None, ge=1, le=16, description="Tensor-parallel shards (`--num-shard`).")
    quantize: Quantize | None = Field(None, description="Quantization (`--quantize`).")
    dtype: Dtype | None = Field(None, description="Weights dtype (`--dtype`).")
    extra_args: ExtraArgs | None = Field(
        None, max_length=64, description="Extra engine flags; replace spec.model.extraArgs when set."
    )

    @model_validator(mode="after")
    def _check(self) -> PoolModelSpec:
        _enforce(
            (
                self.shards is not None
                and self.gpus_per_replica is not None
                and self.shards > self.gpus_per_replica,
                _POOL_SHARDS,
            ),
            (_managed_flags(self.extra_args or ()), _EXTRA_ARGS),
        )
        return self


# A DNS label short enough that `<miner>-miner-<pool>` stays a valid Deployment name for most miner names.
PoolName = Annotated[str, Field(min_length=1, max_length=20, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class PoolSpec(_Base):
    """One GPU node pool the miner may run on: how its nodes are selected, and how many replicas it takes."""

    name: PoolName = Field(description="Pool name: a DNS label, unique in the list; names its Deployment.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels of the pool (added to pod.nodeSelector)."
    )
    affinity: FreeForm | None = Field(
        None, description="core/v1 Affinity for this pool (replaces pod.affinity)."
    )
    tolerations: list[FreeForm] = Field(
        default_factory=list,
        description="core/v1 Tolerations for the pool's taints (added to pod.tolerations).",
    )
    gpu_resource: str = Field(
        GPU_RESOURCE,
        min_length=1,
        max_length=253,
        pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9._-]+$",
        description="Extended resource name of the pool's GPUs (for example nvidia.com/mig-3g.40gb).",
    )
    max_replicas: int = Field(ge=0, le=1000, description="Most replicas placed in this pool.")
    spot: bool = Field(False, description="Spot or preemptible nodes (shown in status; labels the pods).")
    node_autoscaling: bool = Field(
        False,
        description=(
            "The pool's nodes come from a cluster autoscaler: replicas are placed up to maxReplicas without "
            "waiting for free GPUs to be observed, and spill only after spillAfterSeconds unschedulable."
        ),
    )
    model: PoolModelSpec = _default(PoolModelSpec)


_UNIQUE_POOLS = Rule(
    rule="self.pools.all(p, self.pools.exists_one(q, q.name == p.name))",
    message="pool names must be unique",
    field_path=".pools",
)


class PlacementSpec(_Base):
    """Where replicas run: GPU node pools in order of preference, each with its own Deployment."""

    model_config = ConfigDict(json_schema_extra=_rules(_UNIQUE_POOLS))

    pools: list[PoolSpec] = Field(
        min_length=1, max_length=16, description="Pools, most preferred first: replicas fill them in order."
    )
    spill_after_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description=(
            "How long a replica may stay unschedulable before its pool counts as full and replicas spill to "
            "the next pool; a full pool takes replicas again once free GPUs show there for as long."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> PlacementSpec:
        names = [pool.name for pool in self.pools]
        _enforce((len(set(names)) != len(names), _UNIQUE_POOLS))
        return self


_MIN_MAX = Rule(
    rule="self.minReplicas <= self.maxReplicas",
    message="minReplicas cannot exceed maxReplicas",
    field_path=".minReplicas",
)


class AutoscalingSpec(_Base):
    """How many replicas the miner runs: decided by the operator from the engines' queues, or by an external
    autoscaler (HPA, KEDA) through the scale subresource."""

    model_config = ConfigDict(json_schema_extra=_rules(_MIN_MAX))

    mode: Literal["operator", "external"] = Field(
        "operator",
        description=(
            "operator: the operator reads the engines' metrics and decides (status.desiredReplicas). "
            "external: an HPA or KEDA writes spec.replicas through the scale subresource; the operator "
            "never writes replicas and only places them into pools."
        ),
    )
    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=0, le=1000, description="Most replicas.")
    metric: Literal["queueSize", "batchSize", "queueTime"] = Field(
        "queueSize",
        description=(
            "Signal per replica, read from the engine's own metrics: queueSize (requests waiting: TGI "
            "`tgi_queue_size`, vLLM `vllm:num_requests_waiting`, SGLang `sglang:num_queue_reqs`), batchSize "
            "(requests being generated: `tgi_batch_current_size`, `vllm:num_requests_running`, "
            "`sglang:num_running_reqs`) or queueTime (TGI only: mean seconds requests waited, from "
            "`tgi_request_queue_duration` between two reads)."
        ),
    )
    target: float = Field(2.0, gt=0, description="Target value of the metric per replica.")
    tolerance: float = Field(
        0.1, ge=0, le=1, description="Relative distance from the target inside which nothing changes."
    )
    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale up to the lowest recommendation of this window."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale down to the highest recommendation of this window."
    )
    scale_down_step: int = Field(
        1, ge=1, le=1000, description="Most replicas removed per scaleDownPeriodSeconds."
    )
    scale_down_period_seconds: int = Field(
        60, ge=0, le=3600, description="Least time between two scale-downs."
    )

    @model_validator(mode="after")
    def _check(self) -> AutoscalingSpec:
        _enforce((self.min_replicas > self.max_replicas, _MIN_MAX))
        return self


# Pods of different pools run on different nodes: only a ReadWriteMany claim mounts on all of them.
_SHARED_CACHE = Rule(
    rule="!has(self.placement) || size(self.placement.pools) < 2 || has(self.cache.existingClaim) "
    "|| self.cache.accessMode == 'ReadWriteMany'",
    message="placement over several pools needs cache.accessMode ReadWriteMany (or cache.existingClaim)",
    field_path=".cache.accessMode",
)


# What an engine cannot take, checked where both the engine and the field are in sight.
_INPUT_TOKENS_ENGINE = Rule(
    rule="self.engine.kind == 'tgi' || !has(self.model.maxInputTokens)",
    message="engines vllm and sglang take no model.maxInputTokens: their one limit is maxTotalTokens "
    "(--max-model-len, --context-length)",
    field_path=".model.maxInputTokens",
)
_YARN_TGI = Rule(
    rule="self.engine.kind != 'tgi' || !has(self.model.ropeScaling) || self.model.ropeScaling.type != 'yarn'",
    message="engine tgi cannot take model.ropeScaling.type yarn: TGI's --rope-scaling is linear or dynamic",
    field_path=".model.ropeScaling.type",
)
_QUEUE_TIME = Rule(
    rule="self.engine.kind == 'tgi' || !has(self.autoscaling) || self.autoscaling.metric != 'queueTime'",
    message="autoscaling.metric queueTime reads TGI's tgi_request_queue_duration: engines vllm and sglang "
    "offer queueSize and batchSize",
    field_path=".autoscaling.metric",
)


def _quantize_rule(kind: str) -> Rule:
    allowed = "[" + ", ".join(f"'{q}'" for q in ENGINE_QUANTIZE[kind]) + "]"
    return Rule(
        rule=f"self.engine.kind != '{kind}' || ("
        f"(!has(self.model.quantize) || self.model.quantize in {allowed}) && (!has(self.placement) || "
        "self.placement.pools.all(p, !has(p.model) || !has(p.model.quantize) "
        f"|| p.model.quantize in {allowed})))",
        message=f"engine {kind} cannot take that quantize (spec.model or a pool's model): it takes "
        + ", ".join(ENGINE_QUANTIZE[kind]),
        field_path=".model.quantize",
    )


_QUANTIZE_ENGINE = {kind: _quantize_rule(kind) for kind in ENGINE_QUANTIZE}


class QuasarMinerSpec(_Base):
    """Desired state of a QuasarMiner: an engine serving a model plus the miner neuron, per replica."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            _SHARED_CACHE, _INPUT_TOKENS_ENGINE, _YARN_TGI, _QUEUE_TIME, *_QUANTIZE_ENGINE.values()
        )
    )

    model: ModelSpec = Field(description="The model and how the engine serves it.")
    engine: EngineSpec = _default(EngineSpec)
    wallet: WalletSpec = Field(description="The miner's hotkey.")
    subnet: SubnetSpec = Field(description="The subnet to mine on.")
    exposure: ExposureSpec = _default(ExposureSpec)
    replicas: int = Field(
        1,
        ge=0,
        le=1000,
        description="Engine+miner pods; an HPA or KEDA may own it through the scale subresource.",
    )
    cache: CacheSpec = _default(CacheSpec)
    neuron: MinerNeuronSpec = _default(MinerNeuronSpec)
    pod: PodOverrides = _default(PodOverrides)
    placement: PlacementSpec | None = Field(
        None, description="GPU node pools in order of preference (default: one Deployment, pod's scheduling)."
    )
    autoscaling: AutoscalingSpec | None = Field(
        None,
        description="Replicas from the engines' load or an external autoscaler (default: spec.replicas).",
    )

    @model_validator(mode="after")
    def _check(self) -> QuasarMinerSpec:
        spans_nodes = self.placement is not None and len(self.placement.pools) > 1
        shared = self.cache.existing_claim is not None or self.cache.access_mode == "ReadWriteMany"
        kind, model = self.engine.kind, self.model
        pools = self.placement.pools if self.placement is not None else []
        quantizes = [q for q in (model.quantize, *(p.model.quantize for p in pools)) if q is not None]
        _enforce(
            (spans_nodes and not shared, _SHARED_CACHE),
            (kind != "tgi" and model.max_input_tokens is not None, _INPUT_TOKENS_ENGINE),
            (
                kind == "tgi" and model.rope_scaling is not None and model.rope_scaling.type == "yarn",
                _YARN_TGI,
            ),
            (
                kind != "tgi" and self.autoscaling is not None and self.autoscaling.metric == "queueTime",
                _QUEUE_TIME,
            ),
            *(
                (kind == engine and any(q not in ENGINE_QUANTIZE[engine] for q in quantizes), rule)
                for engine, rule in _QUANTIZE_ENGINE.items()
            ),
        )
        return self


class PoolStatus(_Base):
    """One pool's share of the replicas."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="Pool name.")
    desired: int = Field(0, ge=0, description="Replicas the operator wants in this pool now.")
    replicas: int = Field(0, ge=0, description="Pods of this pool that exist.")
    ready: int = Field(0, ge=0, description="Pods of this pool that are ready.")
    pending: int = Field(0, ge=0, description="Pods of this pool the scheduler cannot place.")
    free: int | None = Field(None, ge=0, description="Further replicas that fit on the pool's free GPUs.")
    spot: bool = Field(False, description="Spot or preemptible nodes.")
    full_since: str | None = Field(
        None,
        description="Since when the pool counts as full (replicas spill past it); empty when it has room.",
        json_schema_extra={"format": "date-time"},
    )
    spills: int = Field(
        0,
        ge=0,
        description="Times in a row the pool was found full; each doubles the wait before it is retried.",
    )


class ScaleDecision(_Base):
    """The last change of the desired replica count, and why."""

    model_config = ConfigDict(extra="ignore")

    time: str = Field(description="When (RFC 3339).", json_schema_extra={"format": "date-time"})
    replicas_from: int = Field(ge=0, description="Desired replicas before.")
    replicas_to: int = Field(ge=0, description="Desired replicas after.")
    reason: str = Field(max_length=1024, description="Why, with the metric and its target.")


class MinerStatus(_StatusBase):
    """Observed state of a QuasarMiner."""

    selector: str | None = Field(None, description="Label selector of the pods (for the scale subresource).")
    endpoint: str | None = Field(None, description="The ip:port announced on chain.")
    desired_replicas: int | None = Field(
        None,
        ge=0,
        description="Replicas the operator runs: spec.replicas or the autoscaler's, within min/max.",
    )
    metric_value: float | None = Field(
        None, description="The autoscaling metric per replica at the last read (absent: none read)."
    )
    unplaced: int | None = Field(None, ge=0, description="Desired replicas no pool has room for.")
    pools: list[PoolStatus] = Field(
        default_factory=list,
        description="Per pool: desired, ready and pending replicas, free room, and whether it is full.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    last_scale: ScaleDecision | None = Field(None, description="The last change of desiredReplicas.")


class QuasarMiner(_Base):
    """A QuasarMiner object as the API server returns it."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "QuasarMiner"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QuasarMinerSpec
    status: MinerStatus | None = None


# --------------------------------------------------------------------------------------------- validator

_WANDB_KEY = Rule(
    rule="self.mode != 'online' || has(self.apiKeySecret)",
    message="mode online needs apiKeySecret",
    field_path=".apiKeySecret",
)


def _weights_schema(names: Iterable[str], what: str) -> WithJsonSchema:
    # One property per known name rather than a free map: kubectl's strict field validation then refuses
    # unknown names, and no CEL rule has to iterate over map keys, whose length the API server's cost
    # estimator cannot bound (such a rule could push the CRD over its CEL budget).
    return WithJsonSchema(
        {
            "type": "object",
            "x-kubernetes-map-type": "atomic",
            "properties": {
                name: {"type": "number", "minimum": 0, "description": f"Weight of the {name} {what}."}
                for name in names
            },
        }
    )


def _check_weights(value: dict[str, float], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    if not any(w > 0 for w in value.values()):
        raise ValueError("at least one weight must be positive")


def _task_weights(value: dict[str, float]) -> dict[str, float]:
    _check_weights(value, TASKS, "task")
    return value


def _bucket_weights(value: dict[str, float]) -> dict[str, float]:
    _check_weights(value, BUCKETS, "bucket")
    total = sum(value.values())
    too_big = [b for b, w in value.items() if w / total > MAX_BUCKET_SHARE + 1e-9]
    if too_big:
        # Only here, not in CEL (which has no sum()): the validator refuses it too, at startup.
        raise ValueError(
            f"{too_big[0]} would get more than {MAX_BUCKET_SHARE:.0%} of rounds; name more buckets"
        )
    return value


_Weights = dict[str, Annotated[float, Field(ge=0)]]
TaskWeights = Annotated[_Weights, AfterValidator(_task_weights), _weights_schema(TASKS, "task")]
BucketWeights = Annotated[_Weights, AfterValidator(_bucket_weights), _weights_schema(BUCKETS, "bucket")]


class WandbSpec(_Base):
    """Weights & Biases logging of the validator's rounds."""

    model_config = ConfigDict(json_schema_extra=_rules(_WANDB_KEY))

    mode: Literal["online", "offline", "disabled"] = Field("disabled", description="WANDB_MODE.")
    project: str = Field("quasar-validators", min_length=1, max_length=128, description="WandB project.")
    entity: str | None = Field(None, max_length=128, description="WandB entity (team or user).")
    api_key_secret: SecretKeyRef | None = Field(None, description="Secret key holding WANDB_API_KEY.")

    @model_validator(mode="after")
    def _check(self) -> WandbSpec:
        _enforce((self.mode == "online" and self.api_key_secret is None, _WANDB_KEY))
        return self


class StateSpec(_Base):
    """The PVC holding the validator's state (moving-average scores), so scores survive restarts."""

    size: Quantity = Field("1Gi", description="Size of the state PVC.")
    storage_class_name: str | None = Field(None, max_length=253, description="StorageClass of the state PVC.")


_RELATIVE_PATH = Rule(
    rule="!self.path.startsWith('/') && !self.path.contains('..')",
    message="path must be relative to the claim, without '..'",
    field_path=".path",
)


class DataSpec(_Base):
    """LongBench data on an existing PVC, mounted read-only (otherwise the validator downloads it)."""

    model_config = ConfigDict(json_schema_extra=_rules(_RELATIVE_PATH))

    existing_claim: K8sName = Field(description="PVC holding the data.")
    path: str = Field(
        "",
        max_length=1024,
        description="Folder or data.zip inside the claim (relative; empty: the claim's root).",
    )

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        _enforce((self.path.startswith("/") or ".." in self.path, _RELATIVE_PATH))
        return self


class QuasarValidatorSpec(_Base):
    """Desired state of a QuasarValidator: one validator with its state on a PVC."""

    wallet: WalletSpec = Field(description="The validator's hotkey.")
    subnet: SubnetSpec = Field(description="The subnet to validate.")
    neuron: ValidatorNeuronSpec = _default(ValidatorNeuronSpec)
    tasks: TaskWeights | None = Field(
        None,
        description="Tasks and their weights (`--neuron.tasks`); default: the validator's.",
    )
    bucket_weights: BucketWeights | None = Field(
        None,
        description=(
            "Context-length buckets (32k, 124k, 512k, 1.5m, 2m) and weights (`--neuron.bucket_weights`)."
        ),
    )
    sample_size: int | None = Field(
        None, ge=1, le=4096, description="Miners asked per round (`--neuron.sample_size`)."
    )
    timeout_seconds: float | None = Field(
        None, gt=0, description="Most seconds a miner gets, whatever the context size (`--neuron.timeout`)."
    )
    epoch_length: int | None = Field(
        None, ge=1, description="Blocks between weight settings (`--neuron.epoch_length`)."
    )
    moving_average_alpha: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Weight of a new reward in the moving averages (`--neuron.moving_average_alpha`).",
    )
    tokenizer: str | None = Field(
        None,
        max_length=1024,
        description="Tokenizer (Hub id or path) buckets are measured in (`--neuron.tokenizer`).",
    )
    data: DataSpec | None = Field(None, description="LongBench data source (`--neuron.data`).")
    state: StateSpec = _default(StateSpec)
    wandb: WandbSpec = _default(WandbSpec)
    pod: PodOverrides = _default(PodOverrides)


class ValidatorStatus(_StatusBase):
    """Observed state of a QuasarValidator."""

    last_weights_time: str | None = Field(
        None,
        description="When the validator last set weights (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


class QuasarValidator(_Base):
    """A QuasarValidator object as the API server returns it."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "QuasarValidator"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QuasarValidatorSpec
    status: ValidatorStatus | None = None


# pydantic's type errors, as a Kubernetes user reads them: the JSON type the field needs.
_EXPECTED = {
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "list_type": "a list",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "a boolean",
}
# Enough to see what is wrong; the message stays far below a condition's and an Event's size limits.
MAX_ERRORS = 10


def json_type(value: Any) -> str:
    """The JSON type of a parsed JSON value, as a message names it."""
    if value is None:
        return "null"
    for python, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, python):
            return name
    return "a list" if isinstance(value, list) else "an object"


def field_path(root: str, loc: Iterable[str | int]) -> str:
    """A pydantic location as Kubernetes writes a field path: `spec.placement.pools[0].name`."""
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "."


def error_summary(exc: ValidationError, root: str = "") -> str:
    """The errors on one line, each with its field path under `root` (`spec.model: maxInputTokens must ...`),
    at most MAX_ERRORS of them."""
    errors = exc.errors(include_url=False)
    parts = [
        f"{field_path(root, err['loc'])}: "
        + (
            f"must be {_EXPECTED[err['type']]}, not {json_type(err['input'])}"
            if err["type"] in _EXPECTED
            else err["msg"]
        )
        for err in errors[:MAX_ERRORS]
    ]
    if len(errors) > MAX_ERRORS:
        parts.append(f"and {len(errors) - MAX_ERRORS} more")
    return "; ".join(parts)
