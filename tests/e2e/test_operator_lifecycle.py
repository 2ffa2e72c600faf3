"""The operator on the real control plane: `quasar operator run` as the chart's ServiceAccount (a token from
the TokenRequest API, the chart's RBAC installed by the real helm) reconciling QuasarMiners and
QuasarValidators whose pods the real scheduler puts on hollow GPU nodes.
"""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts.k8s import cluster as k8s
from tests.e2e.conftest import REPO, Kube
from tests.e2e.test_control_plane import eventually, get, gpu_deployment

Obj = dict[str, Any]
CHART = REPO / "charts" / "quasar"
QUASAR = Path(sys.executable).parent / "quasar"
MANAGER = "quasar-operator"
# Fast enough for a test: every drift tick is a reconcile that must write nothing.
OPERATOR_ENV = {
    "QUASAR_OPERATOR_DRIFT_INTERVAL": "2",
    "QUASAR_OPERATOR_RETRY_DELAY": "2",
    "QUASAR_OPERATOR_SCALE_INTERVAL": "2",
    "QUASAR_OPERATOR_CLUSTER_TTL": "0",
    "QUASAR_OPERATOR_LISTEN_ADDRESS": "127.0.0.1",
}
DRIFT_TICK = "Timer 'drift' succeeded"
# The operator's client never updates by PUT (server-side apply, merge patches, creates, deletes); the
# controllers do: the PV binder PUTs a claim it binds, which a count by resource would charge to the operator.
WRITE_VERBS = {"POST", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
# What the operator writes. Of its children only the objects themselves: the controllers write their
# status subresource. Events: the operator's (kopf posts them to core v1), and any other component's.
WRITTEN = {
    ("quasar.ai", "quasarminers"),
    ("quasar.ai", "quasarvalidators"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("", "services"),
    ("", "persistentvolumeclaims"),
    ("policy", "poddisruptionbudgets"),
    ("", "events"),
}


def operator_writes(cluster: k8s.Cluster) -> dict[str, float]:
    """Write requests the API server has served on what the operator writes, by `verb resource/sub`
    (its `apiserver_request_total`), since it started. Events are counted whatever their source."""
    counts: dict[str, float] = {}
    text = cluster.request("GET", "/metrics").decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "apiserver_request_total" or labels.get("verb") not in WRITE_VERBS:
                continue
            if (labels.get("group", ""), labels.get("resource")) not in WRITTEN:
                continue
            subresource = labels.get("subresource", "")
            if subresource and labels["group"] != "quasar.ai":
                continue  # a child's status: its controller's
            key = f"{labels['verb']} {labels['resource']}" + (f"/{subresource}" if subresource else "")
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


@dataclass
class Operator:
    """`quasar operator run -n NAMESPACE` in a process of its own, as the chart's ServiceAccount."""

    namespace: str
    storage_class: str
    release: str
    log: Path
    argv: list[str]
    env: dict[str, str]
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def restart(self) -> None:
        self.stop()
        self.start()

    def drift_ticks(self) -> int:
        return self.log.read_text(encoding="utf-8", errors="replace").count(DRIFT_TICK)

    def wait_ticks(self, count: int) -> None:
        """Until `count` more drift reconciles have finished (each reads every child and decides)."""
        target = self.drift_ticks() + count
        eventually(f"{count} drift reconciles", lambda: self.drift_ticks() >= target)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def token_kubeconfig(cluster: k8s.Cluster, kube: Kube, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for `account`, with a token from the TokenRequest API (`kubectl create token`)."""
    token = kube.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.certificates.ca)},
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": account, "namespace": namespace}}],
        "current-context": "e2e",
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def local_storage(kube: Kube, name: str, folder: Path, volumes: int) -> None:
    """A StorageClass of the test's own with `volumes` bound-on-creation PersistentVolumes (host paths)."""
    objects: list[Obj] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
    ]
    for index in range(volumes):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{name}-{index}", "labels": {"e2e-storage": name}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                    "storageClassName": name,
                    "hostPath": {"path": str(folder / str(index))},
                },
            }
        )
    kube.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def run_operator(
    cluster: k8s.Cluster, kube: Kube, namespace: str, tmp_path: Path, *helm_args: str
) -> Iterator[Operator]:
    """The chart installed by helm (watching `namespace`), a wallet Secret, storage, and the operator."""
    release = f"q{uuid.uuid4().hex[:6]}"  # its ClusterRole is cluster-wide: a name no other test uses
    watch = ["--set-json", f'operator.watchNamespaces=["{namespace}"]']
    kube.helm("install", release, str(CHART), "-n", namespace, *watch, *helm_args)
    manifest = kube.helm("get", "manifest", release, "-n", namespace).stdout
    (account,) = [
        d["metadata"]["name"] for d in yaml.safe_load_all(manifest) if d and d["kind"] == "ServiceAccount"
    ]
    kube.kubectl(
        "create", "secret", "generic", "wallet", "-n", namespace,
        "--from-literal=hotkey={}", "--from-literal=coldkeypub.txt={}",
    )  # fmt: skip
    storage_class = f"e2e-{namespace}"
    local_storage(kube, storage_class, tmp_path / "volumes", volumes=2)
    kubeconfig = token_kubeconfig(cluster, kube, namespace, account, tmp_path / "operator.kubeconfig")
    metrics_port = k8s.free_port()
    ports = ["--liveness-port", str(k8s.free_port()), "--metrics-port", str(metrics_port)]
    running = Operator(
        namespace,
        storage_class,
        release,
        log=tmp_path / "operator.log",
        argv=[str(QUASAR), "operator", "run", "-n", namespace, *ports],
        env={**os.environ, **OPERATOR_ENV, "KUBECONFIG": str(kubeconfig)},
        metrics_port=metrics_port,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
        kube.helm("uninstall", release, "-n", namespace, "--wait", "--timeout=60s", check=False)
        kube.kubectl("delete", "pv", "-l", f"e2e-storage={storage_class}", "--wait=false", check=False)
        kube.kubectl("delete", "storageclass", storage_class, check=False)
        # Nothing the operator logged is a traceback (a failure it reports is one line).
        assert "Traceback" not in running.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def operator(
    cluster: k8s.Cluster, kube: Kube, namespace: str, tmp_path: Path, crds_installed: None
) -> Iterator[Operator]:
    yield from run_operator(cluster, kube, namespace, tmp_path)


@pytest.fixture
def placing_operator(
    cluster: k8s.Cluster, kube: Kube, namespace: str, tmp_path: Path, crds_installed: None
) -> Iterator[Operator]:
    """With the chart's cluster-wide list of Pods, which placement needs (every pod's GPUs on a node)."""
    yield from run_operator(cluster, kube, namespace, tmp_path, "--set", "rbac.listPodsClusterWide=true")


def miner(operator: Operator, name: str = "m1", **spec: Any) -> Obj:
    return {
        "apiVersion": "quasar.ai/v1alpha1",
        "kind": "QuasarMiner",
        "metadata": {"name": name, "namespace": operator.namespace},
        "spec": {
            "model": {"id": "Qwen/Qwen2.5-7B-Instruct-1M"},
            "wallet": {"secretName": "wallet"},
            "subnet": {"netuid": 7},
            # A fixed address: no cloud controller gives the LoadBalancer one (nothing dials it).
            "exposure": {"externalIP": "203.0.113.7"},
            "cache": {
                "size": "1Gi",
                "storageClassName": operator.storage_class,
                "accessMode": "ReadWriteMany",
            },
            "pod": {"nodeSelector": {k8s.POOL_LABEL: "h100"}},
            **spec,
        },
    }


def children(name: str) -> list[str]:
    base = f"{name}-miner"
    return [
        f"deployment/{base}",
        f"service/{base}",
        f"service/{base}-metrics",
        f"poddisruptionbudget/{base}",
        f"persistentvolumeclaim/{base}-cache",
    ]


def conditions(body: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def condition_is(kube: Kube, namespace: str, name: str, type_: str, status: str) -> bool:
    found = conditions(get(kube, "-n", namespace, f"quasarminer/{name}")).get(type_)
    return found is not None and found["status"] == status


def ready_replicas(kube: Kube, namespace: str, name: str, count: int) -> bool:
    body = get(kube, "-n", namespace, f"quasarminer/{name}")
    status = body.get("status") or {}
    return status.get("readyReplicas") == count and conditions(body).get("Ready", {}).get("status") == "True"


def apply(kube: Kube, body: Obj) -> None:
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(body))


def with_fields(kube: Kube, namespace: str, path: str) -> Obj:
    """The object with its managedFields (kubectl leaves them out unless asked)."""
    found: Obj = get(kube, "--show-managed-fields", "-n", namespace, path)
    return found


def managers(obj: Obj) -> list[tuple[str, str, str]]:
    return [
        (entry["manager"], entry["operation"], entry.get("subresource", ""))
        for entry in obj["metadata"].get("managedFields") or []
    ]


def owned_by_operator(obj: Obj) -> Obj:
    (entry,) = [
        e["fieldsV1"]
        for e in obj["metadata"]["managedFields"]
        if (e["manager"], e["operation"]) == (MANAGER, "Apply")
    ]
    fields: Obj = entry
    return fields


def table(kube: Kube, *args: str) -> dict[str, str]:
    """`kubectl get` as a person reads it: the one row under its header, column by column."""
    header, row = kube.kubectl("get", *args).stdout.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+(?: \S+)*", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def gpu_pods(kube: Kube, namespace: str, name: str) -> list[Obj]:
    pods = get(kube, "pods", "-n", namespace)["items"]
    return [p for p in pods if p["metadata"]["name"].startswith(f"{name}-miner-")]


# ------------------------------------------------------------------------------------------ the tests


def test_a_miner_runs_on_hollow_gpu_nodes_reads_right_in_kubectl_and_scales(
    kube: Kube, operator: Operator
) -> None:
    ns = operator.namespace
    apply(kube, miner(operator))
    kube.kubectl("wait", "-n", ns, "quasarminer/m1", "--for=condition=Ready", "--timeout=90s")
    body = with_fields(kube, ns, "quasarminer/m1")
    state = conditions(body)
    assert [(t, state[t]["status"]) for t in ("Ready", "Reconciled", "Degraded", "Progressing")] == [
        ("Ready", "True"),
        ("Reconciled", "True"),
        ("Degraded", "False"),
        ("Progressing", "False"),
    ]
    assert all(c["observedGeneration"] == body["metadata"]["generation"] for c in state.values())
    # The status went through the status subresource, the children through server-side apply.
    assert ("kopf", "Update", "status") in managers(body)
    for child in children("m1"):
        assert (MANAGER, "Apply", "") in managers(with_fields(kube, ns, child)), child

    # Scheduled onto the h100 pool's hollow node, its GPU counted, Ready.
    nodes = {n["metadata"]["name"]: n for n in get(kube, "nodes")["items"]}
    (pod,) = gpu_pods(kube, ns, "m1")
    assert nodes[pod["spec"]["nodeName"]]["metadata"]["labels"][k8s.POOL_LABEL] == "h100"
    assert any(c.get("resources", {}).get("limits", {}).get(k8s.GPU) for c in pod["spec"]["containers"])
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"

    # The printer columns say what the object holds.
    columns = table(kube, "-n", ns, "quasarminer/m1", "-o", "wide")
    assert columns["NAME"] == "m1"
    assert columns["MODEL"] == body["spec"]["model"]["id"]
    assert columns["DESIRED"] == str(body["status"]["desiredReplicas"]) == "1"
    assert columns["READY"] == str(body["status"]["readyReplicas"]) == "1"
    assert columns["ENDPOINT"] == body["status"]["endpoint"] == "203.0.113.7:8091"
    assert columns["STATUS"] == state["Ready"]["status"]

    # `kubectl scale` goes through the scale subresource; the operator follows spec.replicas.
    kube.kubectl("scale", "-n", ns, "quasarminer/m1", "--replicas=2")
    scaled = with_fields(kube, ns, "quasarminer/m1")
    assert scaled["spec"]["replicas"] == 2
    assert any(entry[2] == "scale" for entry in managers(scaled))
    eventually("two ready replicas", lambda: ready_replicas(kube, ns, "m1", 2), timeout=90)
    assert get(kube, "-n", ns, "deployment/m1-miner")["spec"]["replicas"] == 2
    assert len(gpu_pods(kube, ns, "m1")) == 2
    assert table(kube, "-n", ns, "quasarminer/m1")["READY"] == "2"

    # The operator keeps its marks under its own names.
    meta = get(kube, "-n", ns, "quasarminer/m1")["metadata"]
    assert meta["finalizers"] == ["quasar.ai/finalizer"]
    ours = {key for key in meta["annotations"] if key != "kubectl.kubernetes.io/last-applied-configuration"}
    assert "quasar.ai/last-handled-configuration" in ours
    assert all(key.startswith("quasar.ai/") for key in ours), ours
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10) as answer:
        assert (
            'quasar_operator_reconciles_total{kind="QuasarMiner",outcome="success"}' in answer.read().decode()
        )

    # Deleted, the operator deletes the children itself before its finalizer goes (the claim stays until
    # its pods are gone: Kubernetes' pvc-protection finalizer).
    kube.kubectl("delete", "-n", ns, "quasarminer/m1", "--timeout=60s")
    left = kube.kubectl("get", "-n", ns, *children("m1"), "--ignore-not-found", "-o", "json").stdout
    assert all(
        item["metadata"].get("deletionTimestamp") for item in json.loads(left or '{"items": []}')["items"]
    )


def test_at_rest_the_operator_writes_nothing_and_takes_its_fields_back(
    cluster: k8s.Cluster, kube: Kube, operator: Operator
) -> None:
    ns = operator.namespace
    apply(kube, miner(operator))
    kube.kubectl("wait", "-n", ns, "quasarminer/m1", "--for=condition=Ready", "--timeout=90s")
    watched = ["quasarminer/m1", *children("m1")]

    def versions() -> dict[str, str]:
        return {path: get(kube, "-n", ns, path)["metadata"]["resourceVersion"] for path in watched}

    def writes() -> dict[str, float]:
        # Events from any component in any namespace are counted there (an earlier test's pods being
        # deleted post theirs): the operator's own are the namespace's, compared below.
        return {key: n for key, n in operator_writes(cluster).items() if not key.endswith(" events")}

    def events() -> dict[str, int]:
        return {e["metadata"]["name"]: e.get("count", 1) for e in get(kube, "events", "-n", ns)["items"]}

    operator.wait_ticks(1)  # the reconcile that saw the pod become ready has written its status
    before, written, posted = versions(), writes(), events()
    operator.wait_ticks(3)
    # Three reconciles of every child: not one write request (an apply that changes nothing counts too),
    # and no Event posted or repeated.
    assert writes() == written
    assert versions() == before
    assert events() == posted

    # Someone else sets a field the operator applies (`kubectl scale` on the Deployment: an update, which
    # takes the field's ownership) and adds one of their own: the operator forces its field back and
    # leaves theirs.
    kube.kubectl("scale", "-n", ns, "deployment/m1-miner", "--replicas=3")
    kube.kubectl("annotate", "-n", ns, "deployment/m1-miner", "example.com/owner=mining-team")
    eventually(
        "replicas taken back",
        lambda: get(kube, "-n", ns, "deployment/m1-miner")["spec"]["replicas"] == 1,
    )
    deployment = with_fields(kube, ns, "deployment/m1-miner")
    assert deployment["metadata"]["annotations"]["example.com/owner"] == "mining-team"
    assert "f:replicas" in owned_by_operator(deployment)["f:spec"]

    # An apply by another manager that sets the operator's field conflicts, naming the owner.
    intruder = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m1-miner", "namespace": ns},
        "spec": {"replicas": 5},
    }
    refused = kube.kubectl(
        "apply",
        "--server-side",
        "--field-manager=intruder",
        "-f",
        "-",
        stdin=json.dumps(intruder),
        check=False,
    )
    assert refused.returncode != 0
    assert "conflict" in refused.stderr.lower()
    assert MANAGER in refused.stderr


def test_deleting_a_miner_collects_its_children_through_the_garbage_collector(
    kube: Kube, operator: Operator
) -> None:
    ns = operator.namespace
    apply(kube, miner(operator))
    kube.kubectl("wait", "-n", ns, "quasarminer/m1", "--for=condition=Ready", "--timeout=90s")
    uid = get(kube, "-n", ns, "quasarminer/m1")["metadata"]["uid"]
    for child in children("m1"):
        (ref,) = get(kube, "-n", ns, child)["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (uid, True, True), child

    # Without the operator (and its finalizer), only the garbage collector can remove the children.
    operator.stop()
    kube.kubectl(
        "patch",
        "-n",
        ns,
        "quasarminer/m1",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/metadata/finalizers"}]',
    )
    kube.kubectl("delete", "-n", ns, "quasarminer/m1", "--wait=true", "--timeout=60s")

    def collected() -> bool:
        left = kube.kubectl(
            "get", "-n", ns, *children("m1"), "--ignore-not-found", "-o", "name"
        ).stdout.split()
        pods = [
            p
            for p in get(kube, "pods,replicasets", "-n", ns)["items"]
            if p["metadata"]["name"].startswith("m1-")
        ]
        return not left and not pods

    eventually("children, ReplicaSets and pods collected", collected, timeout=90)


def test_a_verb_missing_from_the_role_degrades_the_miner_until_granted(
    kube: Kube, operator: Operator
) -> None:
    ns = operator.namespace
    role = get(kube, "-n", ns, "role", f"{operator.release}-quasar")
    granted = json.loads(json.dumps(role))
    for rule in role["rules"]:
        if rule["resources"] == ["deployments"]:
            rule["verbs"].remove("patch")  # server-side apply is a PATCH
    kube.kubectl("replace", "-f", "-", stdin=json.dumps(role))

    apply(kube, miner(operator))
    eventually("Degraded", lambda: condition_is(kube, ns, "m1", "Degraded", "True"), timeout=60)
    degraded = conditions(get(kube, "-n", ns, "quasarminer/m1"))["Degraded"]
    assert degraded["reason"] == "ApiError"
    assert "forbidden" in degraded["message"]
    assert "deployments" in degraded["message"]
    assert get(kube, "-n", ns, "service/m1-miner")  # what it may apply, it applied
    warnings = get(kube, "events", "-n", ns, "--field-selector", "involvedObject.name=m1,type=Warning")[
        "items"
    ]
    assert "ApiError" in {e["reason"] for e in warnings}

    granted["metadata"].pop("resourceVersion", None)
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(granted))
    eventually("Ready once granted", lambda: condition_is(kube, ns, "m1", "Ready", "True"), timeout=90)
    assert condition_is(kube, ns, "m1", "Degraded", "False")


def test_a_validators_statefulset_and_state_claim_bind(kube: Kube, operator: Operator) -> None:
    ns = operator.namespace
    validator = {
        "apiVersion": "quasar.ai/v1alpha1",
        "kind": "QuasarValidator",
        "metadata": {"name": "v1", "namespace": ns},
        "spec": {
            "wallet": {"secretName": "wallet"},
            "subnet": {"netuid": 7},
            "state": {"size": "1Gi", "storageClassName": operator.storage_class},
        },
    }
    apply(kube, validator)
    kube.kubectl("wait", "-n", ns, "quasarvalidator/v1", "--for=condition=Ready", "--timeout=90s")
    statefulset = get(kube, "-n", ns, "statefulset/v1-validator")
    assert statefulset["status"]["readyReplicas"] == 1
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    claim = get(kube, "-n", ns, f"pvc/{template['metadata']['name']}-v1-validator-0")
    assert claim["status"]["phase"] == "Bound"
    volume = get(kube, "pv", claim["spec"]["volumeName"])
    assert volume["spec"]["storageClassName"] == operator.storage_class
    assert volume["spec"]["claimRef"]["name"] == claim["metadata"]["name"]
    pod = get(kube, "-n", ns, "pod/v1-validator-0")
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"

    kube.kubectl("delete", "-n", ns, "quasarvalidator/v1", "--timeout=60s")
    paths = ["statefulset/v1-validator", "service/v1-validator"]
    assert kube.kubectl("get", "-n", ns, *paths, "--ignore-not-found", "-o", "name").stdout == ""


# ------------------------------------------------------------------------------------------ placement


def pools_status(kube: Kube, namespace: str, name: str) -> dict[str, Obj]:
    status = get(kube, "-n", namespace, f"quasarminer/{name}").get("status") or {}
    return {pool["name"]: pool for pool in status.get("pools") or []}


def unschedulable(pod: Obj) -> bool:
    return any(
        (c["type"], c["status"], c.get("reason")) == ("PodScheduled", "False", "Unschedulable")
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def test_a_full_pool_leaves_pods_unschedulable_and_the_miner_spills(
    kube: Kube, placing_operator: Operator
) -> None:
    operator = placing_operator
    ns = operator.namespace
    h100 = next(pool for pool in k8s.POOLS if pool.name == "h100")
    # Every h100 GPU taken by someone else's pod.
    apply(kube, blocker(ns, "h100", h100.gpus_per_node))
    kube.kubectl("rollout", "status", "-n", ns, "deployment/blocker-h100", "--timeout=90s")

    # h100 first; a pool with node autoscaling counts no free GPUs (a node may be added), so the operator
    # places there and only the scheduler can say it is full.
    pools = [
        {"name": "h100", "nodeSelector": {k8s.POOL_LABEL: "h100"}, "maxReplicas": 2, "nodeAutoscaling": True},
        {"name": "a100", "nodeSelector": {k8s.POOL_LABEL: "a100"}, "maxReplicas": 2},
    ]
    apply(kube, miner(operator, pod={}, placement={"pools": pools, "spillAfterSeconds": 5}))

    def waiting_on_h100() -> bool:
        pods = [p for p in gpu_pods(kube, ns, "m1") if p["metadata"]["name"].startswith("m1-miner-h100-")]
        return any(unschedulable(p) for p in pods)

    eventually("a replica Unschedulable on h100", waiting_on_h100, timeout=60)
    eventually(
        "spilled to a100",
        lambda: (
            {k: (v["desired"], v["ready"]) for k, v in pools_status(kube, ns, "m1").items()}
            == {"h100": (0, 0), "a100": (1, 1)}
        ),
        timeout=90,
    )
    status = pools_status(kube, ns, "m1")
    assert status["h100"]["fullSince"]
    assert status["h100"]["spills"] >= 1
    (pod,) = gpu_pods(kube, ns, "m1")
    nodes = {n["metadata"]["name"]: n for n in get(kube, "nodes")["items"]}
    assert nodes[pod["spec"]["nodeName"]]["metadata"]["labels"][k8s.POOL_LABEL] == "a100"
    warnings = get(kube, "events", "-n", ns, "--field-selector", "involvedObject.name=m1,type=Warning")[
        "items"
    ]
    assert "PoolFull" in {e["reason"] for e in warnings}
    kube.kubectl("wait", "-n", ns, "quasarminer/m1", "--for=condition=Ready", "--timeout=60s")


def blocker(namespace: str, pool: str, gpus: int) -> Obj:
    """Someone else's pod holding `gpus` of `pool`'s GPUs."""
    return gpu_deployment(namespace, f"blocker-{pool}", pool, gpus)


def no_gpus_taken_elsewhere(kube: Kube, namespace: str) -> bool:
    """No pod outside `namespace` holds GPUs (earlier tests' namespaces are deleted without waiting)."""
    pods = get(kube, "pods", "-A")["items"]
    return not [
        p
        for p in pods
        if p["metadata"]["namespace"] != namespace
        and any(k8s.GPU in (c.get("resources") or {}).get("limits", {}) for c in p["spec"]["containers"])
    ]


def leave_two_gpus_on_h100(kube: Kube, namespace: str) -> None:
    """Room for two one-GPU replicas on h100, the rest held by someone else's pod (earlier tests' gone)."""
    eventually("GPUs free of earlier tests", lambda: no_gpus_taken_elsewhere(kube, namespace))
    h100 = next(p for p in k8s.POOLS if p.name == "h100")
    apply(kube, blocker(namespace, "h100", h100.gpus_per_node - 2))
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/blocker-h100", "--timeout=90s")


def pool(name: str, max_replicas: int, **extra: Any) -> Obj:
    return {"name": name, "nodeSelector": {k8s.POOL_LABEL: name}, "maxReplicas": max_replicas, **extra}


def pairs(kube: Kube, namespace: str, name: str) -> dict[str, tuple[int, int]]:
    """Each pool's (desired, ready) in the miner's status."""
    return {k: (v["desired"], v["ready"]) for k, v in pools_status(kube, namespace, name).items()}


def pod_pools(kube: Kube, namespace: str, name: str) -> list[str]:
    nodes = {
        n["metadata"]["name"]: n["metadata"]["labels"][k8s.POOL_LABEL] for n in get(kube, "nodes")["items"]
    }
    return sorted(
        nodes[p["spec"]["nodeName"]] for p in gpu_pods(kube, namespace, name) if p["spec"].get("nodeName")
    )


def test_replicas_fill_the_first_pool_by_its_free_gpus_then_the_next(
    kube: Kube, placing_operator: Operator
) -> None:
    operator = placing_operator
    ns = operator.namespace
    leave_two_gpus_on_h100(kube, ns)
    placement = {"pools": [pool("h100", 4), pool("a100", 4)], "spillAfterSeconds": 60}
    apply(kube, miner(operator, pod={}, replicas=3, placement=placement))
    eventually(
        "2 on h100 (its free GPUs), 1 on a100",
        lambda: pairs(kube, ns, "m1") == {"h100": (2, 2), "a100": (1, 1)},
        timeout=90,
    )
    assert pools_status(kube, ns, "m1")["h100"]["free"] == 0
    assert pod_pools(kube, ns, "m1") == ["a100", "h100", "h100"]
    # Nothing was sent where it could not run: the operator counted the GPUs as the scheduler does.
    assert not [p for p in gpu_pods(kube, ns, "m1") if unschedulable(p)]
    body = get(kube, "-n", ns, "quasarminer/m1")
    assert (body["status"]["readyReplicas"], body["status"]["unplaced"]) == (3, 0)

    # Deleting the miner deletes every pool's Deployment.
    kube.kubectl("delete", "-n", ns, "quasarminer/m1", "--timeout=60s")
    for name in ("m1-miner-h100", "m1-miner-a100"):
        assert not kube.kubectl("get", "-n", ns, f"deployment/{name}", "--ignore-not-found").stdout


def test_miners_planning_at_once_do_not_count_the_same_free_gpus(
    kube: Kube, placing_operator: Operator
) -> None:
    operator = placing_operator
    ns = operator.namespace
    leave_two_gpus_on_h100(kube, ns)
    placement = {"pools": [pool("h100", 2), pool("a100", 4)], "spillAfterSeconds": 60}
    bodies = [miner(operator, name, pod={}, replicas=2, placement=placement) for name in ("m1", "m2")]
    kube.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": bodies}))
    eventually(
        "both miners ready",
        lambda: all(ready_replicas(kube, ns, name, 2) for name in ("m1", "m2")),
        timeout=90,
    )
    assert sorted(pod_pools(kube, ns, "m1") + pod_pools(kube, ns, "m2")) == ["a100", "a100", "h100", "h100"]
    # No pod was sent to a pool the other miner had just filled.
    assert not [p for name in ("m1", "m2") for p in gpu_pods(kube, ns, name) if unschedulable(p)]


def test_external_mode_follows_spec_replicas_within_bounds_and_never_writes_them(
    kube: Kube, operator: Operator
) -> None:
    ns = operator.namespace
    autoscaling = {"mode": "external", "minReplicas": 1, "maxReplicas": 3}
    apply(kube, miner(operator, replicas=2, autoscaling=autoscaling))
    eventually("two ready", lambda: ready_replicas(kube, ns, "m1", 2), timeout=90)
    kube.kubectl("scale", "-n", ns, "quasarminer/m1", "--replicas=50")  # what an HPA does
    eventually("clamped to maxReplicas", lambda: ready_replicas(kube, ns, "m1", 3), timeout=90)
    kube.kubectl("scale", "-n", ns, "quasarminer/m1", "--replicas=0")
    eventually("clamped to minReplicas", lambda: ready_replicas(kube, ns, "m1", 1), timeout=90)
    body = with_fields(kube, ns, "quasarminer/m1")
    assert body["spec"]["replicas"] == 0  # the HPA's value stays; the operator decided in the status
    assert body["status"]["desiredReplicas"] == 1
    # Of the spec, the operator's managers (kopf, its status) own nothing: the user and the scaler do.
    for entry in body["metadata"]["managedFields"]:
        if entry["manager"] == "kopf":
            assert "f:spec" not in entry["fieldsV1"], entry


def test_a_missing_secret_degrades_until_created_and_a_restart_picks_up_changes(
    cluster: k8s.Cluster, kube: Kube, operator: Operator, tmp_path: Path
) -> None:
    ns = operator.namespace
    apply(kube, miner(operator, wallet={"secretName": "later"}))
    eventually("SecretMissing", lambda: condition_is(kube, ns, "m1", "Degraded", "True"))
    degraded = conditions(get(kube, "-n", ns, "quasarminer/m1"))["Degraded"]
    assert degraded["reason"] == "SecretMissing"
    assert f"Secret {ns}/later does not exist" in degraded["message"]
    assert not kube.kubectl("get", "-n", ns, "deployment/m1-miner", "--ignore-not-found").stdout
    kube.kubectl(
        "create", "secret", "generic", "later", "-n", ns,
        "--from-literal=hotkey={}", "--from-literal=coldkeypub.txt={}",
    )  # fmt: skip
    kube.kubectl("wait", "-n", ns, "quasarminer/m1", "--for=condition=Ready", "--timeout=90s")

    # Changed while no operator runs: the next one picks it up, and converges without duplicates.
    operator.stop()
    model = "Qwen/Qwen2.5-14B-Instruct-1M"
    kube.kubectl(
        "patch",
        "-n",
        ns,
        "quasarminer/m1",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"model": {"id": model}}}),
    )
    operator.restart()
    eventually(
        "the new model in the Deployment",
        lambda: (
            model
            in get(kube, "-n", ns, "deployment/m1-miner")["spec"]["template"]["spec"]["containers"][0]["args"]
        ),
        timeout=90,
    )
    eventually(
        "generation 2 observed",
        lambda: get(kube, "-n", ns, "quasarminer/m1")["status"]["observedGeneration"] == 2,
    )
    # A deleted child is re-created by the drift timer.
    before = get(kube, "-n", ns, "service/m1-miner-metrics")["metadata"]["uid"]
    kube.kubectl("delete", "-n", ns, "service/m1-miner-metrics")
    eventually(
        "the Service re-created",
        lambda: (
            (
                found := kube.kubectl(
                    "get", "-n", ns, "service/m1-miner-metrics", "--ignore-not-found", "-o", "json"
                ).stdout
            )
            != ""
            and json.loads(found)["metadata"]["uid"] != before
        ),
    )
    names = [d["metadata"]["name"] for d in get(kube, "deployments", "-n", ns)["items"]]
    assert sorted(n for n in names if n.startswith("m1-")) == ["m1-miner"]
