"""The engine flags the operator builds, checked against each engine's own flags.

The flags each engine defines were read from its source and are written below as data: a flag table per
engine, with the type of each flag's value and, where the engine restricts it, its choices. A parser is
assembled from each table (no abbreviations, unknown flags refused) and fed the arguments the builders
produce for every example in crds/examples and for specs that set every model field. Both engines also
install here (scripts/engine_parsers/), so their own parsers check the same arguments and the tables
themselves (the end of this file).

Sources (read, not copied):

- vLLM, the 0.11 line (the release the default image pins, v0.11.2): vllm/engine/arg_utils.py at
  vllm-project/vllm@99d7eb5d6a512cfcc5a2b104f24ebf2d6cda772b (EngineArgs.add_cli_args: ModelConfig,
  ParallelConfig, CacheConfig, SchedulerConfig groups; its deprecation notes name v0.12.0 as the removal
  release), vllm/entrypoints/openai/cli_args.py at @789340fbad95a900ca3c467c9cee33b3d905fd61 (FrontendArgs:
  --host, --port; make_arg_parser: the positional model_tag of `vllm serve`), and the `--quantization`
  choices from vllm/model_executor/layers/quantization/__init__.py (QuantizationMethods) at
  @05d909563e1d1ada39a13b67e7b9a4cbca1d6a8e. Booleans from config dataclasses are BooleanOptionalAction
  (`--flag` / `--no-flag`); --max-model-len takes an integer (or 1k/1m suffixes).
- SGLang, the 0.5 line (the default image pins v0.5.5.post3): python/sglang/srt/server_args.py
  (ServerArgs.add_cli_args and QUANTIZATION_CHOICES) of sgl-project/sglang, read from a stored snapshot of
  that file from the 0.5 line (it has --enable-metrics-for-all-schedulers and the kt-* flags); the commit
  could not be identified. --model-path has the alias --model and --tensor-parallel-size the alias
  --tp-size; booleans are store_true.

TGI's flags are not checked here: its builder is unchanged, and tests/test_builders_miner.py pins the TGI
pods byte for byte to what they were.
"""

import argparse
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from quasar_operator.builders.miner import engine_args
from quasar_operator.crds import CRD_DIR
from quasar_operator.models import (
    ENGINE_QUANTIZE,
    MANAGED_ENGINE_FLAGS,
    MEMORY_FRACTION_FLAGS,
    SGLANG_IMAGE,
    VLLM_IMAGE,
    QuasarMinerSpec,
)

from scripts.engine_parsers import install as engine_parsers
from tests.tools import REPO


@dataclass(frozen=True)
class Flag:
    """One flag: its other spellings, what its value parses as, the values it takes (if restricted)."""

    value: str  # "int", "float", "str", "json", "bool" (no value), "str+" (one or more)
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()


DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

VLLM_QUANTIZATION = (
    "awq", "fp8", "ptpc_fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "bitblas", "gguf",
    "gptq_marlin_24", "gptq_marlin", "gptq_bitblas", "awq_marlin", "gptq", "compressed-tensors",
    "bitsandbytes", "experts_int8", "ipex", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "mxfp8",
    "petit_nvfp4", "cpu_awq",
)  # fmt: skip
VLLM_FLAGS: dict[str, Flag] = {
    "--host": Flag("str"),
    "--port": Flag("int"),
    "--revision": Flag("str"),
    "--tensor-parallel-size": Flag("int", ("-tp",)),
    "--pipeline-parallel-size": Flag("int", ("-pp",)),
    "--quantization": Flag("str", ("-q",), VLLM_QUANTIZATION),
    "--dtype": Flag("str", choices=DTYPES),
    "--max-model-len": Flag("int"),
    "--hf-overrides": Flag("json"),
    "--gpu-memory-utilization": Flag("float"),
    "--trust-remote-code": Flag("bool"),
    "--served-model-name": Flag("str+"),
    "--max-num-seqs": Flag("int"),
    "--max-num-batched-tokens": Flag("int"),
    "--enable-prefix-caching": Flag("bool"),
    "--enable-chunked-prefill": Flag("bool"),
    "--enforce-eager": Flag("bool"),
    "--kv-cache-dtype": Flag("str", choices=("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc")),
    "--reasoning-parser": Flag("str"),
}

SGLANG_QUANTIZATION = (
    "awq", "fp8", "gptq", "marlin", "gptq_marlin", "awq_marlin", "bitsandbytes", "gguf", "modelopt",
    "modelopt_fp8", "modelopt_fp4", "petit_nvfp4", "w8a8_int8", "w8a8_fp8", "moe_wna16", "qoq", "w4afp8",
    "mxfp4", "auto-round", "compressed-tensors",
)  # fmt: skip
SGLANG_REASONING_PARSERS = (
    "deepseek-r1", "deepseek-v3", "glm45", "gpt-oss", "kimi", "kimi_k2", "qwen3", "qwen3-thinking", "minimax",
    "minimax-append-think", "step3",
)  # fmt: skip
SGLANG_FLAGS: dict[str, Flag] = {
    "--model-path": Flag("str", ("--model",)),
    "--host": Flag("str"),
    "--port": Flag("int"),
    "--revision": Flag("str"),
    "--tensor-parallel-size": Flag("int", ("--tp-size",)),
    "--quantization": Flag("str", choices=SGLANG_QUANTIZATION),
    "--dtype": Flag("str", choices=DTYPES),
    "--context-length": Flag("int"),
    "--json-model-override-args": Flag("json"),
    "--mem-fraction-static": Flag("float"),
    "--trust-remote-code": Flag("bool"),
    "--enable-metrics": Flag("bool"),
    "--served-model-name": Flag("str"),
    "--max-running-requests": Flag("int"),
    "--chunked-prefill-size": Flag("int"),
    # Choices found by SGLang's own parser (the end of this file), which the table had missed.
    "--reasoning-parser": Flag("str", choices=SGLANG_REASONING_PARSERS),
}

FLAGS = {"vllm": VLLM_FLAGS, "sglang": SGLANG_FLAGS}
TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "json": json.loads, "str+": str}


def parser(kind: str, abbreviations: bool = False) -> argparse.ArgumentParser:
    """A parser accepting exactly the engine's flags above: spelled in full (what the operator writes), or
    with `abbreviations` also by a unique prefix, as argparse's default lets SGLang's parser (and vLLM's)."""
    out = argparse.ArgumentParser(prog=kind, allow_abbrev=abbreviations, exit_on_error=False)
    if kind == "vllm":
        out.add_argument("model_tag")  # `vllm serve MODEL`
    for name, flag in FLAGS[kind].items():
        names = [name, *flag.aliases]
        if flag.value == "bool":
            action = argparse.BooleanOptionalAction if kind == "vllm" else "store_true"
            out.add_argument(*names, action=action)
        else:
            nargs = "+" if flag.value == "str+" else None
            out.add_argument(*names, type=TYPES[flag.value], choices=flag.choices or None, nargs=nargs)
    return out


def parse(kind: str, args: list[str]) -> argparse.Namespace:
    # exit_on_error=False still exits on an unknown flag (argparse's parse_args): catch it as a failure.
    namespace, unknown = parser(kind).parse_known_args(args)
    assert unknown == [], f"{kind} has no flag {unknown}"
    return namespace


def parse_as_the_engine(kind: str, args: list[str]) -> argparse.Namespace | None:
    """What the engine's own parser would make of `args`: unique prefixes taken, and for vLLM `_` read as
    `-` in a flag's name (FlexibleArgumentParser); None where the engine would refuse them and not start."""
    if kind == "vllm":
        args = [_dashed(arg) for arg in args]
    try:
        namespace, unknown = parser(kind, abbreviations=True).parse_known_args(args)
    except (argparse.ArgumentError, SystemExit):  # an ambiguous prefix exits, whatever exit_on_error says
        return None
    return None if unknown else namespace


def _dashed(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("_", "-") + sep + value


def examples() -> dict[str, QuasarMinerSpec]:
    found = {}
    for path in sorted(Path(CRD_DIR / "examples").glob("quasarminer*.yaml")):
        spec = QuasarMinerSpec.model_validate(yaml.safe_load(path.read_text())["spec"])
        if spec.engine.kind != "tgi":
            found[path.name] = spec
    return found


def every_field(kind: str, **model: Any) -> QuasarMinerSpec:
    return QuasarMinerSpec.model_validate(
        {
            "model": {
                "id": "Qwen/Qwen3-Next-80B-A3B-Thinking",
                "revision": "0123abc",
                "maxTotalTokens": 1_010_000,
                "quantize": "fp8",
                "dtype": "bfloat16",
                "ropeScaling": {"type": "yarn", "factor": 4.0, "originalMaxPositionEmbeddings": 262_144},
                "gpuMemoryFraction": 0.85,
                "trustRemoteCode": True,
                "gpusPerReplica": 8,
                "shards": 4,
                **model,
            },
            "engine": {"kind": kind},
            "wallet": {"secretName": "w"},
            "subnet": {"netuid": 1},
        }
    )


SPECS = {
    **{f"example {name}": spec for name, spec in examples().items()},
    **{f"every field on {kind}": every_field(kind) for kind in FLAGS},
}


def test_the_seed_examples_cover_both_openai_engines() -> None:
    assert {spec.engine.kind for spec in examples().values()} == {"vllm", "sglang"}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_the_engine_parses_every_argument_built_and_reads_the_spec_back(spec: QuasarMinerSpec) -> None:
    assert_reads_back(spec, parse(spec.engine.kind, engine_args(spec)))


def assert_reads_back(spec: QuasarMinerSpec, parsed: argparse.Namespace) -> None:
    """What the engine would run with, parsed from the built arguments, is what the spec says."""
    kind, model = spec.engine.kind, spec.model
    if kind == "vllm":
        assert parsed.model_tag == model.id
        context, memory = parsed.max_model_len, parsed.gpu_memory_utilization
        rope: Any = (parsed.hf_overrides or {}).get("rope_scaling")
    else:
        assert parsed.model_path == model.id
        context, memory = parsed.context_length, parsed.mem_fraction_static
        assert parsed.enable_metrics  # the autoscaling gauges
        rope = (parsed.json_model_override_args or {}).get("rope_scaling")
    assert model.max_total_tokens is None or context == model.max_total_tokens
    assert model.gpu_memory_fraction is None or memory == model.gpu_memory_fraction
    assert parsed.tensor_parallel_size == (model.shards or model.gpus_per_replica)
    for read, written in (
        (parsed.quantization, model.quantize),
        (parsed.dtype, model.dtype),
        (parsed.revision, model.revision),
    ):
        assert written is None or read == written  # unset: the engine's default
    assert bool(parsed.trust_remote_code) == model.trust_remote_code
    assert (parsed.host, parsed.port) == ("0.0.0.0", spec.engine.container_port)
    if model.rope_scaling is None:
        assert rope is None
    else:
        assert (rope["rope_type"], rope["factor"]) == (model.rope_scaling.type, model.rope_scaling.factor)
        assert (
            rope.get("original_max_position_embeddings")
            == model.rope_scaling.original_max_position_embeddings
        )


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_every_quantize_the_crd_lets_through_is_among_the_engines_choices(kind: str) -> None:
    choices = FLAGS[kind]["--quantization"].choices
    assert set(ENGINE_QUANTIZE[kind]) <= set(choices)


def spellings(kind: str, name: str) -> set[str]:
    """Every spelling of the flag `name` in the engine's table (itself and its aliases)."""
    for canonical, flag in FLAGS[kind].items():
        names = {canonical, *flag.aliases}
        if name in names:
            return names
    raise AssertionError(f"{kind} has no flag {name}")


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_every_flag_the_operator_derives_is_refused_in_extra_args(kind: str) -> None:
    """A derived flag repeated in extraArgs, under any of its spellings, would win (argparse keeps the
    last) and make the spec lie: the CRD refuses every spelling."""
    built = engine_args(every_field(kind))
    derived = {arg.split("=", 1)[0] for arg in built if arg.startswith("-")} - {"--enable-metrics"}
    guarded = set(MANAGED_ENGINE_FLAGS) | set(MEMORY_FRACTION_FLAGS)
    for name in derived:
        assert spellings(kind, name) <= guarded, f"{kind}: {name} can be repeated through extraArgs"


def options(kind: str) -> list[tuple[str, Flag]]:
    """Every name of every flag in the engine's table, with its flag."""
    return [(name, flag) for canonical, flag in FLAGS[kind].items() for name in (canonical, *flag.aliases)]


VALUES: dict[str, st.SearchStrategy[str]] = {
    "int": st.sampled_from(["2", "3"]),
    "float": st.sampled_from(["0.5", "0.9"]),
    "str": st.sampled_from(["x", "main"]),
    "str+": st.just("x"),
    "json": st.sampled_from(["{}", '{"rope_type":"linear","factor":2.0}']),
}


@st.composite
def spelled(draw: st.DrawFn, kind: str) -> list[str]:
    """One flag of the engine's table as extraArgs might spell it: any of its names, vLLM's underscores, a
    boolean's negation, any prefix of it, its value next, after `=` or (a short flag) attached."""
    name, flag = draw(st.sampled_from(options(kind)))
    long = name.startswith("--")
    if long and kind == "vllm" and flag.value == "bool" and draw(st.booleans()):
        name = "--no-" + name[2:]
    if long and kind == "vllm" and draw(st.booleans()):
        name = "--" + name[2:].replace("-", "_")
    name = name[: draw(st.integers(min_value=3 if long else 2, max_value=len(name)))]
    if flag.value == "bool":
        return [name]
    value = draw(st.sampled_from(flag.choices) if flag.choices else VALUES[flag.value])
    form = draw(st.sampled_from(["next", "equals"] if long else ["next", "equals", "attached"]))
    return {"next": [name, value], "equals": [f"{name}={value}"], "attached": [name + value]}[form]


def derived(kind: str, namespace: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of every flag the operator derives from the spec, by argparse's name for them."""
    guarded = set(MANAGED_ENGINE_FLAGS) | set(MEMORY_FRACTION_FLAGS)
    names = [c for c, flag in FLAGS[kind].items() if {c, *flag.aliases} & guarded]
    return {name: getattr(namespace, name.lstrip("-").replace("-", "_")) for name in names}


@pytest.mark.parametrize("kind", sorted(FLAGS))
@settings(max_examples=400, deadline=None)
@given(data=st.data(), trust=st.booleans())
def test_extra_args_that_change_a_derived_flag_are_refused_in_every_spelling(
    kind: str, data: st.DataObject, trust: bool
) -> None:
    """The engine's own parser is the oracle: whenever the built arguments followed by extraArgs give a
    derived flag another value than the built arguments alone, the models (so the operator) refuse the
    spec. The API server's rule sees the documented spellings only (tests/test_crds.py)."""
    extra = [arg for flag in data.draw(st.lists(spelled(kind), min_size=1, max_size=3)) for arg in flag]
    built = engine_args(every_field(kind, trustRemoteCode=trust))
    alone, followed = parse_as_the_engine(kind, built), parse_as_the_engine(kind, [*built, *extra])
    assert alone is not None
    if followed is None or derived(kind, followed) == derived(kind, alone):
        return  # the engine would not start, or the spec's flags keep their values
    with pytest.raises(ValidationError, match="extraArgs cannot set"):
        every_field(kind, trustRemoteCode=trust, extraArgs=extra)


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_the_engines_other_flags_stay_the_users_in_extra_args(kind: str) -> None:
    """Refusing every spelling of a derived flag refuses none of the engine's other flags."""
    guarded = set(MANAGED_ENGINE_FLAGS) | set(MEMORY_FRACTION_FLAGS)
    for canonical, flag in FLAGS[kind].items():
        if {canonical, *flag.aliases} & guarded:
            continue
        for name in (canonical, *flag.aliases):
            every_field(kind, extraArgs=[name] if flag.value == "bool" else [f"{name}=x", name, "x"])


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_the_parsers_refuse_what_the_engines_refuse(kind: str) -> None:
    args = ["m"] if kind == "vllm" else ["--model-path", "m"]
    for bad in (["--no-such-flag"], ["--dtype", "fp64"], ["--quantization", "exl2"], ["--port", "eighty"]):
        with pytest.raises((argparse.ArgumentError, AssertionError)):
            parse(kind, [*args, *bad])


# ----------------------------------------------------------------------------------- the engines' own parsers
# vLLM's and SGLang's parsers themselves, at the default images' versions (scripts/engine_parsers/: installed
# by `make engine-parsers`, which `make test` runs), over the same arguments: the built ones, the flag
# tables above, and extraArgs spelled every way the parsers take them. One run of each (its import takes
# seconds).

VALUE_OF = {"int": "3", "float": "0.5", "str": "x", "str+": "x", "json": '{"rope_scaling":{"factor":2.0}}'}
KINDS = sorted(FLAGS)


def value_for(flag: Flag) -> str:
    """A value the flag takes, other than every_field's."""
    return flag.choices[0] if flag.choices else VALUE_OF[flag.value]


def extra_spellings(kind: str) -> list[list[str]]:
    """extraArgs to follow every_field(kind)'s arguments: each table flag in full, cut to prefixes, with a
    short flag's value attached, and for vLLM with `_` for `-` and negated (booleans)."""
    cases = []
    for name, flag in options(kind):
        names = {name, name[:-1], name[: max(3, len(name) // 2)]}
        if name.startswith("--") and kind == "vllm":
            names.add("--" + name[2:].replace("-", "_"))
            if flag.value == "bool":
                names.add("--no-" + name[2:])
        for spelled in sorted(names):
            if flag.value == "bool":
                cases.append([spelled])
                continue
            value = value_for(flag)
            cases += [[spelled, value], [f"{spelled}={value}"]]
            if not spelled.startswith("--"):
                cases.append([spelled + value])
    return cases


def table_cases(kind: str) -> list[list[str]]:
    """Each table flag alone, after the model."""
    model = ["m"] if kind == "vllm" else ["--model-path", "m"]
    return [
        [*model, name] if f.value == "bool" else [*model, name, value_for(f)] for name, f in options(kind)
    ]


def specs_of(kind: str) -> dict[str, QuasarMinerSpec]:
    return {name: spec for name, spec in SPECS.items() if spec.engine.kind == kind}


Parsed = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def engines_parsed() -> dict[str, Parsed]:
    """Each engine's reading of the built arguments, the table's flags and the extraArgs spellings."""
    return {kind: _parsed_by(kind) for kind in KINDS}


def _parsed_by(kind: str) -> Parsed:
    python = engine_parsers.python(kind)
    if not python.exists():
        pytest.fail(f"{kind}'s parser is not installed ({python}): run `make engine-parsers`")
    built = engine_args(every_field(kind))
    batches = {
        "specs": [engine_args(spec) for spec in specs_of(kind).values()],
        "table": table_cases(kind),
        "alone": [built],
        "spellings": [[*built, *extra] for extra in extra_spellings(kind)],
    }
    lists = [args for batch in batches.values() for args in batch]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "parsed.json"
        subprocess.run(
            [str(python), "-m", f"scripts.engine_parsers.{kind}_parse", str(out)],
            input=json.dumps(lists),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
            cwd=REPO,
        )
        results = json.loads(out.read_text(encoding="utf-8"))
    found, start = {}, 0
    for name, batch in batches.items():
        found[name], start = results[start : start + len(batch)], start + len(batch)
    return found


def namespace(flags: dict[str, Any]) -> argparse.Namespace:
    """The engine's reading as the table parsers give it: SGLang keeps JSON flags as strings."""
    override = flags.get("json_model_override_args")
    if isinstance(override, str) and override:
        flags = {**flags, "json_model_override_args": json.loads(override)}
    return argparse.Namespace(**flags)


def test_the_parsers_checked_are_the_default_images() -> None:
    assert f"vllm/vllm-openai:v{engine_parsers.PINS['vllm']}" == VLLM_IMAGE
    assert f"lmsysorg/sglang:v{engine_parsers.PINS['sglang']}" == SGLANG_IMAGE


@pytest.mark.parametrize("kind", KINDS)
def test_the_engines_own_parser_reads_every_built_spec_back(
    kind: str, engines_parsed: dict[str, Parsed]
) -> None:
    for (name, spec), result in zip(specs_of(kind).items(), engines_parsed[kind]["specs"], strict=True):
        assert "flags" in result, f"{name}: {result}"
        assert_reads_back(spec, namespace(result["flags"]))


@pytest.mark.parametrize("kind", KINDS)
def test_the_flag_table_is_the_engines(kind: str, engines_parsed: dict[str, Parsed]) -> None:
    results = zip(table_cases(kind), engines_parsed[kind]["table"], strict=True)
    assert [(args, result["error"]) for args, result in results if "error" in result] == []


@pytest.mark.parametrize("kind", KINDS)
def test_extra_args_the_engine_reads_as_a_derived_flag_are_refused(
    kind: str, engines_parsed: dict[str, Parsed]
) -> None:
    """The property test above with the engine's own parser as the oracle, over spellings made from the
    table."""
    (alone,) = engines_parsed[kind]["alone"]
    expected = derived(kind, namespace(alone["flags"]))
    refused = 0
    for extra, result in zip(extra_spellings(kind), engines_parsed[kind]["spellings"], strict=True):
        if "error" in result or derived(kind, namespace(result["flags"])) == expected:
            continue  # the engine would not start, or the spec's flags keep their values
        with pytest.raises(ValidationError, match="extraArgs cannot set"):
            every_field(kind, extraArgs=extra)
        refused += 1
    assert refused > 30  # the spellings do reach the derived flags
