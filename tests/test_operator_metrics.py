"""The operator's per-resource gauges follow the status it wrote, and go with the resource."""

from prometheus_client import REGISTRY
from quasar_operator.metrics import STATUS_GAUGES, replica_counts

# The registry is the process's: other tests' operators (in this process) set series of their own miners.
NS = "gauges-test"


def replicas(name: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "quasar_operator_miner_replicas" and (
                labels["object_namespace"],
                labels["object_name"],
            ) == (NS, name):
                found[(labels["pool"], labels["state"])] = sample.value
    return found


def ready(kind: str, name: str) -> float | None:
    return REGISTRY.get_sample_value(
        "quasar_operator_resource_ready", {"kind": kind, "object_namespace": NS, "object_name": name}
    )


H100 = {"name": "h100", "desired": 2, "replicas": 3, "ready": 1, "pending": 1}
A100 = {"name": "a100", "desired": 1, "ready": 1}
POOLS = {
    "pools": [H100, A100],
    "conditions": [{"type": "Ready", "status": "True"}],
}


def test_a_placed_miner_reports_each_pools_desired_ready_and_pending() -> None:
    assert replica_counts(POOLS) == {
        ("h100", "desired"): 2,
        ("h100", "ready"): 1,
        ("h100", "pending"): 1,
        ("a100", "desired"): 1,
        ("a100", "ready"): 1,
        ("a100", "pending"): 0,
    }
    # Without pools: the miner's totals.
    assert replica_counts({"desiredReplicas": 3, "readyReplicas": 2}) == {
        ("", "desired"): 3,
        ("", "ready"): 2,
    }
    assert replica_counts({}) == {("", "desired"): 0, ("", "ready"): 0}


def test_gauges_follow_the_status_and_go_with_the_resource() -> None:
    STATUS_GAUGES.update("QuasarMiner", NS, "m1", POOLS)
    assert replicas("m1") == {key: float(value) for key, value in replica_counts(POOLS).items()}
    assert ready("QuasarMiner", "m1") == 1

    # A pool dropped from the status loses its series; the condition turning False reads 0.
    drained = {"pools": [A100], "conditions": [{"type": "Ready", "status": "False"}]}
    STATUS_GAUGES.update("QuasarMiner", NS, "m1", drained)
    assert set(replicas("m1")) == {("a100", "desired"), ("a100", "ready"), ("a100", "pending")}
    assert ready("QuasarMiner", "m1") == 0

    STATUS_GAUGES.update("QuasarValidator", NS, "v1", {"conditions": []})
    assert ready("QuasarValidator", "v1") == 0
    assert replicas("v1") == {}

    STATUS_GAUGES.forget("QuasarMiner", NS, "m1")
    STATUS_GAUGES.forget("QuasarValidator", NS, "v1")
    STATUS_GAUGES.forget("QuasarValidator", NS, "never-seen")  # nothing to remove: no error
    assert replicas("m1") == {}
    assert ready("QuasarMiner", "m1") is None
    assert ready("QuasarValidator", "v1") is None
