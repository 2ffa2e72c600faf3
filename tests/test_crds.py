"""The QuasarMiner and QuasarValidator CRDs and the pydantic models they are generated from."""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from celpy.adapter import json_to_cel
from celpy.celtypes import BoolType
from pydantic import BaseModel, ValidationError
from quasar_operator import crds
from quasar_operator.models import (
    GROUP,
    NEURON_IMAGE,
    TGI_IMAGE,
    QuasarMiner,
    QuasarValidator,
    error_summary,
)

EXAMPLES = crds.CRD_DIR / "examples"
# The oldest Kubernetes the CRDs target (CEL rules GA in 1.29; `fieldPath` on them since 1.28).
KUBERNETES_VERSION = "1.30.0"

Obj = dict[str, Any]
MODELS: dict[str, type[QuasarMiner] | type[QuasarValidator]] = {
    "QuasarMiner": QuasarMiner,
    "QuasarValidator": QuasarValidator,
}
CRD_OF_KIND = {"QuasarMiner": crds.miner_crd, "QuasarValidator": crds.validator_crd}
# Fields a full example cannot set alongside others it sets: an existing claim instead of a created PVC; a
# quantized model instead of a dtype'd one.
# The TGI full example also leaves what TGI cannot take (engine.api, a yarn rope's original context) and what
# it sets through extraArgs since before the field existed (--cuda-memory-fraction); it predates
# trustRemoteCode, which the seed examples set.
ALTERNATIVES = {
    "cache.existing_claim",
    "model.quantize",
    "engine.api",
    "model.rope_scaling.original_max_position_embeddings",
    "model.gpu_memory_fraction",
    "model.trust_remote_code",
}
# The only places whose contents the API server should keep without a schema: core/v1 objects passed through.
FREE_FORM = {
    "spec.pod.affinity",
    "spec.pod.tolerations[]",
    "spec.placement.pools[].affinity",
    "spec.placement.pools[].tolerations[]",
}


def load(path: Path) -> Obj:
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(body, dict)
    return body


def root_schema(crd: Obj) -> Obj:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def walk(schema: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    """Every schema node with its dotted path (`[]` for list items, `{}` for map values)."""
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def rules(crd: Obj) -> dict[str, list[str]]:
    return {
        path: [r["rule"] for r in node["x-kubernetes-validations"]]
        for path, node in walk(root_schema(crd))
        if "x-kubernetes-validations" in node
    }


def apply_defaults(schema: Obj, value: Any) -> Any:
    """What the API server's structural defaulting does: fill in missing properties that have a default."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    return out


def schema_errors(kind: str, body: Obj) -> list[str]:
    validator = jsonschema.Draft4Validator(
        root_schema(CRD_OF_KIND[kind]()), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


def typed(schema: Obj, value: Any) -> Any:
    """`value` as the API server hands it to CEL: `type: number` values are doubles even when written as 1."""
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: typed(props.get(k, extra if isinstance(extra, dict) else {}), v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(schema.get("items", {}), v) for v in value]
    return value


def cel_errors(kind: str, body: Obj) -> list[str]:
    """Messages of the CEL rules the API server would fail `body` on (after defaulting, as it does)."""
    schema = root_schema(CRD_OF_KIND[kind]())
    obj = typed(schema, apply_defaults(schema, body))
    env = celpy.Environment()
    failed = []
    for path, node in walk(schema):
        for value in values_at(obj, path.split(".") if path else []):
            for rule in node.get("x-kubernetes-validations", []):
                program = env.program(env.compile(rule["rule"]))
                if program.evaluate({"self": json_to_cel(value)}) != BoolType(True):
                    failed.append(f"{path}: {rule['message']}")
    return failed


def values_at(value: Any, parts: list[str]) -> list[Any]:
    """Every value at a schema path (`pools[]` goes into each item of the list); none where it is absent."""
    if not parts:
        return [] if value is None else [value]
    name = parts[0].removesuffix("[]")
    child = value.get(name) if isinstance(value, dict) else None
    if parts[0].endswith("[]"):
        return [found for item in child or [] for found in values_at(item, parts[1:])]
    return values_at(child, parts[1:])


def unknown_fields(schema: Obj, value: Any, path: str = "") -> list[str]:
    """Fields the schema lacks: kubectl's default strict field validation has the server refuse them."""
    if isinstance(value, list):
        return [f for item in value for f in unknown_fields(schema.get("items", {}), item, f"{path}[]")]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props, extra = schema.get("properties", {}), schema.get("additionalProperties")
    found = []
    for name, child in value.items():
        if name in props or isinstance(extra, dict):
            found += unknown_fields(props.get(name, extra), child, f"{path}.{name}" if path else name)
        elif path != "metadata":
            found.append(f"{path}.{name}")
    return found


def api_server_errors(kind: str, body: Obj) -> list[str]:
    """Why the API server would refuse `body` (`kubectl apply`: schema, strict field validation, CEL)."""
    schema = root_schema(CRD_OF_KIND[kind]())
    return schema_errors(kind, body) + unknown_fields(schema, body) + cel_errors(kind, body)


def unset_fields(model: BaseModel, path: str = "") -> list[str]:
    """Fields a full example leaves unset, anywhere in the model tree."""
    missing = [f"{path}{name}" for name in type(model).model_fields if name not in model.model_fields_set]
    for name in model.model_fields_set:
        child = getattr(model, name)
        if isinstance(child, BaseModel):
            missing += unset_fields(child, f"{path}{name}.")
    return missing


# ------------------------------------------------------------------------------------------ generation


def test_committed_crds_are_current() -> None:
    assert crds.stale() == [], "run `python -m quasar_operator.crds --write`"


def test_check_command(tmp_path: Path) -> None:
    assert crds.main(["--check", "--dir", str(tmp_path)]) == 1
    assert crds.main(["--write", "--dir", str(tmp_path)]) == 0
    assert crds.main(["--check", "--dir", str(tmp_path)]) == 0
    assert load(tmp_path / "quasarminer.yaml") == crds.miner_crd()


@pytest.mark.parametrize("build", [crds.miner_crd, crds.validator_crd])
def test_crds_pass_kubernetes_validate(build: Any) -> None:
    kubernetes_validate.validate(build(), KUBERNETES_VERSION, strict=True)


def test_names_and_subresources() -> None:
    miner, validator = crds.miner_crd(), crds.validator_crd()
    assert miner["metadata"]["name"] == f"quasarminers.{GROUP}" == "quasarminers.quasar.ai"
    assert validator["metadata"]["name"] == "quasarvalidators.quasar.ai"
    assert miner["spec"]["names"]["shortNames"] == ["qm", "qminer"]
    assert validator["spec"]["names"]["shortNames"] == ["qv", "qvalidator"]
    for crd in (miner, validator):
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["spec"]["names"]["categories"] == ["quasar"]
        assert crd["spec"]["scope"] == "Namespaced"
        (version,) = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"]["status"] == {}
    assert miner["spec"]["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "scale" not in validator["spec"]["versions"][0]["subresources"]


def test_printer_columns_point_at_fields_that_exist() -> None:
    expected = {
        "QuasarMiner": ["Model", "Engine", "Remote Code", "Desired", "Ready", "Endpoint", "Status", "Age"],
        "QuasarValidator": ["Netuid", "Ready", "Last Weights", "Age"],
    }
    for kind, build in CRD_OF_KIND.items():
        crd = build()
        columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        assert [c["name"] for c in columns] == expected[kind]
        paths = {path for path, _ in walk(root_schema(crd))}
        for column in columns:
            field = column["jsonPath"].lstrip(".").split("[")[0]
            assert field.startswith("metadata.") or field in paths, column


# ------------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("build", [crds.miner_crd, crds.validator_crd])
def test_schemas_are_structural(build: Any) -> None:
    for path, node in walk(root_schema(build())):
        assert not {"$ref", "$defs", "const", "title", "allOf", "oneOf", "not"} & node.keys(), path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties", {}) is not False, path
        assert node.get("x-kubernetes-preserve-unknown-fields", False) == (path in FREE_FORM), path
        # anyOf may only add value checks (formats), never types or fields.
        for branch in node.get("anyOf", []):
            assert set(branch) <= {"format", "pattern", "minLength", "maxLength"}, path


@pytest.mark.parametrize("build", [crds.miner_crd, crds.validator_crd])
def test_every_field_is_described(build: Any) -> None:
    skipped = {"metadata"}
    for path, node in walk(root_schema(build())):
        if path and not path.endswith(("[]", "{}")) and path not in skipped:
            assert node.get("description"), path


def test_cel_rules() -> None:
    """Where the rules sit: a rule needing both the engine and a model field sits on spec, where both are."""
    miner = rules(crds.miner_crd())
    assert {path: len(found) for path, found in miner.items()} == {
        "spec.model": 4,
        "spec.model.ropeScaling": 1,
        "spec.engine": 1,
        "spec.exposure": 2,
        "spec.cache": 1,
        "spec": 6,
        "spec.placement": 1,
        "spec.placement.pools[].model": 2,
        "spec.autoscaling": 1,
        "spec.neuron": 1,
    }
    assert sum("self.engine.kind" in rule for rule in miner["spec"]) == 5
    # No regular expression over extraArgs: the API server prices a match at string length x pattern length.
    assert not any("matches(" in rule for found in miner.values() for rule in found)
    validator = rules(crds.validator_crd())
    assert validator.pop("spec.neuron")[0].startswith("!has(self.args) || self.args.all(a, !['--netuid'")
    assert validator == {
        "spec.data": ["!self.path.startsWith('/') && !self.path.contains('..')"],
        "spec.wandb": ["self.mode != 'online' || has(self.apiKeySecret)"],
    }


def test_printer_columns_show_the_engine_and_remote_code() -> None:
    columns = {
        c["name"]: c["jsonPath"] for c in crds.miner_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns["Engine"] == ".spec.engine.kind"
    assert columns["Remote Code"] == ".spec.model.trustRemoteCode"


def test_weights_are_objects_of_known_names() -> None:
    spec = root_schema(crds.validator_crd())["properties"]["spec"]["properties"]
    assert list(spec["bucketWeights"]["properties"]) == ["32k", "124k", "512k", "1.5m", "2m"]
    assert "narrativeqa" in spec["tasks"]["properties"]
    assert "additionalProperties" not in spec["tasks"]


def test_cel_rules_on_lists_and_strings_are_bounded() -> None:
    # The API server refuses rules whose estimated cost is unbounded: lists and strings they read need a max.
    model = root_schema(crds.miner_crd())["properties"]["spec"]["properties"]["model"]
    extra_args = model["properties"]["extraArgs"]
    assert extra_args["maxItems"]
    assert extra_args["items"]["maxLength"]


# ------------------------------------------------------------------------------------------ examples


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_the_crd_and_the_models(path: Path) -> None:
    body = load(path)
    assert body["apiVersion"] == "quasar.ai/v1alpha1"
    assert api_server_errors(body["kind"], body) == []
    parsed = MODELS[body["kind"]].model_validate(body)
    if path.stem.endswith("-full"):
        assert set(unset_fields(parsed.spec)) <= ALTERNATIVES


def test_the_examples_a_miner_per_seed_model_and_engine() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "quasarminer-full.yaml",
        "quasarminer-kimi-linear.yaml",
        "quasarminer-quasar-2m-base.yaml",
        "quasarminer-qwen3-next.yaml",
        "quasarminer.yaml",
        "quasarvalidator-full.yaml",
        "quasarvalidator.yaml",
    ]
    seeds = {
        name: QuasarMiner.model_validate(load(EXAMPLES / f"quasarminer-{name}.yaml")).spec
        for name in ("quasar-2m-base", "kimi-linear", "qwen3-next")
    }
    assert {name: (s.engine.kind, s.engine.api, s.model.max_total_tokens) for name, s in seeds.items()} == {
        "quasar-2m-base": ("vllm", "completions", 2_097_152),
        "kimi-linear": ("vllm", "chat", 1_048_576),
        "qwen3-next": ("sglang", "chat", 262_144),
    }
    assert [s.model.trust_remote_code for s in seeds.values()] == [True, True, False]
    assert all(s.model.gpus_per_replica == 4 for s in seeds.values())


@pytest.mark.parametrize("name", ["quasarminer.yaml", "quasarvalidator.yaml"])
def test_api_server_defaults_agree_with_the_models(name: str) -> None:
    body = load(EXAMPLES / name)
    model = MODELS[body["kind"]]
    defaulted = apply_defaults(root_schema(CRD_OF_KIND[body["kind"]]()), body)
    # Defaulting fills in what the models assume: parsing before or after it gives the same spec.
    assert model.model_validate(defaulted).spec == model.model_validate(body).spec
    assert set(defaulted["spec"]) > set(body["spec"])


def test_minimal_miner_defaults() -> None:
    miner = QuasarMiner.model_validate(load(EXAMPLES / "quasarminer.yaml"))
    spec = miner.spec
    assert (spec.engine.kind, spec.engine.container_image, spec.engine.container_port) == (
        "tgi",
        TGI_IMAGE,
        80,
    )
    assert (spec.engine.image, spec.engine.port) == (None, None)  # the kind's defaults, whatever the kind
    assert spec.neuron.image == NEURON_IMAGE
    assert spec.replicas == 1
    assert spec.exposure.service_type == "LoadBalancer"
    assert spec.exposure.port == 8091
    assert (spec.wallet.name, spec.wallet.hotkey) == ("default", "default")
    assert spec.subnet.network == "finney"
    assert spec.cache.size == "200Gi"


def test_minimal_validator_defaults() -> None:
    validator = QuasarValidator.model_validate(load(EXAMPLES / "quasarvalidator.yaml"))
    assert validator.spec.wandb.mode == "disabled"
    assert validator.spec.state.size == "1Gi"
    assert validator.spec.tasks is None  # the validator's own default applies


def test_quantities_written_as_numbers_become_strings() -> None:
    full = QuasarMiner.model_validate(load(EXAMPLES / "quasarminer-full.yaml"))
    assert full.spec.engine.resources.requests["cpu"] == "8"


def test_status_round_trips() -> None:
    body = load(EXAMPLES / "quasarminer.yaml")
    body["status"] = {
        "observedGeneration": 2,
        "replicas": 1,
        "readyReplicas": 1,
        "selector": "app.kubernetes.io/instance=qwen-128k",
        "endpoint": "203.0.113.10:8091",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "PodsReady",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 2,
            }
        ],
        "kopf": {"progress": {}},  # kopf's bookkeeping: the API server prunes it; the models ignore it
    }
    assert schema_errors("QuasarMiner", body) == []
    miner = QuasarMiner.model_validate(body)
    assert miner.status is not None
    assert miner.status.conditions[0].type == "Ready"
    dumped = miner.status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["readyReplicas"] == 1
    assert "kopf" not in dumped


# ------------------------------------------------------------------------------------------ bad specs


def miner_with(**spec: Any) -> Obj:
    body = load(EXAMPLES / "quasarminer.yaml")
    body["spec"] = {**body["spec"], **spec}
    return body


def errors_of(body: Obj) -> str:
    with pytest.raises(ValidationError) as caught:
        MODELS[body["kind"]].model_validate(body)
    return error_summary(caught.value)


def test_max_input_tokens_must_be_below_max_total_tokens() -> None:
    body = miner_with(model={"id": "m", "maxInputTokens": 4096, "maxTotalTokens": 4096})
    assert cel_errors("QuasarMiner", body) == [
        "spec.model: maxInputTokens must be less than maxTotalTokens (and needs maxTotalTokens set)"
    ]
    assert errors_of(body) == (
        "spec.model: Value error, "
        "maxInputTokens must be less than maxTotalTokens (and needs maxTotalTokens set)"
    )
    assert errors_of(miner_with(model={"id": "m", "maxInputTokens": 4096})).startswith("spec.model: ")


def test_missing_wallet_is_rejected_by_models_and_schema() -> None:
    body = load(EXAMPLES / "quasarminer.yaml")
    del body["spec"]["wallet"]
    assert errors_of(body) == "spec.wallet: Field required"
    assert schema_errors("QuasarMiner", body) == ["spec: 'wallet' is a required property"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"model": {"id": "m", "shards": 2}}, "spec.model: Value error, shards cannot exceed gpusPerReplica"),
        (
            {"model": {"id": "m", "extraArgs": ["--max-batch-prefill-tokens=4096", "--port=81"]}},
            "spec.model: Value error, extraArgs cannot set flags the operator derives from the spec",
        ),
        (
            {"model": {"id": "m", "ropeScaling": {"type": "ntk", "factor": 2}}},
            "spec.model.ropeScaling.type: ",
        ),
        (
            {"model": {"id": "m", "ropeScaling": {"type": "linear", "factor": 0}}},
            "spec.model.ropeScaling.factor: ",
        ),
        ({"engine": {"kind": "trt"}}, "spec.engine.kind: Input should be 'tgi', 'vllm' or 'sglang'"),
        ({"engine": {"shmSize": "1GB"}}, "spec.engine.shmSize: String should match pattern"),
        (
            {"exposure": {"nodePort": 30091}},
            "spec.exposure: Value error, nodePort needs serviceType NodePort",
        ),
        (
            {"exposure": {"serviceType": "NodePort", "nodePort": 30091}},
            "spec.exposure: Value error, serviceType NodePort needs externalIP and nodePort",
        ),
        ({"exposure": {"externalIP": "miner.example.com"}}, "spec.exposure.externalIP: Value error"),
        ({"cache": {"existingClaim": "models", "storageClassName": "fast"}}, "spec.cache: Value error"),
        (
            {"subnet": {"netuid": 7, "chainEndpoint": "https://x"}},
            "spec.subnet.chainEndpoint: String should match",
        ),
        ({"wallet": {"secretName": "Wallet"}}, "spec.wallet.secretName: String should match pattern"),
        (
            {"wallet": {"secretName": "w", "coldkey": "x"}},
            "spec.wallet.coldkey: Extra inputs are not permitted",
        ),
        ({"replica": 2}, "spec.replica: Extra inputs are not permitted"),
        (
            {"neuron": {"args": ["--miner.max_new_tokens=512", "--axon.external_port=9"]}},
            "spec.neuron: Value error, args cannot set flags the operator derives from the spec",
        ),
    ],
)
def test_bad_miner_specs(spec: Obj, expected: str) -> None:
    body = miner_with(**spec)
    assert errors_of(body).startswith(expected)
    assert api_server_errors("QuasarMiner", body)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"tasks": {"narrativeqa": 1, "nosuch": 1}}, "spec.tasks: Value error, unknown task"),
        ({"tasks": {"narrativeqa": 0}}, "spec.tasks: Value error, at least one weight must be positive"),
        ({"bucketWeights": {"4k": 1}}, "spec.bucketWeights: Value error, unknown bucket"),
        (
            {"bucketWeights": {"32k": 1}},
            "spec.bucketWeights: Value error, 32k would get more than 90% of rounds",
        ),
        ({"wandb": {"mode": "online"}}, "spec.wandb: Value error, mode online needs apiKeySecret"),
        ({"data": {"existingClaim": "d", "path": "../etc"}}, "spec.data: Value error, path must be relative"),
        ({"movingAverageAlpha": 0}, "spec.movingAverageAlpha: Input should be greater than 0"),
        (
            {"neuron": {"args": ["--neuron.state_path", "/tmp/state.json"]}},
            "spec.neuron: Value error, args cannot set flags the operator derives from the spec",
        ),
    ],
)
def test_bad_validator_specs(spec: Obj, expected: str) -> None:
    body = load(EXAMPLES / "quasarvalidator.yaml")
    body["spec"] = {**body["spec"], **spec}
    assert errors_of(body).startswith(expected)
    # CEL has no sum(): the share of one bucket and a zero total are left to the models (and to the
    # validator, which refuses them at startup).
    if "of rounds" not in expected and "positive" not in expected:
        assert api_server_errors("QuasarValidator", body)


def test_schema_rejects_what_it_can_without_cel() -> None:
    assert schema_errors("QuasarMiner", miner_with(engine={"kind": "trt"})) == [
        "spec.engine.kind: 'trt' is not one of ['tgi', 'vllm', 'sglang']"
    ]
    assert schema_errors("QuasarMiner", miner_with(exposure={"externalIP": "not-an-ip"}))
    assert schema_errors("QuasarMiner", miner_with(cache={"size": "200GB"}))


@pytest.mark.parametrize("kind", ["QuasarMiner", "QuasarValidator"])
def test_docs_name_every_spec_section(kind: str) -> None:
    docs = (crds.CRD_DIR.parent / "docs" / "crds.md").read_text(encoding="utf-8")
    section = docs.split(f"## {kind}\n", 1)[1].split("\n## ", 1)[0]
    spec = root_schema(CRD_OF_KIND[kind]())["properties"]["spec"]
    assert [name for name in spec["properties"] if f"`{name}`" not in section] == []


POOL = {"name": "h100", "maxReplicas": 4}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"placement": {"pools": [POOL, {"name": "a100", "maxReplicas": 2}]}},
            "spec: placement over several pools needs cache.accessMode ReadWriteMany",
        ),
        (
            {"placement": {"pools": [POOL, POOL]}, "cache": {"accessMode": "ReadWriteMany"}},
            "spec.placement: pool names must be unique",
        ),
        (
            {"placement": {"pools": [{**POOL, "model": {"gpusPerReplica": 1, "shards": 2}}]}},
            "spec.placement.pools[].model: shards cannot exceed gpusPerReplica",
        ),
        (
            {"placement": {"pools": [{**POOL, "model": {"extraArgs": ["--quantize=fp8"]}}]}},
            "spec.placement.pools[].model: extraArgs cannot set flags the operator derives from the spec",
        ),
        (
            {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
            "spec.autoscaling: minReplicas cannot exceed maxReplicas",
        ),
    ],
)
def test_placement_and_autoscaling_rules_agree_in_cel_and_models(spec: Obj, message: str) -> None:
    body = miner_with(**spec)
    (error,) = cel_errors("QuasarMiner", body)
    assert error.startswith(message)
    where, problem = message.split(": ", 1)
    # pydantic names the list index where CEL names the list; both carry the same message.
    assert problem in errors_of(body)
    assert errors_of(body).startswith(where.replace("[]", "[0]"))


def test_placement_and_autoscaling_accept_good_specs() -> None:
    body = miner_with(
        placement={"pools": [POOL, {"name": "a100", "maxReplicas": 2, "model": {"quantize": "fp8"}}]},
        cache={"accessMode": "ReadWriteMany"},
        autoscaling={"minReplicas": 1, "maxReplicas": 6},
    )
    assert api_server_errors("QuasarMiner", body) == []
    MODELS["QuasarMiner"].model_validate(body)


# ------------------------------------------------------------------------------------------ engines

VLLM_MODEL = {"id": "moonshotai/Kimi-Linear-48B-A3B-Instruct", "maxTotalTokens": 1_048_576}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"engine": {"kind": "vllm"}, "model": {**VLLM_MODEL, "maxInputTokens": 1000}},
            "spec: engines vllm and sglang take no model.maxInputTokens",
        ),
        (
            {"engine": {"kind": "sglang"}, "model": {**VLLM_MODEL, "maxInputTokens": 1000}},
            "spec: engines vllm and sglang take no model.maxInputTokens",
        ),
        (
            {
                "model": {
                    "id": "m",
                    "ropeScaling": {"type": "yarn", "factor": 4, "originalMaxPositionEmbeddings": 8},
                }
            },
            "spec: engine tgi cannot take model.ropeScaling.type yarn",
        ),
        (
            {"engine": {"kind": "vllm"}, "model": {**VLLM_MODEL, "quantize": "exl2"}},
            "spec: engine vllm cannot take that quantize",
        ),
        (
            {
                "engine": {"kind": "sglang"},
                "model": VLLM_MODEL,
                "placement": {"pools": [{**POOL, "model": {"quantize": "eetq"}}]},
            },
            "spec: engine sglang cannot take that quantize",
        ),
        (
            {
                "engine": {"kind": "vllm"},
                "model": VLLM_MODEL,
                "autoscaling": {"maxReplicas": 2, "metric": "queueTime"},
            },
            "spec: autoscaling.metric queueTime reads TGI's tgi_request_queue_duration",
        ),
        ({"engine": {"api": "chat"}}, "spec.engine: engine tgi takes no api"),
        (
            {"model": {"id": "m", "ropeScaling": {"type": "yarn", "factor": 4}}, "engine": {"kind": "vllm"}},
            "spec.model.ropeScaling: originalMaxPositionEmbeddings is needed by type yarn",
        ),
        (
            {"model": {"id": "m", "gpuMemoryFraction": 0.9, "extraArgs": ["--cuda-memory-fraction=0.8"]}},
            "spec.model: extraArgs cannot set the GPU memory fraction that gpuMemoryFraction sets",
        ),
        (
            {"model": {"id": "m", "extraArgs": ["--trust-remote-code"]}},
            "spec.model: extraArgs cannot set flags the operator derives from the spec",
        ),
        (
            {"engine": {"kind": "vllm"}, "model": {"id": "m", "extraArgs": ["-tp=2"]}},
            "spec.model: extraArgs cannot set flags the operator derives from the spec",
        ),
        (
            {"engine": {"kind": "vllm"}, "model": {"id": "m", "extraArgs": ["--config", "/etc/flags.yaml"]}},
            "spec.model: extraArgs cannot set flags the operator derives from the spec, "
            "nor read flags from a file",
        ),
        (
            {"engine": {"kind": "sglang"}, "model": {"id": "m", "extraArgs": ["--config=/etc/flags.yaml"]}},
            "spec.model: extraArgs cannot set flags the operator derives from the spec, "
            "nor read flags from a file",
        ),
    ],
)
def test_engine_rules_agree_in_cel_and_models(spec: Obj, message: str) -> None:
    body = miner_with(**spec)
    (error,) = cel_errors("QuasarMiner", body)
    assert error.startswith(message)
    where, problem = message.split(": ", 1)
    assert problem in errors_of(body)
    assert errors_of(body).startswith(where)


@pytest.mark.parametrize(
    "arg",
    [
        "--trust_remote_code",
        "--no-trust-remote-code",
        "--max-model=8",
        "-qawq",
        "-t",
        "--hf_overrides.rope_scaling.factor=8",
    ],
)
def test_other_spellings_of_derived_flags_pass_the_api_server_and_are_refused_by_the_models(arg: str) -> None:
    """The engines' parsers also take these for a derived flag (vLLM's `_`, argparse's prefixes, ...). The
    API server's rule cannot afford to see them (no regex over extraArgs); the models, and so the
    operator, refuse them (tests/test_engine_args.py finds them with the engines' parsers)."""
    body = miner_with(engine={"kind": "vllm"}, model={"id": "m", "extraArgs": [arg]})
    assert api_server_errors("QuasarMiner", body) == []
    assert "spec.model: Value error, extraArgs cannot set flags the operator derives" in errors_of(body)


@pytest.mark.parametrize(
    "spec",
    [
        {"engine": {"kind": "vllm", "api": "completions"}, "model": {**VLLM_MODEL, "quantize": "fp8"}},
        {"engine": {"kind": "sglang"}, "model": {**VLLM_MODEL, "quantize": "marlin"}},
        {"model": {"id": "m", "gpuMemoryFraction": 0.9, "extraArgs": ["--max-batch-prefill-tokens=4096"]}},
        # Flags that only start like managed ones are the user's.
        {
            "engine": {"kind": "vllm"},
            "model": {"id": "m", "extraArgs": ["--model-impl=vllm", "--hosts", "-pp", "--no-enforce-eager"]},
        },
        {"model": {"id": "m", "extraArgs": ["--cuda-memory-fraction=0.95"]}},  # as TGI specs always could
        {
            "engine": {"kind": "vllm"},
            "model": {
                **VLLM_MODEL,
                "ropeScaling": {"type": "yarn", "factor": 4, "originalMaxPositionEmbeddings": 262144},
            },
            "autoscaling": {"maxReplicas": 2, "metric": "batchSize"},
        },
    ],
)
def test_engine_specs_each_engine_takes(spec: Obj) -> None:
    body = miner_with(**spec)
    assert api_server_errors("QuasarMiner", body) == []
    MODELS["QuasarMiner"].model_validate(body)
