"""SGLang's server (`python3 -m sglang.launch_server`): flags from python/sglang/srt/server_args.py
(tests/test_engine_args.py checks them against that file's flags)."""

import json

from quasar_operator.builders.common import number, rope_scaling_config
from quasar_operator.models import QuasarMinerSpec

# The image has no entrypoint of its own.
COMMAND = ["python3", "-m", "sglang.launch_server"]
# /health runs a one-token generation (503 until the warm-up finished): right for startup, wrong for
# readiness under load, where it would queue behind a long prefill. /v1/models answers from memory.
STARTUP_PATH = "/health"
READINESS_PATH = "/v1/models"


def args(spec: QuasarMinerSpec) -> list[str]:
    model = spec.model
    out = ["--model-path", model.id, "--host", "0.0.0.0", "--port", str(spec.engine.container_port)]
    if model.revision is not None:
        out += ["--revision", model.revision]
    shards = model.shards or model.gpus_per_replica
    if shards:
        out += ["--tp-size", str(shards)]
    if model.quantize is not None:
        out += ["--quantization", model.quantize]
    if model.dtype is not None:
        out += ["--dtype", model.dtype]
    if model.max_total_tokens is not None:
        out += ["--context-length", str(model.max_total_tokens)]
    if model.rope_scaling is not None:
        overrides = {"rope_scaling": rope_scaling_config(model.rope_scaling)}
        out += ["--json-model-override-args", json.dumps(overrides, separators=(",", ":"))]
    if model.gpu_memory_fraction is not None:
        out += ["--mem-fraction-static", number(model.gpu_memory_fraction)]
    if model.trust_remote_code:
        out.append("--trust-remote-code")
    # Prometheus metrics (the autoscaling signals) are off unless asked for; served on the same port.
    return [*out, "--enable-metrics", *model.extra_args]
