"""CustomResourceDefinitions generated from the pydantic models in `quasar_operator.models`.

`python -m quasar_operator.crds --write` regenerates crds/*.yaml; `--check` fails when they are stale (the
tests run the same comparison). Everything here is a pure function of the models.

Pydantic writes JSON Schema; the API server wants a *structural* OpenAPI v3 schema. The translation inlines
`$ref`s, turns `Optional[X]` (`anyOf: [X, null]`) into a non-required X, turns `const` into a one-value
`enum`, and drops what Kubernetes rejects or ignores (`title`, `additionalProperties: false`,
`default: null`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from quasar_operator.models import (
    CATEGORY,
    GROUP,
    VERSION,
    MinerStatus,
    QuasarMinerSpec,
    QuasarValidatorSpec,
    ValidatorStatus,
)

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
HEADER = (
    "# Generated from operator/quasar_operator/models.py by `python -m quasar_operator.crds --write`.\n"
    "# Do not edit: change the models and regenerate.\n"
)

Schema = dict[str, Any]

# Keys pydantic writes that a CRD schema does not allow (or that only add noise to `kubectl explain`).
_DROPPED = {"title", "$defs"}


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The model's JSON Schema (camelCase names) as a structural OpenAPI v3 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def _structural(node: Schema, defs: Mapping[str, Schema]) -> Schema:
    node = dict(node)
    if "$ref" in node:
        # Siblings of a $ref (the field's description and default) win over the referenced model's own.
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    any_of = node.get("anyOf")
    if any_of is not None and {"type": "null"} in any_of:
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        # Only Optional[X] is expected here; a real union would need a schema Kubernetes cannot express.
        if len(rest) != 1:
            raise ValueError(f"unsupported union in schema: {any_of}")
        del node["anyOf"]
        node = {**_structural(rest[0], defs), **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # JSON Schema 2020-12 (pydantic) gives the bound; OpenAPI v3 (Kubernetes) a flag on minimum/maximum.
        if bound in node and not isinstance(node[bound], bool):
            node[limit] = node.pop(bound)
            node[bound] = True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "default" in node and node["default"] is None:
        del node["default"]
    out: Schema = {}
    for key, value in sorted(node.items(), key=lambda item: _rank(item[0])):
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "x-kubernetes-validations":
            # pydantic sorts the keys of json_schema_extra; put each rule before its message again.
            out[key] = [
                dict(sorted(rule.items(), key=lambda item: _RULE_ORDER.index(item[0]))) for rule in value
            ]
        else:
            out[key] = value
    return out


# Schema keys in reading order: what a field is, then its constraints, then what it contains, then rules.
_ORDER = ("type", "description", "default", "format", "enum")
_LAST = ("properties", "additionalProperties", "items", "required")


_RULE_ORDER = ("rule", "message", "fieldPath", "reason", "messageExpression", "optionalOldSelf")


def _rank(key: str) -> tuple[int, int, str]:
    if key in _ORDER:
        return (0, _ORDER.index(key), "")
    if key in _LAST:
        return (2, _LAST.index(key), "")
    if key.startswith("x-kubernetes-"):
        return (3, 0, key)
    return (1, 0, key)


def _names(kind: str, short_names: list[str]) -> Schema:
    return {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": f"{kind.lower()}s",
        "singular": kind.lower(),
        "shortNames": short_names,
        "categories": [CATEGORY],
    }


def _column(name: str, json_path: str, type_: str, description: str, priority: int = 0) -> Schema:
    column: Schema = {"name": name, "type": type_, "jsonPath": json_path, "description": description}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", ".metadata.creationTimestamp", "date", "Time since creation.")
_READY_CONDITION = '.status.conditions[?(@.type=="Ready")].status'


def _crd(
    kind: str,
    short_names: list[str],
    description: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    subresources: Schema,
    columns: list[Schema],
) -> Schema:
    names = _names(kind, short_names)
    root: Schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec),
            "status": openapi_schema(status),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names['plural']}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "quasar"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": names,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def miner_crd() -> Schema:
    """The QuasarMiner CRD, with a scale subresource so an HPA or KEDA can drive spec.replicas."""
    return _crd(
        "QuasarMiner",
        ["qm", "qminer"],
        "A Bittensor miner on the QUASAR subnet: engine pods serving a long-context model, each with the "
        "miner neuron beside it.",
        QuasarMinerSpec,
        MinerStatus,
        {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        [
            _column("Model", ".spec.model.id", "string", "Model the engine serves."),
            _column("Engine", ".spec.engine.kind", "string", "Engine kind: tgi, vllm or sglang."),
            _column(
                "Remote Code",
                ".spec.model.trustRemoteCode",
                "boolean",
                "Whether the engine runs the model repository's own Python code (trustRemoteCode).",
            ),
            _column(
                "Desired",
                ".status.desiredReplicas",
                "integer",
                "Pods wanted: spec.replicas or the autoscaler's.",
            ),
            _column("Ready", ".status.readyReplicas", "integer", "Ready pods."),
            _column("Endpoint", ".status.endpoint", "string", "Address announced on chain."),
            _column("Status", _READY_CONDITION, "string", "The Ready condition.", priority=1),
            _AGE,
        ],
    )


def validator_crd() -> Schema:
    """The QuasarValidator CRD."""
    return _crd(
        "QuasarValidator",
        ["qv", "qvalidator"],
        "A Bittensor validator on the QUASAR subnet: scores miners on long-context tasks and sets weights.",
        QuasarValidatorSpec,
        ValidatorStatus,
        {"status": {}},
        [
            _column("Netuid", ".spec.subnet.netuid", "integer", "Subnet validated."),
            _column("Ready", _READY_CONDITION, "string", "The Ready condition."),
            _column("Last Weights", ".status.lastWeightsTime", "date", "Time since weights were last set."),
            _AGE,
        ],
    )


CRDS: dict[str, Callable[[], Schema]] = {
    "quasarminer.yaml": miner_crd,
    "quasarvalidator.yaml": validator_crd,
}


class _Dumper(yaml.SafeDumper):
    # Repeated sub-schemas (resources) are written out in full: anchors and aliases would puzzle readers and
    # tools that compare CRDs as text.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(crd: Schema) -> str:
    """The CRD as the committed YAML file (header, keys in the order built)."""
    return HEADER + yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def stale(directory: Path = CRD_DIR) -> list[str]:
    """Names of the CRD files in `directory` that differ from what the models generate."""
    return [
        name
        for name, build in CRDS.items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != render(build())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quasar_operator.crds", description="Generate the QUASAR CRDs from the models."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="fail when the committed CRDs are stale")
    action.add_argument("--write", action="store_true", help="regenerate the CRD files")
    parser.add_argument("--dir", type=Path, default=CRD_DIR, help=f"CRD folder (default: {CRD_DIR})")
    args = parser.parse_args(argv)
    if args.write:
        args.dir.mkdir(parents=True, exist_ok=True)
        for name, build in CRDS.items():
            (args.dir / name).write_text(render(build()), encoding="utf-8")
        return 0
    outdated = stale(args.dir)
    for name in outdated:
        print(f"{args.dir / name} is stale: run `python -m quasar_operator.crds --write`", file=sys.stderr)
    return 1 if outdated else 0


if __name__ == "__main__":
    sys.exit(main())
