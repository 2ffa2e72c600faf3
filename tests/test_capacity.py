"""What a GPU node pool has room for and where a miner's pods stand, from Node and Pod objects as the API
server returns them: the scheduler's node checks (nodeSelector, required node affinity, taints, Ready,
cordoned), free GPUs node by node, and the pod counts placement reads."""

import datetime
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quasar_operator.capacity import (
    PodCounts,
    PoolScheduling,
    count_pods,
    free_replicas,
    node_fits,
    place_waiting,
    pod_gpus,
    pod_ready,
    pod_scheduling,
    used_gpus,
    waiting,
)

Obj = dict[str, Any]
GPU = "nvidia.com/gpu"
NOW = 1_800_000_000.0


def node(
    name: str = "gpu-1",
    labels: dict[str, str] | None = None,
    gpus: int | str = 8,
    *,
    taints: Sequence[Obj] = (),
    ready: str | None = "True",
    cordoned: bool = False,
    resource: str = GPU,
) -> Obj:
    spec: Obj = {"taints": list(taints)}
    if cordoned:
        spec["unschedulable"] = True
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"pool": "a100", **(labels or {})}},
        "spec": spec,
        "status": {"allocatable": {"cpu": "96", resource: str(gpus)}, "conditions": conditions},
    }


def shape(
    selector: dict[str, str] | None = None,
    affinity: Obj | None = None,
    tolerations: Sequence[Obj] = (),
    gpus: int = 1,
    resource: str = GPU,
) -> PoolScheduling:
    return PoolScheduling(
        node_selector={"pool": "a100"} if selector is None else selector,
        affinity=affinity,
        tolerations=list(tolerations),
        gpu_resource=resource,
        gpus_per_replica=gpus,
    )


def required(*terms: Obj) -> Obj:
    return {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}
    }


def term(*expressions: Obj) -> Obj:
    return {"matchExpressions": list(expressions)}


def expr(key: str, operator: str, *values: str) -> Obj:
    return (
        {"key": key, "operator": operator, "values": list(values)}
        if values
        else {"key": key, "operator": operator}
    )


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    on: str | None = "gpu-1",
    gpus: int | None = 1,
    *,
    phase: str = "Running",
    ready: bool = True,
    unschedulable_since: float | None = None,
    resource: str = GPU,
) -> Obj:
    resources: Obj = {"requests": {"cpu": "4"}, "limits": {"cpu": "8"}}
    if gpus is not None:
        resources["requests"][resource] = str(gpus)
        resources["limits"][resource] = str(gpus)
    conditions: list[Obj] = []
    if on is not None:
        conditions += [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ]
    elif unschedulable_since is not None:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": iso(unschedulable_since),
            }
        )
    spec: Obj = {"containers": [{"name": "engine", "resources": resources}, {"name": "miner"}]}
    if on is not None:
        spec["nodeName"] = on
    return {
        "metadata": {"name": "miner-0"},
        "spec": spec,
        "status": {"phase": phase, "conditions": conditions},
    }


# --- which nodes are the pool's ------------------------------------------------------------------------


def test_node_selector_must_match_every_label() -> None:
    assert node_fits(node(labels={"zone": "a"}), shape({"pool": "a100", "zone": "a"}))
    assert node_fits(node(labels={"zone": "a"}), shape({}))
    assert not node_fits(node(labels={"zone": "b"}), shape({"pool": "a100", "zone": "a"}))
    assert not node_fits(node(), shape({"pool": "a100", "zone": "a"}))  # the label is missing
    assert not node_fits(node(), shape({"pool": "h100"}))


@pytest.mark.parametrize(
    ("expression", "fits"),
    [
        (expr("zone", "In", "a", "b"), True),
        (expr("zone", "In", "c"), False),
        (expr("missing", "In", "a"), False),
        (expr("zone", "NotIn", "c"), True),
        (expr("zone", "NotIn", "a"), False),
        (expr("missing", "NotIn", "a"), True),  # NotIn matches a node without the label
        (expr("zone", "Exists"), True),
        (expr("missing", "Exists"), False),
        (expr("zone", "DoesNotExist"), False),
        (expr("missing", "DoesNotExist"), True),
        (expr("gpus", "Gt", "4"), True),
        (expr("gpus", "Gt", "8"), False),
        (expr("gpus", "Lt", "9"), True),
        (expr("gpus", "Lt", "8"), False),
        (expr("missing", "Gt", "1"), False),
        (expr("zone", "Gt", "1"), False),  # not a number
        (expr("gpus", "Gt", "many"), False),
        (expr("zone", "Like", "a"), False),  # an operator the scheduler does not know
    ],
)
def test_required_node_affinity_operators(expression: Obj, fits: bool) -> None:
    labeled = node(labels={"zone": "a", "gpus": "8"})
    assert node_fits(labeled, shape(affinity=required(term(expression)))) is fits


def test_terms_are_ored_and_their_expressions_anded() -> None:
    labeled = node(labels={"zone": "a", "gpus": "8"})
    both = term(expr("zone", "In", "a"), expr("gpus", "Gt", "4"))
    one = term(expr("zone", "In", "a"), expr("gpus", "Gt", "16"))
    other = term(expr("zone", "In", "b"))
    assert node_fits(labeled, shape(affinity=required(both)))
    assert not node_fits(labeled, shape(affinity=required(one)))
    assert not node_fits(labeled, shape(affinity=required(one, other)))
    assert node_fits(labeled, shape(affinity=required(other, both)))


def test_only_required_node_affinity_decides() -> None:
    preferred = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": term(expr("zone", "In", "b"))}
            ]
        },
        "podAntiAffinity": {},
    }
    assert node_fits(node(labels={"zone": "a"}), shape(affinity=preferred))
    assert node_fits(node(), shape(affinity={}))
    assert node_fits(node(), shape(affinity={"nodeAffinity": {}}))


def test_a_match_fields_term_selects_the_named_node_only() -> None:
    by_name = required({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]})
    assert node_fits(node("gpu-1"), shape(affinity=by_name))
    assert not node_fits(node("gpu-2"), shape(affinity=by_name))


def test_an_empty_node_selector_term_matches_nothing() -> None:
    assert not node_fits(node(), shape(affinity=required({})))


NO_SCHEDULE = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("taint", "tolerations", "fits"),
    [
        (NO_SCHEDULE, [], False),
        (NO_SCHEDULE, [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}], True),
        (NO_SCHEDULE, [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}], True),
        (NO_SCHEDULE, [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "absent"}], False),
        (NO_SCHEDULE, [{"key": "nvidia.com/gpu", "operator": "Exists"}], True),
        (NO_SCHEDULE, [{"operator": "Exists"}], True),  # tolerates everything
        (NO_SCHEDULE, [{"key": "other", "operator": "Exists"}], False),
        (NO_SCHEDULE, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}], False),
        ({"key": "spot", "effect": "NoSchedule"}, [{"key": "spot", "operator": "Exists"}], True),
        ({"key": "spot", "effect": "NoSchedule"}, [{"key": "spot", "operator": "Equal"}], True),  # both empty
        ({"key": "spot", "effect": "NoExecute"}, [], False),
        (
            {"key": "spot", "effect": "NoExecute"},
            [{"key": "spot", "operator": "Exists", "effect": "NoExecute"}],
            True,
        ),
        ({"key": "spot", "effect": "PreferNoSchedule"}, [], True),  # a preference, not a rule
    ],
)
def test_taints_and_tolerations(taint: Obj, tolerations: list[Obj], fits: bool) -> None:
    assert node_fits(node(taints=[taint]), shape(tolerations=tolerations)) is fits


def test_every_blocking_taint_must_be_tolerated() -> None:
    taints = [NO_SCHEDULE, {"key": "spot", "value": "true", "effect": "NoSchedule"}]
    one = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert not node_fits(node(taints=taints), shape(tolerations=one))
    assert node_fits(node(taints=taints), shape(tolerations=[*one, {"key": "spot", "value": "true"}]))


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (node(cordoned=True), "cordoned"),
        (node(ready="False"), "NotReady"),
        (node(ready="Unknown"), "unreachable"),
        (node(ready=None), "no Ready condition"),
    ],
)
def test_nodes_the_scheduler_skips(broken: Obj, why: str) -> None:
    assert not node_fits(broken, shape()), why


def test_a_bare_node_object_is_read_without_error() -> None:
    assert not node_fits({}, shape({}))
    assert free_replicas([{}], {}, shape({})) == 0


# --- free GPUs -----------------------------------------------------------------------------------------


def test_free_replicas_count_node_by_node() -> None:
    nodes = [node("gpu-1"), node("gpu-2")]
    three = shape(gpus=3)
    assert free_replicas(nodes, {}, three) == 4  # 8 // 3 on each node: 16 // 3 would say 5
    assert free_replicas(nodes, {"gpu-1": 3}, three) == 3  # 5 left on gpu-1: one more
    assert free_replicas(nodes, {"gpu-1": 8, "gpu-2": 2}, three) == 2
    assert free_replicas(nodes, {"gpu-1": 9}, three) == 2  # over-committed: none there, not fewer
    assert free_replicas(nodes, {"elsewhere": 8}, three) == 4
    assert free_replicas(nodes, {}, shape(gpus=8)) == 2
    assert free_replicas(nodes, {}, shape(gpus=9)) == 0


def test_free_replicas_count_only_the_pools_nodes_and_gpus() -> None:
    nodes = [
        node("gpu-1"),
        node("h100", labels={"pool": "h100"}),
        node("cordoned", cordoned=True),
        node("mig", gpus=7, resource="nvidia.com/mig-3g.40gb"),
        node("cpu", gpus=0),
    ]
    assert free_replicas(nodes, {}, shape(gpus=2)) == 4
    assert free_replicas(nodes, {}, shape(gpus=1, resource="nvidia.com/mig-3g.40gb")) == 7


def test_a_replica_needs_at_least_one_gpu() -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        free_replicas([node()], {}, shape(gpus=0))


def test_pods_use_gpus_on_their_node_until_they_finish() -> None:
    pods = [
        pod("gpu-1", 2),
        pod("gpu-1", 1, phase="Pending", ready=False),  # bound, still pulling its image: it holds the GPU
        pod("gpu-2", 4),
        pod("gpu-2", 4, phase="Succeeded", ready=False),
        pod("gpu-2", 4, phase="Failed", ready=False),
        pod(None, 8, phase="Pending", ready=False, unschedulable_since=NOW),  # not bound: uses nothing
        pod("gpu-3", None),  # no GPU
        pod("gpu-3", 2, resource="nvidia.com/mig-3g.40gb"),
    ]
    assert used_gpus(pods, GPU) == {"gpu-1": 3.0, "gpu-2": 4.0, "gpu-3": 0.0}
    nodes = [node("gpu-1"), node("gpu-2"), node("gpu-3")]
    assert free_replicas(nodes, used_gpus(pods, GPU), shape(gpus=2)) == 2 + 2 + 4


def test_pod_gpus_reads_requests_then_limits_over_all_containers() -> None:
    def container(requests: Obj | None = None, limits: Obj | None = None) -> Obj:
        resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v is not None}
        return {"name": "c", "resources": resources}

    def with_containers(*containers: Obj) -> Obj:
        return {"spec": {"containers": list(containers)}}

    assert pod_gpus(with_containers(container({GPU: "2"}, {GPU: "2"})), GPU) == 2
    assert pod_gpus(with_containers(container(limits={GPU: 4})), GPU) == 4  # a request defaults to the limit
    assert (
        pod_gpus(with_containers(container({GPU: "1"}), container(limits={GPU: "2"}), container()), GPU) == 3
    )
    assert pod_gpus(with_containers(container({"cpu": "1"})), GPU) == 0
    assert pod_gpus({}, GPU) == 0
    assert pod_gpus(with_containers({"name": "bare"}), GPU) == 0


nodes_and_pods = st.tuples(
    st.lists(
        st.tuples(st.integers(0, 8), st.booleans(), st.booleans()),  # GPUs, in the pool, Ready
        min_size=0,
        max_size=5,
    ),
    st.lists(
        st.tuples(
            st.none() | st.integers(0, 5),  # the node it is bound to (by index, possibly a node not listed)
            st.integers(0, 4),
            st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"]),
        ),
        max_size=12,
    ),
    st.integers(1, 8),
)


@settings(max_examples=200, deadline=None)
@given(nodes_and_pods)
def test_free_replicas_is_what_fits_one_replica_at_a_time(
    world: tuple[list[tuple[int, bool, bool]], list[tuple[int | None, int, str]], int],
) -> None:
    node_specs, pod_specs, per_replica = world
    nodes = [
        node(f"n{i}", labels={} if member else {"pool": "other"}, gpus=gpus, ready="True" if ok else "False")
        for i, (gpus, member, ok) in enumerate(node_specs)
    ]
    pods = [pod(None if at is None else f"n{at}", gpus, phase=phase) for at, gpus, phase in pod_specs]
    # Oracle: place replicas one by one on each of the pool's nodes while its GPUs last.
    expected = 0
    for i, (gpus, member, ok) in enumerate(node_specs):
        if not (member and ok):
            continue
        taken = sum(g for at, g, phase in pod_specs if at == i and phase not in ("Succeeded", "Failed"))
        while taken + per_replica <= gpus:
            taken += per_replica
            expected += 1
    assert free_replicas(nodes, used_gpus(pods, GPU), shape(gpus=per_replica)) == expected


# --- pod counts ----------------------------------------------------------------------------------------


def test_count_pods() -> None:
    pods = [
        pod("gpu-1"),
        pod("gpu-1", ready=False),  # loading the model
        pod("gpu-2", phase="Pending", ready=False),  # bound, pulling its image
        pod(None, phase="Pending", ready=False, unschedulable_since=NOW - 100),
        pod(None, phase="Pending", ready=False, unschedulable_since=NOW - 300),
        pod(None, phase="Pending", ready=False),  # not tried by the scheduler yet
        pod("gpu-1", phase="Succeeded", ready=False),
        pod(None, phase="Failed", ready=False, unschedulable_since=NOW - 900),
    ]
    assert count_pods(pods, NOW) == PodCounts(
        scheduled=3, ready=1, unschedulable=2, unschedulable_since=NOW - 300
    )
    assert count_pods([], NOW) == PodCounts()


def test_an_unschedulable_pod_without_a_transition_time_counts_from_now() -> None:
    waiting = pod(None, phase="Pending", ready=False, unschedulable_since=NOW - 60)
    del waiting["status"]["conditions"][0]["lastTransitionTime"]
    assert count_pods([waiting], NOW) == PodCounts(unschedulable=1, unschedulable_since=NOW)


def test_only_the_unschedulable_reason_counts_as_waiting_for_capacity() -> None:
    gated = pod(None, phase="Pending", ready=False, unschedulable_since=NOW - 60)
    gated["status"]["conditions"][0]["reason"] = "SchedulingGated"
    assert count_pods([gated], NOW) == PodCounts()


def test_pod_ready_reads_the_ready_condition() -> None:
    assert pod_ready(pod())
    assert not pod_ready(pod(ready=False))
    assert not pod_ready(pod(None))
    assert not pod_ready({})


@given(
    st.lists(
        st.tuples(
            st.booleans(),  # bound to a node
            st.booleans(),  # ready
            st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
            st.none() | st.integers(0, 10_000),  # unschedulable for that many seconds
        ),
        max_size=12,
    )
)
def test_count_pods_agrees_with_each_pod(specs: list[tuple[bool, bool, str, int | None]]) -> None:
    pods = [
        pod(
            "gpu-1" if bound else None,
            phase=phase,
            ready=ready and bound,
            unschedulable_since=None if age is None else NOW - age,
        )
        for bound, ready, phase, age in specs
    ]
    live = [s for s in specs if s[2] not in ("Succeeded", "Failed")]
    waiting = [age for bound, _, _, age in live if not bound and age is not None]
    counts = count_pods(pods, NOW)
    assert counts.scheduled == sum(bound for bound, *_ in live)
    assert counts.ready == sum(bound and ready for bound, ready, *_ in live)
    assert counts.unschedulable == len(waiting)
    assert counts.unschedulable_since == (NOW - max(waiting) if waiting else None)


# --- pods still waiting for the scheduler ----------------------------------------------------------------


def waiting_pod(gpus: int = 3, selector: dict[str, str] | None = None) -> Obj:
    body = pod(on=None, gpus=gpus, phase="Pending")
    body["spec"]["nodeSelector"] = {"pool": "a100"} if selector is None else selector
    return body


def test_only_unbound_unrefused_unfinished_pods_are_waiting() -> None:
    assert waiting(waiting_pod())
    assert not waiting(pod())  # bound
    assert not waiting(pod(on=None, unschedulable_since=0.0, phase="Pending"))  # refused by the scheduler
    assert not waiting(pod(on=None, phase="Failed"))


def test_waiting_pods_take_gpus_first_fit_and_leave_the_rest_free() -> None:
    nodes = [node("gpu-1"), node("gpu-2")]
    used = place_waiting(nodes, {"gpu-1": 6}, [waiting_pod(3), waiting_pod(3), waiting_pod(3)], GPU)
    # gpu-1 has 2 left (6 used): the first two go to gpu-2, the third fits nowhere and takes nothing.
    assert used == {"gpu-1": 6, "gpu-2": 6}
    assert free_replicas(nodes, used, shape(gpus=2)) == 2
    # A waiting pod of another pool, or asking for no GPU, takes nothing here.
    assert place_waiting(nodes, {}, [waiting_pod(3, {"pool": "h100"}), waiting_pod(0)], GPU) == {}


def test_a_pods_own_scheduling_is_its_shape() -> None:
    body = waiting_pod(2)
    body["spec"]["tolerations"] = [{"key": "spot", "operator": "Exists"}]
    assert pod_scheduling(body, GPU) == PoolScheduling(
        {"pool": "a100"}, None, body["spec"]["tolerations"], GPU, 2
    )
