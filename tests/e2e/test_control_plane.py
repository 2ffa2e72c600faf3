"""The cluster itself, the CRDs and the chart on a real API server, scheduler and hollow GPU nodes."""

import ipaddress
import json
import os
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.k8s import cluster as k8s
from tests import test_crds
from tests.e2e.conftest import REPO, Kube

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
EXAMPLES = sorted((REPO / "crds" / "examples").glob("*.yaml"))
CHART = REPO / "charts" / "quasar"
CHART_EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))


def eventually(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def get(kube: Kube, *args: str) -> Any:
    return json.loads(kube.kubectl("get", "-o", "json", *args).stdout)


# ------------------------------------------------------------------------------------------ the cluster


def test_api_server_reports_the_built_version(cluster: k8s.Cluster, kube: Kube) -> None:
    client = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert cluster.version() == client["serverVersion"]["gitVersion"] == client["clientVersion"]["gitVersion"]


def test_hollow_nodes_are_ready_gpu_pools_on_loopback(cluster: k8s.Cluster) -> None:
    nodes = {node["metadata"]["name"]: node for node in cluster.nodes()}
    expected = cluster.node_pools
    assert set(nodes) == set(expected)
    for name, pool in expected.items():
        node = nodes[name]
        assert node["metadata"]["labels"][k8s.POOL_LABEL] == pool.name
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
        assert node["status"]["capacity"][k8s.GPU] == str(pool.gpus_per_node)
        assert node["status"]["allocatable"][k8s.GPU] == str(pool.gpus_per_node)
        # Named by its loopback address, which is what the API server dials for logs and exec.
        assert ipaddress.ip_address(name) in LOOPBACK
        assert [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"] == [name]
        assert ipaddress.IPv4Network(node["spec"]["podCIDR"]).subnet_of(
            ipaddress.IPv4Network(cluster.pod_range)
        )
    assert ipaddress.IPv4Network(cluster.pod_range).subnet_of(LOOPBACK)


def test_two_clusters_on_one_machine_get_pod_ranges_of_their_own(cluster: k8s.Cluster) -> None:
    other, lock = k8s.claim_pod_range()
    try:
        assert other != cluster.pod_range
        assert not ipaddress.IPv4Network(other).overlaps(ipaddress.IPv4Network(cluster.pod_range))
    finally:
        os.close(lock)
    again, lock = k8s.claim_pod_range()  # released: the next claim may take it
    os.close(lock)
    assert again == other


def gpu_deployment(namespace: str, name: str, pool: str, gpus: int, replicas: int = 1) -> dict[str, Any]:
    """A Deployment of `replicas` pods, each holding `gpus` of `pool`'s GPUs (someone else's workload)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {k8s.POOL_LABEL: pool},
                    "containers": [
                        {"name": "job", "image": "job:1", "resources": {"limits": {k8s.GPU: str(gpus)}}}
                    ],
                },
            },
        },
    }


def test_a_gpu_deployment_is_scheduled_on_its_pool_and_collected_when_deleted(
    cluster: k8s.Cluster, kube: Kube, namespace: str
) -> None:
    pool = k8s.POOLS[0]
    deployment = gpu_deployment(namespace, "gpu", pool.name, gpus=1, replicas=pool.nodes)
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(deployment))
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/gpu", "--timeout=90s")
    pods = get(kube, "pods", "-n", namespace, "-l", "app=gpu")["items"]
    assert len(pods) == pool.nodes
    assert {p["spec"]["nodeName"] for p in pods} <= {n for n, p in cluster.node_pools.items() if p == pool}

    # The garbage collector removes the ReplicaSet and its pods through their owner references.
    kube.kubectl("delete", "-n", namespace, "deployment/gpu", "--cascade=background")
    eventually(
        "ReplicaSet and pods collected",
        lambda: not get(kube, "replicasets,pods", "-n", namespace, "-l", "app=gpu")["items"],
    )


def test_pods_get_loopback_addresses_and_the_api_server_reaches_nothing_else(
    cluster: k8s.Cluster, kube: Kube, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]},
    }
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    kube.kubectl("wait", "-n", namespace, "pod/web", "--for=jsonpath={.status.podIP}", "--timeout=60s")
    body = get(kube, "-n", namespace, "pod/web")
    pod_ip = body["status"]["podIP"]
    node = next(n for n in cluster.nodes() if n["metadata"]["name"] == body["spec"]["nodeName"])
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(node["spec"]["podCIDR"])

    # The API server proxies to no pod at a loopback address (only global unicast ones): it never dials it.
    with pytest.raises(urllib.error.HTTPError) as not_allowed:
        cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods/web:8080/proxy/")
    assert not_allowed.value.code == 400
    assert "address not allowed" in not_allowed.value.read().decode()

    # A webhook someone pointed outside loopback (TEST-NET-1, RFC 5737): the guard refuses to dial it, so the
    # API server refuses what the webhook would have judged (here one labelled ConfigMap of this namespace).
    outside = "192.0.2.10:8443"
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"outside-{namespace}"},
        "webhooks": [
            {
                "name": "outside.e2e.quasar.ai",
                "clientConfig": {"url": f"https://{outside}/validate"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"e2e": "outside"}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }
        ],
    }
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(webhook))
    try:
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "judged", "namespace": namespace, "labels": {"e2e": "outside"}},
        }
        created = kube.kubectl("create", "-f", "-", stdin=json.dumps(config_map), check=False)
    finally:
        kube.kubectl("delete", "validatingwebhookconfiguration", f"outside-{namespace}")
    assert created.returncode != 0
    assert "outside.e2e.quasar.ai" in created.stderr
    assert outside in cluster.refusals.read_text(encoding="utf-8").split()
    # Its way to the kubelet (logs, exec) goes through and reaches the node on loopback. (A hollow kubelet
    # serves plain HTTP, so the API server's TLS request then fails: docs/cluster.md, "Known limits".)
    logs = kube.kubectl("logs", "-n", namespace, "pod/web", check=False)
    assert "code 403" not in logs.stderr
    assert "127." not in cluster.refusals.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ CRDs


@pytest.mark.usefixtures("crds_installed")
def test_crds_are_established(kube: Kube) -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        name = yaml.safe_load(path.read_text(encoding="utf-8"))["metadata"]["name"]
        conditions = get(kube, "crd", name)["status"]["conditions"]
        assert {c["type"]: c["status"] for c in conditions}["Established"] == "True"


@pytest.mark.usefixtures("crds_installed")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_apply(kube: Kube, namespace: str, path: Path) -> None:
    body = test_crds.load(path)
    body["metadata"]["namespace"] = namespace  # the full examples name namespaces of their own
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(body))
    stored = get(kube, "-n", namespace, body["kind"], body["metadata"]["name"])
    # The server keeps what the example says and fills in what the offline model of its defaulting
    # (tests/test_crds.py) fills in; it may default more (that model does not go into list items).
    schema = test_crds.root_schema(test_crds.CRD_OF_KIND[body["kind"]]())
    assert contains(stored["spec"], test_crds.apply_defaults(schema, body)["spec"])


def contains(whole: Any, part: Any) -> bool:
    """`whole` has every field of `part`, with the same values (lists item by item)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and contains(whole[k], v) for k, v in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and len(whole) == len(part) and all(map(contains, whole, part))
    return bool(whole == part)


def parametrized(test: Callable[..., None]) -> list[Any]:
    """The cases a test in tests/test_crds.py is parametrized with (reused, not copied)."""
    (mark,) = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    cases: list[Any] = mark.args[1]
    return cases


def miner(spec: dict[str, Any]) -> dict[str, Any]:
    return test_crds.miner_with(**spec)


def validator(spec: dict[str, Any]) -> dict[str, Any]:
    body = test_crds.load(test_crds.EXAMPLES / "quasarvalidator.yaml")
    body["spec"] = {**body["spec"], **spec}
    return body


INVALID = [
    *[(miner, spec) for spec, _ in parametrized(test_crds.test_bad_miner_specs)],
    *[(validator, spec) for spec, _ in parametrized(test_crds.test_bad_validator_specs)],
    *[
        (miner, spec)
        for spec, _ in parametrized(test_crds.test_placement_and_autoscaling_rules_agree_in_cel_and_models)
    ],
]


@pytest.mark.usefixtures("crds_installed")
@pytest.mark.parametrize(
    ("make", "spec"), INVALID, ids=[f"{make.__name__}:{json.dumps(spec)}" for make, spec in INVALID]
)
def test_the_api_server_judges_bad_specs_as_the_cel_oracle_does(
    kube: Kube, namespace: str, make: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any]
) -> None:
    body = make(spec)
    body["metadata"]["namespace"] = namespace
    kind = body["kind"]
    expected = test_crds.api_server_errors(kind, body)
    answer = kube.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(body), check=False)
    # Refused exactly when the offline oracle (schema, strict fields, cel-python) says the server refuses.
    assert (answer.returncode != 0) == bool(expected), answer.stderr
    # The server evaluates CEL rules only on an object the schema admits ("validation rules were not
    # checked because the object was invalid"), so the CRD's own messages are expected only then.
    checked = not test_crds.schema_errors(kind, body)
    for error in test_crds.cel_errors(kind, body) if checked else []:
        assert error.split(": ", 1)[1] in answer.stderr  # the CRD's own message
    schema = test_crds.root_schema(test_crds.CRD_OF_KIND[kind]())
    for field in test_crds.unknown_fields(schema, body):
        assert f'unknown field "{field}"' in answer.stderr


# ------------------------------------------------------------------------------------------ the chart


def manifest_objects(kube: Kube, release: str, namespace: str) -> str:
    return kube.helm("get", "manifest", release, "-n", namespace).stdout


def test_helm_install_creates_the_chart_and_uninstall_removes_it(kube: Kube, namespace: str) -> None:
    kube.helm("install", "quasar", str(CHART), "-n", namespace, "--wait", "--timeout=120s")
    manifest = manifest_objects(kube, "quasar", namespace)
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}
    assert {"Deployment", "ServiceAccount", "Service"} <= kinds
    created = kube.kubectl("get", "-n", namespace, "-f", "-", "-o", "name", stdin=manifest).stdout.split()
    assert len(created) == sum(1 for doc in yaml.safe_load_all(manifest) if doc)
    assert get(kube, "crd", "quasarminers.quasar.ai")["metadata"]["name"]  # from the chart's crds/

    kube.helm("uninstall", "quasar", "-n", namespace, "--wait", "--timeout=120s")
    left = kube.kubectl("get", "-n", namespace, "-f", "-", "--ignore-not-found", "-o", "name", stdin=manifest)
    assert left.stdout.split() == []


@pytest.mark.parametrize("values", CHART_EXAMPLES, ids=lambda p: p.name)
def test_chart_examples_install(kube: Kube, namespace: str, values: Path) -> None:
    given = yaml.safe_load(values.read_text(encoding="utf-8"))
    # The example names its namespace for the operator to watch; here it is the test's own.
    watch = ["--set-json", f'operator.watchNamespaces=["{namespace}"]']
    kube.helm("install", "example", str(CHART), "-n", namespace, "-f", str(values), *watch)
    for kind, key in (("quasarminer", "miners"), ("quasarvalidator", "validators")):
        names = {item["metadata"]["name"] for item in get(kube, kind, "-n", namespace)["items"]}
        assert names == {entry["name"] for entry in given.get(key, [])}
    kube.helm("uninstall", "example", "-n", namespace, "--wait", "--timeout=120s")
    assert get(kube, "quasarminers,quasarvalidators", "-n", namespace)["items"] == []
