"""Malformed QuasarMiners and QuasarValidators, generated from the CRDs' own schemas.

Every field the schema describes (objects, lists' items and maps' values included, from `spec` and `status`
down) is replaced, one at a time, by a value of each JSON type the schema does not allow for it; every
object also gets a field it does not know. The schema is the oracle: what it says a field's type is, not
what the operator happens to accept. A field the schema leaves optional may be null (the API server prunes
it, as absent); one that is required or has a default may not.

Each case carries the path the operator must name (`spec.placement.pools[0].maxReplicas`), written as
Kubernetes writes field paths.
"""

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from quasar_operator import crds

Obj = dict[str, Any]
Path = tuple[str | int, ...]

# One value of each JSON type. "number" is a fraction: a whole number is also an integer.
SAMPLES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "integer": 7,
    "number": 0.5,
    "string": "on",
    "array": ["on"],
    "object": {"on": True},
}
UNKNOWN_FIELD = "noSuchField"


@dataclass(frozen=True)
class Case:
    """One malformed object and the field its condition and Event must name."""

    name: str
    body: Obj
    field: str


def field_path(path: Path) -> str:
    """`("spec", "pools", 0, "name")` as `spec.pools[0].name`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def allowed_types(node: Obj, *, nullable: bool) -> set[str]:
    if node.get("x-kubernetes-int-or-string"):
        types = {"integer", "string"}
    elif "type" in node:
        # A whole number is a valid "number": JSON does not tell 2 from 2.0.
        types = {node["type"], "integer"} if node["type"] == "number" else {node["type"]}
    else:
        types = set(SAMPLES)  # untyped (free-form)
    return types | {"null"} if nullable else types


def fields(node: Obj, path: Path, *, nullable: bool) -> Iterator[tuple[Path, Obj, bool]]:
    """(path, schema, nullable) of `node` and of everything under it."""
    yield path, node, nullable
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return  # free-form (affinity, tolerations): the API server checks them in the pods
    required = set(node.get("required", []))
    for name, child in (node.get("properties") or {}).items():
        optional = name not in required and "default" not in child
        yield from fields(child, (*path, name), nullable=optional)
    if isinstance(node.get("items"), dict):
        yield from fields(node["items"], (*path, 0), nullable=False)
    if isinstance(node.get("additionalProperties"), dict):
        yield from fields(node["additionalProperties"], (*path, "k"), nullable=False)


def put(body: Obj, path: Path, value: Any) -> None:
    """Set `value` at `path`, creating the objects and lists on the way that the base lacks."""
    target: Any = body
    for step, key in itertools.pairwise(path):
        empty: Any = [] if isinstance(key, int) else {}
        if isinstance(step, int):
            while len(target) <= step:
                target.append(empty)
        if not isinstance(target[step] if isinstance(step, int) else target.get(step), type(empty)):
            target[step] = empty
        target = target[step]
    last = path[-1]
    if isinstance(last, int):
        while len(target) <= last:
            target.append(None)
    target[last] = value


def cases(kind: str, base: Obj, status: Obj) -> list[Case]:
    """Every malformed variant of `base` (a valid object of `kind`, given a valid `status`)."""
    crd = crds.miner_crd() if kind == "QuasarMiner" else crds.validator_crd()
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    valid = {**copy.deepcopy(base), "status": copy.deepcopy(status)}
    out: list[Case] = []
    for top in ("spec", "status"):
        for path, node, nullable in fields(root["properties"][top], (top,), nullable=top == "status"):
            wrong = [t for t in SAMPLES if t not in allowed_types(node, nullable=nullable)]
            for json_type in wrong:
                body = copy.deepcopy(valid)
                put(body, path, copy.deepcopy(SAMPLES[json_type]))
                out.append(Case(f"{field_path(path)}={json_type}", body, field_path(path)))
            if node.get("type") == "object" and "properties" in node:
                body = copy.deepcopy(valid)
                put(body, (*path, UNKNOWN_FIELD), "on")
                name = field_path((*path, UNKNOWN_FIELD))
                if top == "spec":  # a status may carry fields a newer operator wrote: they are ignored
                    out.append(Case(f"{name}=unknown", body, name))
    return out


def depth(case: Case) -> int:
    """How deep the case's field lies: 0 for `spec` or `status`, 1 for `spec.replicas`."""
    return case.field.count(".") + case.field.count("[")


def _example(name: str, namespace: str) -> Obj:
    body: Obj = yaml.safe_load((crds.CRD_DIR / "examples" / f"{name}.yaml").read_text(encoding="utf-8"))
    body["metadata"] = {"namespace": namespace}
    return body


def all_cases(namespace: str = "miners") -> list[Case]:
    """Every malformed QuasarMiner and QuasarValidator: a bad spec on the full examples (every field set, so
    every path exists), a bad status on the small ones (a valid spec, cheap to reconcile)."""
    status = {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ReplicasNotReady",
                "message": "0/1 replicas ready",
            }
        ],
    }
    out: list[Case] = []
    for kind, example in (("QuasarMiner", "quasarminer"), ("QuasarValidator", "quasarvalidator")):
        full, small = _example(f"{example}-full", namespace), _example(example, namespace)
        out += [c for c in cases(kind, full, status) if c.field.startswith("spec")]
        out += [c for c in cases(kind, small, status) if c.field.startswith("status")]
    return out
