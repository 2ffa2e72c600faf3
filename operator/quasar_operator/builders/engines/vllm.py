"""vLLM's OpenAI server (`vllm serve`): flags from vllm/engine/arg_utils.py and
vllm/entrypoints/openai/cli_args.py (tests/test_engine_args.py checks them against those files' flags)."""

import json

from quasar_operator.builders.common import number, rope_scaling_config
from quasar_operator.models import QuasarMinerSpec

# The image's entrypoint is `vllm serve` too; spelled out so the pod says what runs.
COMMAND = ["vllm", "serve"]
# 200 while the engine core lives, 503 once it died; vLLM only listens once the model is loaded. It runs no
# generation, so it is cheap enough for readiness under load.
HEALTH_PATH = "/health"


def args(spec: QuasarMinerSpec) -> list[str]:
    model = spec.model
    # The model is positional: `vllm serve` deprecates --model. The served name defaults to it, which is what
    # the miner sends as `model` (--miner.model_name).
    out = [model.id, "--host", "0.0.0.0", "--port", str(spec.engine.container_port)]
    if model.revision is not None:
        out += ["--revision", model.revision]
    shards = model.shards or model.gpus_per_replica
    if shards:
        out += ["--tensor-parallel-size", str(shards)]
    if model.quantize is not None:
        out += ["--quantization", model.quantize]
    if model.dtype is not None:
        out += ["--dtype", model.dtype]
    if model.max_total_tokens is not None:
        out += ["--max-model-len", str(model.max_total_tokens)]
    if model.rope_scaling is not None:
        # Into the model's config, as SGLang's --json-model-override-args: vLLM 0.11 has no --rope-scaling
        # (its real parser refuses the flag; tests/test_engine_args.py).
        overrides = {"rope_scaling": rope_scaling_config(model.rope_scaling)}
        out += ["--hf-overrides", json.dumps(overrides, separators=(",", ":"))]
    if model.gpu_memory_fraction is not None:
        out += ["--gpu-memory-utilization", number(model.gpu_memory_fraction)]
    if model.trust_remote_code:
        out.append("--trust-remote-code")
    return [*out, *model.extra_args]
