"""Pure builders: a QuasarMiner's or QuasarValidator's spec in, the Kubernetes objects it stands for out.

No API calls and no kopf here (CloudNativePG's style: one function per object); the reconciler applies what
they return. A spec that cannot be built raises `BuildError`, naming the field.
"""

from quasar_operator.builders.common import BuildError
from quasar_operator.builders.miner import (
    Endpoint,
    announced_endpoint,
    miner_cache_claim,
    miner_deployment,
    miner_endpoint,
    miner_metrics_service,
    miner_selector,
    miner_service,
)
from quasar_operator.builders.validator import validator_service, validator_statefulset

__all__ = [
    "BuildError",
    "Endpoint",
    "announced_endpoint",
    "miner_cache_claim",
    "miner_deployment",
    "miner_endpoint",
    "miner_metrics_service",
    "miner_selector",
    "miner_service",
    "validator_service",
    "validator_statefulset",
]
