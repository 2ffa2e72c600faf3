"""One module per inference engine: what differs between TGI, vLLM and SGLang in the engine container.

Each module is pure functions of the spec (its flags) plus a few constants (command, health paths, where
the Prometheus metrics are served); `builders.miner` puts the container together the same way for all.
"""

from collections.abc import Callable
from dataclasses import dataclass

from quasar_operator.builders.engines import sglang, tgi, vllm
from quasar_operator.models import EngineKind, QuasarMinerSpec


@dataclass(frozen=True)
class Engine:
    """How one engine kind runs in the pod."""

    # The container's command; None keeps the image's entrypoint (TGI's launcher).
    command: list[str] | None
    args: Callable[[QuasarMinerSpec], list[str]]
    # Startup waits for the model; readiness then asks something cheap that never queues behind a prefill.
    startup_path: str
    readiness_path: str
    # A separate Prometheus port (TGI's); None: `/metrics` is served on the engine's own port.
    metrics_port: int | None


ENGINES: dict[EngineKind, Engine] = {
    "tgi": Engine(None, tgi.args, tgi.HEALTH_PATH, tgi.HEALTH_PATH, tgi.METRICS_PORT),
    "vllm": Engine(vllm.COMMAND, vllm.args, vllm.HEALTH_PATH, vllm.HEALTH_PATH, None),
    "sglang": Engine(sglang.COMMAND, sglang.args, sglang.STARTUP_PATH, sglang.READINESS_PATH, None),
}


def engine(spec: QuasarMinerSpec) -> Engine:
    return ENGINES[spec.engine.kind]
