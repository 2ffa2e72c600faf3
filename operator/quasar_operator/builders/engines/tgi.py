"""TGI (text-generation-inference): its launcher's flags, as the operator has always built them."""

from quasar_operator.builders.common import number
from quasar_operator.models import QuasarMinerSpec

# TGI's Prometheus server (`--prometheus-port`, its default).
METRICS_PORT = 9000
# TGI's request body limit: a 2M-token prompt is about 8 MB of JSON, and TGI's default is 2 MB. 64 MiB, as
# `quasar engine serve` uses, leaves room for scripts that take more bytes per token than English.
PAYLOAD_LIMIT_BYTES = 64 * 1024 * 1024
# How long TGI lets running requests finish after SIGTERM (`--graceful-termination-timeout`, its default).
DRAIN_S = 90
# 200 once the model is loaded; a cheap route for readiness (TGI's /health does not queue behind a prefill).
HEALTH_PATH = "/health"


def args(spec: QuasarMinerSpec) -> list[str]:
    model = spec.model
    out = ["--model-id", model.id]
    if model.revision is not None:
        out += ["--revision", model.revision]
    shards = model.shards or model.gpus_per_replica
    if shards:
        out += ["--num-shard", str(shards)]
    if model.quantize is not None:
        out += ["--quantize", model.quantize]
    if model.dtype is not None:
        out += ["--dtype", model.dtype]
    if model.max_input_tokens is not None:
        out += ["--max-input-tokens", str(model.max_input_tokens)]
    if model.max_total_tokens is not None:
        out += ["--max-total-tokens", str(model.max_total_tokens)]
    if model.rope_scaling is not None:
        rope = model.rope_scaling
        out += ["--rope-scaling", rope.type, "--rope-factor", number(rope.factor)]
    if model.gpu_memory_fraction is not None:
        out += ["--cuda-memory-fraction", number(model.gpu_memory_fraction)]
    if model.trust_remote_code:
        out.append("--trust-remote-code")
    return [
        *out,
        "--hostname",
        "0.0.0.0",  # the kubelet probes the pod's IP, not localhost
        "--port",
        str(spec.engine.container_port),
        "--prometheus-port",
        str(METRICS_PORT),
        "--payload-limit",
        str(PAYLOAD_LIMIT_BYTES),
        "--graceful-termination-timeout",
        str(DRAIN_S),
        *model.extra_args,
    ]
