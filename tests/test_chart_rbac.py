"""The chart's RBAC against what the operator does: exactly the permissions it uses, nothing more, in each
mode (the release's namespace, a list of namespaces, every namespace), and nothing of a namespace it does not
watch unless asked for.

The operator's own calls are recorded, not listed by hand: its reconcile pipeline and its cleanup run with
its HTTP client against a recording server on loopback (objects absent, then present), for the resources
the chart's example creates. kopf's calls are stated with the reason for each.
"""

import asyncio
import functools
import re
from typing import Any

import kopf
from aiohttp import web
from quasar_operator.apply import KubeApi
from quasar_operator.models import GROUP
from quasar_operator.reconcile import Resource, cleanup_paths, reconcile_miner, reconcile_validator
from quasar_operator.scaling import ScalingState

from tests.test_chart import NAMESPACE, one, rendered
from tests.test_crds import EXAMPLES, load

Obj = dict[str, Any]
Permission = tuple[str, str, str]  # (API group, resource, verb)
VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete"}
# A server-side apply (a PATCH of this type) creates the object when it is missing, and the API server then
# authorises it as a create too: it needs both verbs.
APPLY_PATCH = "application/apply-patch+yaml"
PLURALS = ("quasarminers", "quasarvalidators")
# kopf, in a watched namespace: it lists and watches the resources, merge-patches them (its finalizer and
# annotations) and their status subresource, and posts core/v1 Events. Standalone: no peering objects.
KOPF = (
    {(GROUP, plural, verb) for plural in PLURALS for verb in ("list", "watch", "patch")}
    | {(GROUP, f"{plural}/status", "patch") for plural in PLURALS}
    | {("", "events", "create")}
)
# kopf, cluster-wide whatever it watches: CustomResourceDefinitions, to notice CRDs (re)installed while it
# runs; with a list of namespaces, also Namespaces, to serve one created after it started.
KOPF_SCANNING = {("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")}
KOPF_NAMESPACES = {("", "namespaces", verb) for verb in ("list", "watch")}
# What placement reads across the cluster: Nodes (cluster-scoped), and the Pods of every namespace (granted
# only with rbac.listPodsClusterWide or operator.clusterWide).
NODES = {("", "nodes", "list")}
ALL_PODS = {("", "pods", "list")}
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "nodes"}
LOAD_BALANCER = {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}


# A wallet Secret as a metadata-only read (PartialObjectMetadata) shows it: its key names in managedFields.
WALLET_METADATA = {
    "apiVersion": "meta.k8s.io/v1",
    "kind": "PartialObjectMetadata",
    "metadata": {
        "managedFields": [
            {"manager": "kubectl-create", "fieldsV1": {"f:data": {"f:hotkey": {}, "f:coldkeypub.txt": {}}}}
        ]
    },
}


class Recorder:
    """An API server that answers every call plausibly and records (method, path)."""

    def __init__(self) -> None:
        self.calls: set[tuple[str, str]] = set()
        self.present = False

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.add((request.method, request.path))
        if request.method == "PATCH" and request.content_type == APPLY_PATCH:
            self.calls.add(("POST", request.path))
        if request.method == "POST":
            # A created Service has its load balancer's address, so the miner's Deployment follows.
            return web.json_response({**await request.json(), "status": LOAD_BALANCER})
        if request.method == "GET" and "/secrets/" in request.path:
            return web.json_response(WALLET_METADATA)  # what the wallet check's metadata-only read gets
        if request.method == "GET" and not self.present:
            return web.json_response({"message": "not found"}, status=404)
        return web.json_response(
            {"metadata": {"ownerReferences": [{"uid": "uid-1"}]}, "status": LOAD_BALANCER}
        )


async def operator_calls(resources: list[Obj]) -> set[tuple[str, str]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    api = KubeApi.connect(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}"), timeout=10, user_agent="t")
    try:
        for present in (False, True):
            recorder.present = present
            for body in resources:
                resource = Resource.from_body({**body, "metadata": {**body["metadata"], "uid": "uid-1"}})
                pipeline = reconcile_miner if body["kind"] == "QuasarMiner" else reconcile_validator
                result = await pipeline(api, resource, "2026-01-01T00:00:00Z", ScalingState())
                assert result.failure is None, result.failure
        # Deletion: the operator deletes the children it owns before its finalizer goes.
        for body in resources:
            meta = body["metadata"]
            for path in await cleanup_paths(api, body["kind"], meta["name"], meta["namespace"]):
                await api.delete(path)
    finally:
        await api.close()
        await runner.cleanup()
    return recorder.calls


def permission(method: str, path: str) -> tuple[Permission, bool]:
    """The permission a call needs, and whether it is cluster-wide (a read across every namespace)."""
    match = re.fullmatch(r"/(?:api/v1|apis/([^/]+)/[^/]+)(/namespaces/[^/]+)?/([^/]+)(/[^/]+)?", path)
    assert match is not None, path
    # A GET of a collection is a list.
    verb = "list" if method == "GET" and match.group(4) is None else VERBS[method]
    return (match.group(1) or "", match.group(3), verb), match.group(2) is None


def granted(rules: list[Obj]) -> set[Permission]:
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no URLs
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def split(calls: set[tuple[str, str]]) -> tuple[set[Permission], set[Permission]]:
    """The permissions calls need in their namespace, and those they need across the cluster."""
    found = [permission(method, path) for method, path in calls]
    return {p for p, wide in found if not wide}, {p for p, wide in found if wide}


@functools.cache
def recorded_needs() -> tuple[frozenset[Permission], frozenset[Permission]]:
    """What the operator's calls need in a watched namespace, and across the cluster."""
    resources = chart_resources()
    # And a miner with pools and its own autoscaler: it reads pods, and Nodes and Pods cluster-wide.
    full = load(EXAMPLES / "quasarminer-full.yaml")
    resources.append({**full, "metadata": {**full["metadata"], "namespace": "miners"}})
    needs, cluster = split(asyncio.run(operator_calls(resources)))
    # What the recording must have seen: every child kind written, and the wallet Secret read.
    assert {("apps", "deployments", "create"), ("apps", "statefulsets", "patch")} <= needs
    assert ("", "secrets", "get") in needs
    assert ("", "persistentvolumeclaims", "delete") in needs
    assert {("", "pods", "list"), ("policy", "poddisruptionbudgets", "create")} <= needs
    assert cluster == NODES | ALL_PODS
    return frozenset(needs | KOPF), frozenset(cluster)


def chart_resources() -> list[Obj]:
    return [o for o in rendered("example") if o["kind"] in ("QuasarMiner", "QuasarValidator")]


def roles(objects: list[Obj]) -> dict[str, set[Permission]]:
    """Each Role's namespace and grants, after checking its RoleBinding gives it to the operator alone."""
    found = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert sorted(found) == sorted(bindings)
    for namespace, role in found.items():
        assert bindings[namespace]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        (subject,) = bindings[namespace]["subjects"]
        assert subject == operator_account(objects)
    return {namespace: granted(role["rules"]) for namespace, role in found.items()}


def cluster_grants(objects: list[Obj]) -> set[Permission]:
    """The ClusterRole's grants, after checking its ClusterRoleBinding gives it to the operator alone."""
    role = one(objects, "ClusterRole")
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [operator_account(objects)]
    return granted(role["rules"])


def operator_account(objects: list[Obj]) -> Obj:
    account = one(objects, "ServiceAccount")["metadata"]
    return {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}


def test_resources_without_pools_need_nothing_across_the_cluster() -> None:
    # The chart's example (a miner without pools, a validator): every call stays in their namespace.
    _, cluster = split(asyncio.run(operator_calls(chart_resources())))
    assert cluster == set()


def test_default_a_role_in_the_releases_namespace_and_only_cluster_scoped_reads() -> None:
    objects = rendered("defaults")
    needs, _ = recorded_needs()
    assert roles(objects) == {NAMESPACE: needs}
    # No Secret, Pod, Deployment or Service of any other namespace: only cluster-scoped kinds.
    assert cluster_grants(objects) == KOPF_SCANNING | KOPF_NAMESPACES | NODES
    assert {resource for _, resource, _ in cluster_grants(objects)} <= CLUSTER_SCOPED


def test_listed_namespaces_a_role_in_each_and_pods_across_the_cluster_on_request() -> None:
    objects = rendered("everything")  # watchNamespaces [miners, validators], rbac.listPodsClusterWide
    needs, cluster = recorded_needs()
    assert roles(objects) == {namespace: needs for namespace in (NAMESPACE, "miners", "validators")}
    assert cluster_grants(objects) == KOPF_SCANNING | KOPF_NAMESPACES | cluster


def test_cluster_wide_one_cluster_role_grants_exactly_what_the_operator_uses() -> None:
    objects = rendered("cluster-wide")
    needs, cluster = recorded_needs()
    assert roles(objects) == {}
    assert cluster_grants(objects) == needs | cluster | KOPF_SCANNING
