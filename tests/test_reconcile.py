"""The reconcile pipeline and the status it computes, without kopf or an API server (a dict stands in)."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

import kopf
import pytest
from quasar_operator.apply import ApiError, KubeApi, differs, matches, object_path, without_nulls
from quasar_operator.cli import parse
from quasar_operator.handlers import Client, drifts_only, scales_itself
from quasar_operator.reconcile import (
    Resource,
    Result,
    children,
    owned_by,
    reconcile_miner,
    reconcile_validator,
)
from quasar_operator.scaling import ScalingState
from quasar_operator.settings import Settings
from quasar_operator.status import Failure, Workload, compute

from tests import malformed
from tests.k8s_emulator import free_port

Obj = dict[str, Any]
T = TypeVar("T")
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


class FakeApi:
    """Objects by path; `apply` records the order, `fail` makes applying one kind raise."""

    def __init__(self, objects: dict[str, Obj] | None = None, fail: str = "") -> None:
        self.objects = dict(objects or {})
        self.applied: list[str] = []
        self.fail = fail

    async def get(self, path: str) -> Obj | None:
        # A Secret's values are never read: only its metadata (below).
        assert "/secrets/" not in path, f"read a Secret whole: {path}"
        return self.objects.get(path)

    async def get_metadata(self, path: str) -> Obj | None:
        found = self.objects.get(path)
        return None if found is None else dict(found.get("metadata") or {})

    async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[Obj]:
        prefix = path + "/"
        return [
            obj
            for key, obj in self.objects.items()
            if key.startswith(prefix) and matches(obj, label_selector or {})
        ]

    async def merge_patch(self, path: str, patch: Obj) -> Obj | None:
        raise AssertionError(f"unexpected patch of {path}")

    async def delete(self, path: str) -> bool:
        return self.objects.pop(path, None) is not None

    async def apply(self, desired: Obj) -> Obj:
        if desired["kind"] == self.fail:
            raise ApiError(500, "etcd is on fire")
        meta = desired["metadata"]
        path = object_path(desired["kind"], meta["namespace"], meta["name"])
        self.applied.append(path)
        live = {**self.objects.get(path, {}), **desired}
        self.objects[path] = live
        return live


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


WALLET = object_path("Secret", "ns", "wallet")


def with_wallet(**objects: Obj) -> FakeApi:
    return FakeApi({WALLET: {"kind": "Secret"}, **objects})


def miner(spec: Obj | None = None, name: str = "m1", conditions: list[Obj] | None = None) -> Resource:
    base: Obj = {
        "model": {"id": "org/model"},
        "wallet": {"secretName": "wallet"},
        "subnet": {"netuid": 7},
        "exposure": {"externalIP": "203.0.113.7"},
    }
    status = {"conditions": conditions} if conditions else None
    return Resource(name, "ns", "uid-1", 3, {**base, **(spec or {})}, status)


def by_type(result: Result) -> dict[str, Obj]:
    return {c["type"]: c for c in result.status["conditions"]}


def test_miner_applies_every_object_service_before_deployment() -> None:
    api = with_wallet()
    result = run(reconcile_miner(api, miner(), NOW, ScalingState()))
    assert result.failure is None
    assert api.applied == [
        object_path("PersistentVolumeClaim", "ns", "m1-miner-cache"),
        object_path("Service", "ns", "m1-miner-metrics"),
        object_path("PodDisruptionBudget", "ns", "m1-miner"),
        object_path("Service", "ns", "m1-miner"),
        object_path("Deployment", "ns", "m1-miner"),
    ]
    status = result.status
    assert status["observedGeneration"] == 3
    assert status["endpoint"] == "203.0.113.7:8091"
    assert status["selector"] == (
        "app.kubernetes.io/name=quasar-miner,app.kubernetes.io/instance=m1,quasar.ai/miner=m1"
    )
    assert (status["replicas"], status["readyReplicas"]) == (0, 0)
    conditions = by_type(result)
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Progressing", "Degraded", "Reconciled"]
    assert {t: (c["status"], c["reason"]) for t, c in conditions.items()} == {
        "Ready": ("False", "ReplicasNotReady"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
        "Reconciled": ("True", "Applied"),
    }
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == NOW for c in conditions.values())


def test_miner_ready_when_the_deployment_reports_ready_pods() -> None:
    deployment = object_path("Deployment", "ns", "m1-miner")
    ready = {"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    result = run(
        reconcile_miner(with_wallet(**{deployment: ready}), miner({"replicas": 2}), NOW, ScalingState())
    )
    conditions = by_type(result)
    assert (conditions["Ready"]["status"], conditions["Ready"]["message"]) == ("True", "2/2 replicas ready")
    assert conditions["Progressing"]["reason"] == "RolloutComplete"


def test_a_placed_miners_status_reads_back_as_written_so_a_second_reconcile_writes_nothing() -> None:
    # A pool with node autoscaling has no known free room, and a pool never full has no fullSince: both
    # unset. The API server stores no nulls, so the status it returns must compare equal to the next one.
    pools = [
        {"name": "h100", "nodeSelector": {"pool": "h100"}, "maxReplicas": 2, "nodeAutoscaling": True},
        {"name": "a100", "nodeSelector": {"pool": "a100"}, "maxReplicas": 2},
    ]
    spec = {"placement": {"pools": pools}, "cache": {"accessMode": "ReadWriteMany"}}
    api, scaling = with_wallet(), ScalingState()
    first = run(reconcile_miner(api, miner(spec), NOW, scaling))
    assert first.failure is None
    assert [set(pool) >= {"name", "desired", "ready"} for pool in first.status["pools"]] == [True, True]
    # (The second reconcile counts the first one's pods as pending: no controller makes them here.)
    second = run(reconcile_miner(api, replace(miner(spec), status=without_nulls(first.status)), NOW, scaling))
    stored = without_nulls(second.status)
    third = run(reconcile_miner(api, replace(miner(spec), status=stored), NOW, scaling))
    assert not differs(third.status, stored)


def test_invalid_spec_names_the_field_and_applies_nothing() -> None:
    api = with_wallet()
    result = run(reconcile_miner(api, miner({"subnet": {"netuid": -1}}), NOW, ScalingState()))
    assert result.failure is not None
    assert result.failure.reason == "InvalidSpec"
    assert result.failure.message.startswith("spec.subnet.netuid: ")
    assert not result.retry  # only a new generation can fix it
    assert api.applied == []
    conditions = by_type(result)
    assert (conditions["Degraded"]["status"], conditions["Reconciled"]["status"]) == ("True", "False")
    assert conditions["Degraded"]["message"] == result.failure.message


def test_every_invalid_field_is_reported() -> None:
    result = run(
        reconcile_miner(with_wallet(), miner({"subnet": {"netuid": -1}, "replicas": -2}), NOW, ScalingState())
    )
    assert result.failure is not None
    assert "spec.subnet.netuid: " in result.failure.message
    assert "; spec.replicas: " in result.failure.message


def test_a_name_too_long_for_the_objects_is_invalid() -> None:
    result = run(reconcile_miner(with_wallet(), miner(name="m" * 50), NOW, ScalingState()))
    assert result.failure is not None
    assert result.failure.message.startswith("metadata.name: ")


def test_missing_wallet_secret_is_retried_and_applies_nothing() -> None:
    api = FakeApi()
    result = run(reconcile_miner(api, miner(), NOW, ScalingState()))
    assert result.failure == Failure(
        "SecretMissing", "spec.wallet.secretName: Secret ns/wallet does not exist"
    )
    assert result.retry
    assert api.applied == []


def wallet_secret(*keys: str, manager_sections: tuple[str, ...] = ("f:data",)) -> Obj:
    """A wallet Secret's metadata as the API server records it: its data key names in managedFields."""
    fields: Obj = {section: {f"f:{key}": {} for key in keys} for section in manager_sections}
    return {"metadata": {"managedFields": [{"manager": "kubectl", "fieldsV1": {**fields, "f:type": {}}}]}}


@pytest.mark.parametrize(
    ("keys", "reason", "named"),
    [
        (("hotkey", "coldkeypub.txt", "coldkey"), "SecretHasColdkey", "coldkey: remove it"),
        (("hotkey", "coldkeypub.txt", "my-coldkey.json"), "SecretHasColdkey", "my-coldkey.json"),
        (("coldkeypub.txt",), "SecretIncomplete", "has no key hotkey"),
        (("hotkey",), "SecretIncomplete", "has no key coldkeypub.txt"),
    ],
)
def test_a_wallet_secret_with_a_coldkey_or_without_a_key_is_refused(
    keys: tuple[str, ...], reason: str, named: str
) -> None:
    api = FakeApi({WALLET: wallet_secret(*keys)})
    result = run(reconcile_miner(api, miner(), NOW, ScalingState()))
    assert result.failure is not None
    assert (result.failure.reason, result.retry) == (reason, True)  # fixing the Secret brings no event
    assert result.failure.message.startswith("spec.wallet.secretName: Secret ns/wallet ")
    assert named in result.failure.message
    assert api.applied == []


def test_a_wallet_secret_is_known_by_its_key_names_only() -> None:
    # FakeApi.get refuses to read a Secret whole: the check sees only the names in managedFields.
    secrets: list[Obj] = [
        wallet_secret("hotkey", "coldkeypub.txt"),
        wallet_secret("hotkey", "coldkeypub.txt", manager_sections=("f:stringData",)),
        {"metadata": {}},  # no field records: keys unknown, the pods mount only their two items anyway
        wallet_secret("hotkey", manager_sections=()),
    ]
    for secret in secrets:
        result = run(reconcile_miner(FakeApi({WALLET: secret}), miner(), NOW, ScalingState()))
        assert result.failure is None, secret


def test_a_deployment_that_cannot_be_built_degrades_after_the_services() -> None:
    api = with_wallet()
    result = run(reconcile_miner(api, miner({"engine": {"port": 8091}}), NOW, ScalingState()))
    assert result.failure is not None
    assert result.failure.message.startswith("spec.engine.port: ")
    assert object_path("Deployment", "ns", "m1-miner") not in api.applied


def test_load_balancer_without_an_address_waits_for_it() -> None:
    spec: Obj = {"exposure": {}}
    api = with_wallet()
    result = run(reconcile_miner(api, miner(spec), NOW, ScalingState()))
    assert result.failure is None
    assert result.status["endpoint"] is None
    assert object_path("Deployment", "ns", "m1-miner") not in api.applied
    assert by_type(result)["Progressing"]["reason"] == "AddressPending"
    assert by_type(result)["Reconciled"]["status"] == "True"

    # The cloud assigns the address: the next reconcile announces it.
    service = api.objects[object_path("Service", "ns", "m1-miner")]
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}]}}
    result = run(reconcile_miner(api, miner(spec), NOW, ScalingState()))
    assert result.status["endpoint"] == "198.51.100.4:8091"
    assert object_path("Deployment", "ns", "m1-miner") in api.applied


def test_api_errors_are_retried() -> None:
    failing = run(reconcile_miner(FakeApi({WALLET: {}}, fail="Deployment"), miner(), NOW, ScalingState()))
    assert failing.failure is not None
    assert (failing.failure.reason, failing.retry) == ("ApiError", True)
    assert "etcd is on fire" in failing.failure.message


def test_an_existing_claim_is_neither_created_nor_cleaned_up() -> None:
    api = with_wallet()
    run(reconcile_miner(api, miner({"cache": {"existingClaim": "models"}}), NOW, ScalingState()))
    assert not any("persistentvolumeclaims" in path for path in api.applied)
    assert object_path("PersistentVolumeClaim", "ns", "models") not in children("QuasarMiner", "m1", "ns")


def test_validator_applies_service_then_statefulset() -> None:
    api = with_wallet()
    resource = Resource("v1", "ns", "uid-2", 1, {"wallet": {"secretName": "wallet"}, "subnet": {"netuid": 7}})
    result = run(reconcile_validator(api, resource, NOW, ScalingState()))
    assert result.failure is None
    assert api.applied == [
        object_path("Service", "ns", "v1-validator"),
        object_path("StatefulSet", "ns", "v1-validator"),
    ]
    assert by_type(result)["Ready"]["message"] == "0/1 replicas ready"
    assert "endpoint" not in result.status


def test_validator_invalid_spec() -> None:
    resource = Resource("v1", "ns", "uid-2", 1, {"wallet": {"secretName": "wallet"}})
    result = run(reconcile_validator(with_wallet(), resource, NOW, ScalingState()))
    assert result.failure is not None
    assert result.failure.message.startswith("spec.subnet: ")


def test_every_malformed_object_names_its_field() -> None:
    """Every generated malformed object (tests/malformed.py: each field of spec and status, at every depth, of
    each JSON type its schema forbids, and unknown fields) through the pipeline and the timers' filters: a
    failure naming the field, nothing raised. tests/test_operator.py runs a sample on the real operator."""
    cases = malformed.all_cases("ns")
    wrong: list[str] = []
    for case in cases:
        body = {**case.body, "metadata": {"name": "bad", "namespace": "ns", "uid": "uid-1", "generation": 2}}
        pipeline = reconcile_miner if body["kind"] == "QuasarMiner" else reconcile_validator
        api = FakeApi(
            {object_path("Secret", "ns", name): {} for name in ("miner-wallet", "validator-wallet")}
        )
        result = run(pipeline(api, Resource.from_body(body), NOW, ScalingState()))
        view = kopf.Body(cast(kopf.RawBody, body))
        timers = {scales_itself(view), drifts_only(view)}
        failure = result.failure
        spec_fault = case.field.startswith("spec")
        if (
            failure is None
            or case.field not in failure.message
            or failure.reason != ("InvalidSpec" if spec_fault else "InvalidStatus")
            # A bad spec waits for the user's fix; a bad status is replaced whole and reconciled again.
            or (result.retry, result.replace_status) != (not spec_fault, not spec_fault)
            or by_type(result)["Degraded"]["message"] != failure.message
            or timers != {True, False}
        ):
            wrong.append(f"{case.name}: {failure}")
    assert len(cases) > 1000
    assert wrong == []


def test_strict_types_no_bool_for_int() -> None:
    # pydantic's lax mode took `true` for 1 and "2" for 2; the CRD's schema takes neither.
    for replicas in (True, "2", 2.0):
        result = run(reconcile_miner(with_wallet(), miner({"replicas": replicas}), NOW, ScalingState()))
        assert result.failure is not None
        assert result.failure.message.startswith("spec.replicas: must be an integer, not ")
    # A quantity is an integer or a string (int-or-string), not a fraction.
    result = run(reconcile_miner(with_wallet(), miner({"cache": {"size": 0.5}}), NOW, ScalingState()))
    assert result.failure is not None
    assert result.failure.message.startswith("spec.cache.size: ")
    # A whole number is a valid float (JSON does not tell 2 from 2.0).
    scaled = {"autoscaling": {"maxReplicas": 2, "target": 3}}
    assert run(reconcile_miner(with_wallet(), miner(scaled), NOW, ScalingState())).failure is None


def test_a_long_list_of_errors_is_cut_short() -> None:
    result = run(
        reconcile_miner(with_wallet(), miner({"neuron": {"args": list(range(50))}}), NOW, ScalingState())
    )
    assert result.failure is not None
    assert result.failure.message.count("spec.neuron.args[") == 10
    assert result.failure.message.endswith("; and 40 more")


def test_transition_time_kept_while_a_condition_holds() -> None:
    first = compute(generation=1, previous=[], now=NOW, workload=Workload(1, 1, 0, 1))
    same = compute(generation=2, previous=first["conditions"], now=LATER, workload=Workload(1, 1, 0, 1))
    flipped = compute(generation=2, previous=same["conditions"], now=LATER, workload=Workload(1, 1, 1, 1))
    ready = {c["type"]: c for c in same["conditions"]}["Ready"]
    assert (ready["lastTransitionTime"], ready["observedGeneration"]) == (NOW, 2)
    ready = {c["type"]: c for c in flipped["conditions"]}["Ready"]
    assert (ready["status"], ready["lastTransitionTime"]) == ("True", LATER)


@pytest.mark.parametrize(
    ("workload", "rolled_out"),
    [
        (Workload(desired=2, replicas=2, ready=2, updated=2), True),
        (Workload(desired=2, replicas=3, ready=2, updated=2), False),  # an old pod still runs
        (Workload(desired=2, replicas=2, ready=2, updated=1), False),
        (Workload(desired=0, replicas=0, ready=0, updated=0), True),
    ],
)
def test_rolled_out(workload: Workload, rolled_out: bool) -> None:
    assert workload.rolled_out is rolled_out


def test_cleanup_targets_and_ownership() -> None:
    assert children("QuasarValidator", "v1", "ns") == [
        object_path("StatefulSet", "ns", "v1-validator"),
        object_path("Service", "ns", "v1-validator"),
    ]
    assert len(children("QuasarMiner", "m1", "ns")) == 5
    mine = {"metadata": {"ownerReferences": [{"uid": "uid-1"}]}}
    assert owned_by(mine, "uid-1")
    assert not owned_by(mine, "uid-2")
    assert not owned_by({"metadata": {}}, "uid-1")


def test_differs_looks_only_at_the_fields_set() -> None:
    live = {"spec": {"replicas": 1, "paused": False}, "status": {"readyReplicas": 1}}
    assert not differs({"spec": {"replicas": 1}}, live)
    assert differs({"spec": {"replicas": 2}}, live)
    assert differs({"spec": {"ports": [1]}}, live)
    assert differs({"metadata": {"labels": {"a": "b"}}}, live)


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {"QUASAR_OPERATOR_NAMESPACES": "a, b", "QUASAR_OPERATOR_DRIFT_INTERVAL": "5"}
    )
    assert (settings.namespaces, settings.drift_interval) == (("a", "b"), 5.0)
    assert Settings.from_env({}).namespaces is None
    assert (settings.finalizer, settings.annotation_prefix, settings.field_manager) == (
        "quasar.ai/finalizer",
        "quasar.ai",
        "quasar-operator",
    )


def test_command_line_overrides_the_environment() -> None:
    env = {"QUASAR_OPERATOR_NAMESPACES": "a", "QUASAR_OPERATOR_DRIFT_INTERVAL": "5"}
    settings, verbose = parse(["run", "-n", "x", "-n", "y", "--metrics-port", "9999"], "quasar operator", env)
    assert (settings.namespaces, settings.metrics_port, settings.drift_interval, verbose) == (
        ("x", "y"),
        9999,
        5.0,
        False,
    )
    assert parse(["run", "--all-namespaces"], "quasar operator", env)[0].namespaces is None
    assert parse(["run"], "quasar operator", env)[0].namespaces == ("a",)


def test_a_new_login_reopens_the_operators_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kubelet rotates the service account's token; kopf logs in again on a 401.
    logins = iter(
        [
            kopf.ConnectionInfo(server="http://api", token="1"),
            kopf.ConnectionInfo(server="http://api", token="2"),
        ]
    )
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: next(logins))
    client = Client(Settings(), None)

    async def scenario() -> None:
        await client.login(kopf.OperatorSettings())
        first = client.api
        assert client.api is first  # kept while the credentials hold
        await client.login(kopf.OperatorSettings())
        assert client.api is not first
        assert first.session.closed
        assert client.api.session.headers["Authorization"] == "Bearer 2"
        await client.close()

    run(scenario())


def test_an_unreachable_api_server_is_an_api_error() -> None:
    async def scenario() -> None:
        api = KubeApi.connect(kopf.ConnectionInfo(server="http://127.0.0.1:1"), timeout=5, user_agent="t")
        try:
            with pytest.raises(ApiError, match="GET /api/v1"):
                await api.get("/api/v1")
        finally:
            await api.close()

    run(scenario())


# -------------------------------------------------------------------------------------------- no cluster

QUASAR = Path(sys.executable).with_name("quasar")


def _bare_env(home: Path) -> dict[str, str]:
    """An environment with nothing in it but an empty home: no KUBECONFIG, no ~/.kube/config."""
    return {"HOME": str(home), "PATH": os.defpath}


def _operator_command(*flags: str) -> list[str]:
    # Ports of its own, so that a run never collides with another operator on this machine.
    ports = ["--metrics-port", str(free_port()), "--liveness-port", str(free_port())]
    return [str(QUASAR), "operator", "run", *ports, *flags]


def test_no_cluster_is_one_line_and_a_failure(tmp_path: Path) -> None:
    done = subprocess.run(
        _operator_command(), env=_bare_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("quasar operator: no Kubernetes cluster found: ")
    for looked in ("in-cluster service account", "KUBECONFIG not set", str(tmp_path / ".kube" / "config")):
        assert looked in line
    assert "--wait-for-cluster" in line

    # A KUBECONFIG that names no file is said so, on one line too.
    env = {**_bare_env(tmp_path), "KUBECONFIG": str(tmp_path / "nowhere")}
    done = subprocess.run(
        _operator_command(), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    (line,) = done.stderr.splitlines()
    assert str(tmp_path / "nowhere") in line


def test_wait_for_cluster_keeps_trying(tmp_path: Path) -> None:
    waiting = subprocess.Popen(
        _operator_command("--wait-for-cluster"), env=_bare_env(tmp_path), stderr=subprocess.PIPE, text=True
    )
    try:
        assert waiting.stderr is not None
        # It retries the login, one line each time, rather than exiting.
        for line in waiting.stderr:
            if "failed temporarily: no Kubernetes cluster found" in line:
                break
        else:
            raise AssertionError(f"exited with {waiting.wait()} without retrying the login")
        assert waiting.poll() is None
    finally:
        waiting.terminate()
        waiting.wait(timeout=30)
