"""`spec.neuron.args` against the neurons' own parsers: what the operator derives from the spec, the args
cannot change.

The oracle is the real parser of `quasar miner` and `quasar validator` (`build_parser` in neurons/): the
flags the operator builds followed by neuron.args must parse to the same value of every flag the operator
builds as the built flags alone, or the models (so the operator; for `--flag` and `--flag=value` also the
API server) refuse the spec.
"""

import argparse
import contextlib
import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from quasar_operator.builders.miner import Endpoint, miner_args
from quasar_operator.builders.validator import validator_args
from quasar_operator.crds import CRD_DIR
from quasar_operator.models import (
    MINER_NEURON_FLAGS,
    VALIDATOR_NEURON_FLAGS,
    QuasarMinerSpec,
    QuasarValidatorSpec,
)

from neurons.miner import build_parser as miner_parser
from neurons.validator import build_parser as validator_parser

Obj = dict[str, Any]

PARSERS: dict[str, Callable[[str], argparse.ArgumentParser]] = {
    "QuasarMiner": miner_parser,
    "QuasarValidator": validator_parser,
}
DERIVED = {"QuasarMiner": MINER_NEURON_FLAGS, "QuasarValidator": VALIDATOR_NEURON_FLAGS}


@functools.cache
def examples(kind: str) -> dict[str, Obj]:
    """The examples' specs without their own neuron.args: what the operator derives, and nothing else."""
    found = {}
    for path in sorted(Path(CRD_DIR / "examples").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        if body["kind"] == kind:
            neuron = {k: v for k, v in body["spec"].get("neuron", {}).items() if k != "args"}
            found[path.name] = {**body["spec"], "neuron": neuron}
    return found


def validate(kind: str, spec: Obj) -> QuasarMinerSpec | QuasarValidatorSpec:
    return (QuasarMinerSpec if kind == "QuasarMiner" else QuasarValidatorSpec).model_validate(spec)


def built(kind: str, spec: Obj) -> list[str]:
    model = validate(kind, spec)
    if isinstance(model, QuasarMinerSpec):
        return miner_args(model, Endpoint("203.0.113.5", 8091))
    return validator_args(model)


@functools.cache
def parser(kind: str) -> argparse.ArgumentParser:
    return PARSERS[kind]("quasar")


@functools.cache
def actions(kind: str) -> dict[str, argparse.Action]:
    """The neuron's flags by name (argparse keeps no public list of them)."""
    return {name: action for action in parser(kind)._actions for name in action.option_strings}


def parse(kind: str, args: list[str]) -> argparse.Namespace | None:
    """What the neuron makes of `args`; None where it would refuse them and exit."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage, printed before it exits
            namespace, unknown = parser(kind).parse_known_args(args)
    except SystemExit:  # a value of the wrong type, an ambiguous prefix
        return None
    return None if unknown else namespace


def written(kind: str, args: list[str]) -> set[str]:
    """argparse's names (dests) of the flags in `args`."""
    known = actions(kind)
    return {known[arg].dest for arg in args if arg in known}


KINDS = sorted(PARSERS)
FULL = {"QuasarMiner": "quasarminer-full.yaml", "QuasarValidator": "quasarvalidator-full.yaml"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_flag_the_operator_builds_is_one_args_cannot_set(kind: str) -> None:
    for name, spec in examples(kind).items():
        flags = {arg.split("=", 1)[0] for arg in built(kind, spec) if arg.startswith("--")}
        assert flags <= set(DERIVED[kind]), f"{name}: {sorted(flags - set(DERIVED[kind]))}"
        assert flags <= set(actions(kind)), f"{name}: the neuron has no {sorted(flags - set(actions(kind)))}"


@st.composite
def spelled(draw: st.DrawFn, kind: str) -> list[str]:
    """One of the neuron's flags as neuron.args might spell it: any prefix of it, its value next or after
    `=`."""
    name, action = draw(
        st.sampled_from([(n, a) for n, a in sorted(actions(kind).items()) if a.dest != "help"])
    )
    name = name[: draw(st.integers(min_value=3, max_value=len(name)))]
    if action.nargs == 0:
        return [name]
    if action.choices:
        value = draw(st.sampled_from(sorted(map(str, action.choices))))
    elif action.type in (int, float):
        value = draw(st.sampled_from(["7", "0.5"]))
    else:
        value = draw(st.sampled_from(["x", "/tmp/x", "qasper=1", "32k=1"]))
    return draw(st.sampled_from([[name, value], [f"{name}={value}"]]))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_args_that_change_a_flag_the_operator_builds_are_refused(kind: str, data: st.DataObject) -> None:
    spec = examples(kind)[data.draw(st.sampled_from(sorted(examples(kind))))]
    extra = [arg for flag in data.draw(st.lists(spelled(kind), min_size=1, max_size=3)) for arg in flag]
    args = built(kind, spec)
    alone, followed = parse(kind, args), parse(kind, [*args, *extra])
    assert alone is not None
    if followed is None or all(getattr(followed, d) == getattr(alone, d) for d in written(kind, args)):
        return  # the neuron would not start, or the spec's flags keep their values
    with pytest.raises(ValidationError, match="args cannot set flags the operator derives"):
        validate(kind, {**spec, "neuron": {**spec["neuron"], "args": extra}})


@pytest.mark.parametrize("kind", KINDS)
def test_the_neurons_other_flags_stay_the_users(kind: str) -> None:
    spec = examples(kind)[FULL[kind]]
    for name, action in actions(kind).items():
        if action.dest in written(kind, list(DERIVED[kind])) or action.dest == "help":
            continue
        args = [name] if action.nargs == 0 else [f"{name}=x", name, "x"]
        validate(kind, {**spec, "neuron": {**spec["neuron"], "args": args}})
