"""Placement and autoscaling that hang on readiness and engine load, on the real control plane: the operator
(as the chart's ServiceAccount) places miners on hollow nodes whose kubelets run the pods' real probes, and
each pod's engine is a double served at the pod's own address (tests/e2e/pod_engines.py), so a replica is
Ready only once its engine answers, and the operator reads queue and batch gauges from the pods as it would
from TGI, vLLM and SGLang.
"""

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from scripts.k8s import cluster as k8s
from tests.e2e.conftest import Kube
from tests.e2e.pod_engines import PodEngines
from tests.e2e.test_control_plane import eventually, get
from tests.e2e.test_operator_lifecycle import (
    Operator,
    apply,
    blocker,
    miner,
    pairs,
    pool,
    pools_status,
    run_operator,
)

Obj = dict[str, Any]
# Pools of this module's own (the session's h100/a100/l4 nodes run no probes): one node each.
PROBED = (k8s.Pool("h200", 1, 4, probes=True), k8s.Pool("b200", 1, 4, probes=True))
MODEL = "Qwen/Qwen3-Next-80B-A3B-Thinking"


@pytest.fixture(scope="module")
def probed_nodes(cluster: k8s.Cluster) -> Iterator[list[str]]:
    names = cluster.add_nodes(PROBED)
    yield names
    for name in names:
        cluster.remove_node(name)


@pytest.fixture
def placing(
    cluster: k8s.Cluster,
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    crds_installed: None,
    probed_nodes: list[str],
) -> Iterator[Operator]:
    """The operator with the chart's cluster-wide list of Pods, which placement needs."""
    yield from run_operator(cluster, kube, namespace, tmp_path, "--set", "rbac.listPodsClusterWide=true")


@pytest.fixture
def engines(cluster: k8s.Cluster, namespace: str) -> Iterator[PodEngines]:
    """vLLM doubles for the miners' pods (each test may change the kind before its miner starts)."""
    with PodEngines(cluster, namespace, kind="vllm", model_id=MODEL) as running:
        yield running


def placed(
    operator: Operator, pools: list[Obj], spill_after: int = 5, engine: Obj | None = None, **spec: Any
) -> Obj:
    return miner(
        operator,
        pod={},
        model={"id": MODEL, "maxTotalTokens": 262_144},
        engine=engine or {"kind": "vllm"},
        placement={"pools": pools, "spillAfterSeconds": spill_after},
        **spec,
    )


def deployment_replicas(kube: Kube, namespace: str, name: str) -> int | None:
    # One GET: a second one could race the deletion this helper is used to wait for.
    found = kube.kubectl("get", "-n", namespace, f"deployment/{name}", "--ignore-not-found", "-o", "json")
    return int(json.loads(found.stdout)["spec"]["replicas"]) if found.stdout.strip() else None


def event_reasons(kube: Kube, namespace: str) -> set[str]:
    events = get(kube, "events", "-n", namespace, "--field-selector", "involvedObject.name=m1")["items"]
    return {event["reason"] for event in events}


def test_capacity_returns_and_replicas_move_back_without_losing_ready_ones(
    kube: Kube, placing: Operator, engines: PodEngines
) -> None:
    ns = placing.namespace
    # h200 first, full: someone else holds its GPUs, and node autoscaling (a node may come) makes the
    # operator place there anyway, so only the scheduler can say it is full.
    apply(kube, blocker(ns, "h200", 4))
    kube.kubectl("rollout", "status", "-n", ns, "deployment/blocker-h200", "--timeout=90s")
    pools = [pool("h200", 2, nodeAutoscaling=True), pool("b200", 2)]
    apply(kube, placed(placing, pools, replicas=2))
    eventually("spilled to b200", lambda: pairs(kube, ns, "m1") == {"h200": (0, 0), "b200": (2, 2)}, 120)

    engines.loading.add("h200")  # new pods there load their model for a while
    kube.kubectl("delete", "-n", ns, "deployment/blocker-h200")
    eventually("h200 reopened: replicas start there", lambda: pairs(kube, ns, "m1")["h200"] == (2, 0), 120)
    # Not ready yet: b200 keeps both of its ready replicas.
    for _ in range(10):
        status = pools_status(kube, ns, "m1")
        assert status["b200"]["ready"] + status["h200"]["ready"] >= 2, status
        assert deployment_replicas(kube, ns, "m1-miner-b200") == 2
    engines.loading.clear()
    eventually("moved back to h200", lambda: pairs(kube, ns, "m1") == {"h200": (2, 2), "b200": (0, 0)}, 120)
    assert pools_status(kube, ns, "m1")["h200"].get("fullSince") is None  # cleared
    assert {"PoolFull", "PoolReopened"} <= event_reasons(kube, ns)
    # The operator's gauges say the same as the status.
    eventually("the operator's gauges", lambda: replica_gauges(placing, "m1") == pairs(kube, ns, "m1"))
    # At rest, a placed miner's reconciles (every scale tick) write nothing: not even its status.
    version = get(kube, "-n", ns, "quasarminer/m1")["metadata"]["resourceVersion"]
    scale_ticks = scale_ticks_of(placing)
    eventually("three scale reconciles", lambda: scale_ticks_of(placing) >= scale_ticks + 3)
    assert get(kube, "-n", ns, "quasarminer/m1")["metadata"]["resourceVersion"] == version


def scale_ticks_of(operator: Operator) -> int:
    return operator.log.read_text(encoding="utf-8", errors="replace").count("Timer 'scale' succeeded")


def samples(url: str) -> list[Sample]:
    """Every sample of the /metrics page at `url` (on loopback: the operator's, a pod's engine)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        page = answer.read().decode()
    return [sample for family in text_string_to_metric_families(page) for sample in family.samples]


def replica_gauges(operator: Operator, name: str) -> dict[str, tuple[int, int]]:
    """Each pool's (desired, ready) in the operator's `quasar_operator_miner_replicas`."""
    found: dict[str, dict[str, int]] = {}
    for sample in samples(f"http://127.0.0.1:{operator.metrics_port}"):
        if sample.name == "quasar_operator_miner_replicas" and sample.labels["object_name"] == name:
            found.setdefault(sample.labels["pool"], {})[sample.labels["state"]] = int(sample.value)
    return {pool: (states["desired"], states["ready"]) for pool, states in found.items()}


def test_a_pool_removed_from_the_spec_drains_after_its_replacement_is_ready(
    kube: Kube, placing: Operator, engines: PodEngines
) -> None:
    ns = placing.namespace
    apply(kube, placed(placing, [pool("h200", 2), pool("b200", 2)], replicas=2))
    eventually("two on h200", lambda: pairs(kube, ns, "m1").get("h200") == (2, 2), 120)
    engines.loading.add("b200")
    apply(kube, placed(placing, [pool("b200", 2)], replicas=2))
    eventually("replacements starting on b200", lambda: pairs(kube, ns, "m1").get("b200") == (2, 0), 120)
    assert deployment_replicas(kube, ns, "m1-miner-h200") == 2  # still serving
    engines.loading.clear()
    eventually(
        "h200 drained and deleted", lambda: deployment_replicas(kube, ns, "m1-miner-h200") is None, 120
    )
    assert pools_status(kube, ns, "m1")["b200"]["ready"] == 2


# The gauges each engine exports (what the operator must read, by the engine's own name).
GAUGES = {
    ("tgi", "queueSize"): "tgi_queue_size",
    ("vllm", "queueSize"): "vllm:num_requests_waiting",
    ("vllm", "batchSize"): "vllm:num_requests_running",
    ("sglang", "queueSize"): "sglang:num_queue_reqs",
    ("sglang", "batchSize"): "sglang:num_running_reqs",
}


def exported(engines: PodEngines, name: str) -> float | None:
    """What the pods' engines export under `name` now, read from one of them over HTTP (the oracle)."""
    for engine in list(engines.engines.values()):
        return next((sample.value for sample in samples(engine.url) if sample.name == name), None)
    return None


@pytest.mark.parametrize(("kind", "metric"), list(GAUGES), ids=lambda v: str(v))
def test_load_on_the_engines_own_gauge_scales_up_then_down(
    kube: Kube, placing: Operator, engines: PodEngines, kind: str, metric: str
) -> None:
    ns = placing.namespace
    engines.kind = kind
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "metric": metric,
        "target": 2,
        "scaleDownStabilizationSeconds": 0,
        "scaleDownPeriodSeconds": 0,
        "scaleDownStep": 4,
    }
    # TGI's own port is 80; the pod's address is served by this process, which need not bind below 1024.
    engine = {"kind": kind, **({"port": 8080} if kind == "tgi" else {})}
    apply(kube, placed(placing, [pool("h200", 4)], replicas=1, autoscaling=autoscaling, engine=engine))
    eventually("one replica at rest", lambda: pairs(kube, ns, "m1") == {"h200": (1, 1)}, 120)
    engines.waiting = 10  # ten requests waiting per replica, the batch (4) full: both over the target of 2
    eventually(
        "scaled to maxReplicas on the engine's gauge", lambda: pairs(kube, ns, "m1") == {"h200": (4, 4)}, 120
    )
    body = get(kube, "-n", ns, "quasarminer/m1")
    assert body["status"]["desiredReplicas"] == 4
    assert body["status"]["lastScale"]["replicasTo"] == 4
    assert metric in body["status"]["lastScale"]["reason"]
    assert body["spec"]["replicas"] == 1  # decided in the status, never written to the spec
    # The value the operator reads is what the engines export under their own name.
    expected = exported(engines, GAUGES[kind, metric])
    assert expected is not None
    eventually(
        f"status.metricValue == {GAUGES[kind, metric]} ({expected})",
        lambda: get(kube, "-n", ns, "quasarminer/m1")["status"].get("metricValue") == expected,
    )
    assert "Scaled" in event_reasons(kube, ns)
    engines.waiting = 0
    eventually("scaled back down at rest", lambda: pairs(kube, ns, "m1") == {"h200": (1, 1)}, 120)
