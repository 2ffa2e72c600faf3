"""The Helm chart charts/quasar, rendered by the real helm (`make install` puts it in the venv).

Every rendered manifest is checked as the API server of the oldest targeted Kubernetes would check it:
`kubernetes-validate` for built-in kinds, the CRDs' own schemas and CEL rules for QuasarMiners and
QuasarValidators. The operator's command line is parsed by the operator's own parser.
"""

import functools
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from quasar_operator import cli, crds, metrics
from quasar_operator.models import NEURON_IMAGE, TGI_IMAGE, QuasarMiner, QuasarValidator
from quasar_operator.settings import Settings

import quasar_cli
from tests.test_crds import EXAMPLES, KUBERNETES_VERSION, api_server_errors, load
from tests.tools import HELM, REPO, assert_clean, checkov, require

Obj = dict[str, Any]
CHART = REPO / "charts" / "quasar"
EXAMPLE = CHART / "examples" / "miner-and-validator.yaml"
RELEASE = "quasar"
NAMESPACE = "quasar-system"
MODELS: dict[str, type[QuasarMiner] | type[QuasarValidator]] = {
    "QuasarMiner": QuasarMiner,
    "QuasarValidator": QuasarValidator,
}


def custom_resource(path: Path) -> Obj:
    """A `miners:`/`validators:` item from a CRD example."""
    body = load(path)
    return {
        "name": body["metadata"]["name"],
        "namespace": body["metadata"]["namespace"],
        "spec": body["spec"],
    }


# Every value set to something other than its default (but operator.clusterWide, which excludes
# watchNamespaces: its own scenario).
EVERYTHING: Obj = {
    "operator": {
        "image": {
            "repository": "registry.example.com:5000/quasar/operator",
            "tag": "v0.2.0-rc.1",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "watchNamespaces": ["miners", "validators"],
        "driftIntervalSeconds": 15,
        "retryDelaySeconds": 5.5,
        "watchServerTimeoutSeconds": 120,
        "watchClientTimeoutSeconds": 150,
        "livenessPort": 18080,
        "metricsPort": 19090,
        "verbose": True,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 1000700000, "fsGroup": 1000700000},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
        "podAnnotations": {"example.com/team": "subnet"},
        "podLabels": {"example.com/tier": "control"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccount": {"create": True, "name": "quasar-operator", "annotations": {"example.com/iam": "x"}},
    "rbac": {"create": True, "listPodsClusterWide": True},
    "metrics": {
        "service": {"enabled": True, "port": 8000, "annotations": {"prometheus.io/scrape": "true"}},
        "serviceMonitor": {
            "enabled": True,
            "interval": "15s",
            "labels": {"release": "kube-prometheus-stack"},
        },
        "prometheusRule": {
            "enabled": True,
            "for": "5m",
            "validatorWeightsMaxAgeSeconds": 3600,
            "labels": {"release": "kube-prometheus-stack"},
        },
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "monitoring",
            "labels": {"team": "subnet"},
            "annotations": {"grafana_folder": "QUASAR"},
        },
    },
    "images": {
        "engine": "ghcr.io/huggingface/text-generation-inference:3.3.4",
        "neuron": "ghcr.io/quasar-subnet/quasar@sha256:" + "cd" * 32,
    },
    "miners": [custom_resource(EXAMPLES / "quasarminer-full.yaml")],
    "validators": [
        {
            **custom_resource(EXAMPLES / "quasarvalidator-full.yaml"),
            "labels": {"example.com/team": "validation"},
            "annotations": {"example.com/note": "the chart's resource"},
        }
    ],
}


def set_json(values: Obj) -> tuple[str, ...]:
    return tuple(arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}"))


# Values a release may be installed with, and its namespace: each must lint, render and validate.
SCENARIOS: dict[str, tuple[tuple[str, ...], str]] = {
    "defaults": ((), NAMESPACE),
    "example": (("--values", str(EXAMPLE)), "quasar"),
    "everything": (set_json(EVERYTHING), NAMESPACE),
    "cluster-wide": (set_json({"operator": {"clusterWide": True}}), NAMESPACE),
    "no-rbac-no-metrics": (
        set_json({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}})
        + set_json({"metrics": {"service": {"enabled": False}}}),
        NAMESPACE,
    ),
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require(HELM), *args], capture_output=True, text=True, check=False)


@functools.cache
def rendered(scenario: str) -> list[Obj]:
    args, namespace = SCENARIOS[scenario]
    proc = helm("template", RELEASE, str(CHART), "--namespace", namespace, "--include-crds", *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(objects: list[Obj], kind: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def operator_container(objects: list[Obj]) -> Obj:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


# ------------------------------------------------------------------------------------------ rendering


def lint(*args: str) -> None:
    proc = helm("lint", "--strict", str(CHART), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # helm lint renders with `fail` made harmless: it logs "funcMap fail" and reports success. A template's
    # failure is a failure here.
    assert "funcMap fail" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint(scenario: str) -> None:
    args, namespace = SCENARIOS[scenario]
    lint("--namespace", namespace, *args)


def test_lint_of_the_example_without_a_namespace() -> None:
    # As a newcomer runs it (issue 14): the release's namespace is then `default`, and the example's
    # resources, in the release's namespace, are watched wherever that is.
    lint("--values", str(EXAMPLE))


def test_lint_reports_a_templates_failure() -> None:
    # The check above sees what helm lint would otherwise let pass.
    with pytest.raises(AssertionError, match="funcMap fail"):
        lint(*set_json({"operator": {"livenessPort": 9090}}))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_manifest_validates(scenario: str) -> None:
    for obj in rendered(scenario):
        if obj["kind"] in MODELS:
            assert api_server_errors(obj["kind"], obj) == [], obj["metadata"]["name"]
            MODELS[obj["kind"]].model_validate(obj)
        elif obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # the Prometheus Operator's kinds: tests/test_dashboards.py checks them
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_default_install() -> None:
    kinds = sorted(o["kind"] for o in rendered("defaults"))
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "Pod",  # the helm test hook
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for obj in rendered("defaults"):
        if obj["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_without_rbac_and_metrics_the_existing_account_is_used() -> None:
    objects = rendered("no-rbac-no-metrics")
    assert sorted(o["kind"] for o in objects) == ["CustomResourceDefinition"] * 2 + ["Deployment"]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# ------------------------------------------------------------------------------------------ CRDs


def test_the_chart_ships_the_generated_crds() -> None:
    chart_crds = CHART / "crds"
    assert sorted(p.name for p in chart_crds.iterdir()) == sorted(crds.CRDS)
    for name in crds.CRDS:
        assert (chart_crds / name).read_bytes() == (crds.CRD_DIR / name).read_bytes(), (
            f"charts/quasar/crds/{name} differs from crds/{name}: cp crds/{name} charts/quasar/crds/"
        )
    assert crds.stale(chart_crds) == []


def test_crds_come_from_the_crds_folder_not_templates() -> None:
    # helm installs crds/ before rendering templates, so the chart's own QuasarMiners can be created in the
    # same install; `helm show crds` is what the README's upgrade step pipes to kubectl.
    args, namespace = SCENARIOS["example"]
    proc = helm("template", RELEASE, str(CHART), "--namespace", namespace, *args)
    assert "CustomResourceDefinition" not in {d["kind"] for d in yaml.safe_load_all(proc.stdout) if d}
    shown = helm("show", "crds", str(CHART))
    assert shown.returncode == 0, shown.stderr
    by_name = {d["metadata"]["name"]: d for d in yaml.safe_load_all(shown.stdout) if d}
    assert by_name == {c["metadata"]["name"]: c for c in (crds.miner_crd(), crds.validator_crd())}


# ------------------------------------------------------------------------------------------ the operator


@pytest.mark.parametrize("scenario", ["defaults", "everything"])
def test_operator_deployment(scenario: str) -> None:
    objects = rendered(scenario)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    container = operator_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("metrics", "metrics")
    assert sorted(ports) == ["healthz", "metrics"]


def test_defaults_run_as_the_images_user_with_nothing_writable() -> None:
    pod = one(rendered("defaults"), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert operator_container(rendered("defaults"))["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def operator_settings(objects: list[Obj]) -> tuple[Settings, bool]:
    """What `quasar operator run` makes of the container's arguments and environment."""
    container = operator_container(objects)
    group, *argv = container["args"]
    assert quasar_cli.GROUPS[group][0] == cli.__name__
    env = {e["name"]: e["value"] for e in container["env"]}
    return cli.parse(argv, f"quasar {group}", env)


def test_operator_command_line_defaults() -> None:
    settings, verbose = operator_settings(rendered("defaults"))
    # The release's namespace only; the rest are the operator's defaults (60 s drift, ...).
    assert settings == Settings(namespaces=(NAMESPACE,))
    assert not verbose


def test_operator_command_line_cluster_wide() -> None:
    settings, _ = operator_settings(rendered("cluster-wide"))
    assert settings == Settings(namespaces=None)


def test_operator_command_line_carries_every_value() -> None:
    objects = rendered("everything")
    settings, verbose = operator_settings(objects)
    values = EVERYTHING["operator"]
    assert settings.namespaces == (NAMESPACE, "miners", "validators")
    assert (settings.drift_interval, settings.retry_delay) == (15, 5.5)
    assert (settings.watch_server_timeout, settings.watch_client_timeout) == (120, 150)
    assert (settings.liveness_port, settings.metrics_port) == (18080, 19090)
    assert verbose
    container = operator_container(objects)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"healthz": 18080, "metrics": 19090}
    assert container["image"] == f"{values['image']['repository']}@{values['image']['digest']}"
    assert container["imagePullPolicy"] == "Always"
    pod = one(objects, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["example.com/tier"] == "control"
    assert pod["metadata"]["annotations"] == values["podAnnotations"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod["spec"][key] == values[key]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


# ------------------------------------------------------------------------------------------ custom resources


def test_example_creates_one_miner_and_one_validator_with_the_pinned_images() -> None:
    resources = [o for o in rendered("example") if o["kind"] in MODELS]
    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in resources] == [
        ("QuasarMiner", "qwen-128k", "quasar"),
        ("QuasarValidator", "validator", "quasar"),
    ]
    miner = QuasarMiner.model_validate(resources[0])
    validator = QuasarValidator.model_validate(resources[1])
    assert miner.spec.engine.image == TGI_IMAGE
    assert miner.spec.neuron.image == validator.spec.neuron.image == NEURON_IMAGE
    assert resources[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_a_spec_that_names_its_images_keeps_them() -> None:
    resources = {o["kind"]: o for o in rendered("everything") if o["kind"] in MODELS}
    full_miner = load(EXAMPLES / "quasarminer-full.yaml")
    assert resources["QuasarMiner"]["spec"] == full_miner["spec"]
    validator = resources["QuasarValidator"]
    assert (
        validator["spec"]["neuron"]["image"]
        == load(EXAMPLES / "quasarvalidator-full.yaml")["spec"]["neuron"]["image"]
    )
    assert validator["metadata"]["labels"]["example.com/team"] == "validation"
    assert validator["metadata"]["annotations"] == {"example.com/note": "the chart's resource"}


def test_a_spec_without_images_gets_the_values_images() -> None:
    values = {
        "images": EVERYTHING["images"],
        "miners": [{"name": "m", "spec": load(EXAMPLES / "quasarminer.yaml")["spec"]}],
    }
    proc = helm("template", RELEASE, str(CHART), *set_json(values))
    assert proc.returncode == 0, proc.stderr
    (miner,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "QuasarMiner"]
    assert miner["spec"]["engine"] == {"image": EVERYTHING["images"]["engine"]}
    assert miner["spec"]["neuron"] == {"image": EVERYTHING["images"]["neuron"]}
    assert miner["metadata"]["namespace"] == "default"


def test_values_agree_with_the_operator_and_the_project() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert values["images"] == {"engine": TGI_IMAGE, "neuron": NEURON_IMAGE}
    version = importlib.metadata.version("quasar-subnet")
    assert chart["appVersion"] == values["operator"]["image"]["tag"] == version
    assert NEURON_IMAGE.endswith(f":{version}")
    assert values["miners"] == values["validators"] == []


# ------------------------------------------------------------------------------------------ values schema


def test_values_schema_is_a_valid_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(EVERYTHING)


BAD_VALUES: dict[str, tuple[Obj, str]] = {
    "unknown key": (
        {"operator": {"watchNamespace": ["a"]}},
        "at '/operator': additional properties 'watchNamespace' not allowed",
    ),
    "latest tag": (
        {"operator": {"image": {"repository": "r", "tag": "latest"}}},
        "at '/operator/image/tag': 'latest' does not match pattern",
    ),
    "bad digest": (
        {"operator": {"image": {"digest": "sha256:abc"}}},
        "at '/operator/image/digest': 'sha256:abc'",
    ),
    "pull policy": (
        {"operator": {"image": {"pullPolicy": "Sometimes"}}},
        "at '/operator/image/pullPolicy': value must be one of",
    ),
    "namespace name": (
        {"operator": {"watchNamespaces": ["Miners"]}},
        "at '/operator/watchNamespaces/0': 'Miners' does not match pattern",
    ),
    "repeated namespace": (
        {"operator": {"watchNamespaces": ["a", "a"]}},
        "at '/operator/watchNamespaces': items at 0 and 1 are equal",
    ),
    "port range": ({"operator": {"metricsPort": 70000}}, "at '/operator/metricsPort': maximum: got 70,000"),
    "negative interval": (
        {"operator": {"driftIntervalSeconds": 0}},
        "at '/operator/driftIntervalSeconds': exclusiveMinimum: got 0, want 0",
    ),
    "wrong type": ({"operator": {"verbose": "yes"}}, "at '/operator/verbose': got string, want boolean"),
    "untagged image": ({"images": {"engine": "tgi"}}, "at '/images/engine': 'tgi' does not match pattern"),
    "account without name": (
        {"serviceAccount": {"create": False}},
        "at '/serviceAccount/name': minLength: got 0, want 1",
    ),
    "miner name": (
        {"miners": [{"name": "Qwen", "spec": {}}]},
        "at '/miners/0/name': 'Qwen' does not match pattern",
    ),
    "long validator name": (
        {"validators": [{"name": "v" * 43, "spec": {}}]},
        "at '/validators/0/name': maxLength: got 43, want 42",
    ),
    "miner without spec": ({"miners": [{"name": "m"}]}, "at '/miners/0': missing property 'spec'"),
    "pull secret as string": (
        {"imagePullSecrets": ["regcred"]},
        "at '/imagePullSecrets/0': got string, want object",
    ),
    # Checks a JSON schema cannot express: the templates fail with the values' names.
    "same ports": (
        {"operator": {"livenessPort": 9090}},
        "operator.livenessPort and operator.metricsPort are both 9090: they must differ",
    ),
    "repeated miner": (
        {"miners": [{"name": "m", "spec": {}}, {"name": "m", "spec": {}}]},
        "miners[1] (default/m): a QuasarMiner of that name is already listed",
    ),
    "unwatched namespace": (
        {
            "operator": {"watchNamespaces": ["miners"]},
            "validators": [{"name": "v", "namespace": "x", "spec": {}}],
        },
        "validators[0] (x/v): the operator does not watch namespace x "
        "(it watches default, miners: add it to operator.watchNamespaces)",
    ),
    "scrape interval": (
        {"metrics": {"serviceMonitor": {"interval": "30"}}},
        "at '/metrics/serviceMonitor/interval': '30' does not match pattern",
    ),
    "weights age as a duration": (
        {"metrics": {"prometheusRule": {"validatorWeightsMaxAgeSeconds": "40m"}}},
        "at '/metrics/prometheusRule/validatorWeightsMaxAgeSeconds': got string, want integer",
    ),
    "service monitor without the service": (
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
        "metrics.serviceMonitor.enabled needs metrics.service.enabled",
    ),
    "cluster-wide and a list": (
        {"operator": {"clusterWide": True, "watchNamespaces": ["miners"]}},
        "at '/operator/watchNamespaces': maxItems: got 1, want 0",
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_with_their_message(case: str) -> None:
    values, message = BAD_VALUES[case]
    proc = helm("template", RELEASE, str(CHART), *set_json(values))
    assert proc.returncode == 1, proc.stdout[:500]
    assert message in proc.stderr


# ------------------------------------------------------------------------------------------ helm test, NOTES


def hook_pod(objects: list[Obj]) -> Obj:
    (pod,) = [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    return pod


@pytest.fixture
def metrics_server() -> Iterator[tuple[int, CollectorRegistry]]:
    """A Prometheus endpoint on loopback serving a registry the test fills."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield server.server_port, registry
    server.shutdown()
    thread.join(timeout=5)


def run_test_hook(objects: list[Obj], port: int) -> subprocess.CompletedProcess[str]:
    """The helm test pod's command, run here against `port` instead of the in-cluster Service."""
    (container,) = hook_pod(objects)["spec"]["containers"]
    program, flag, script, _url, *metrics = container["command"]
    assert (program, flag) == ("python", "-c")
    url = f"http://127.0.0.1:{port}/metrics"
    return subprocess.run(
        [sys.executable, "-c", script, url, *metrics], capture_output=True, text=True, timeout=60
    )


def test_helm_test_hook_targets_the_metrics_service() -> None:
    objects = rendered("everything")
    (container,) = hook_pod(objects)["spec"]["containers"]
    service = one(objects, "Service")["metadata"]
    assert container["command"][3] == f"http://{service['name']}.{service['namespace']}.svc:8000/metrics"
    assert container["image"] == operator_container(objects)["image"]


def test_helm_test_hook_passes_on_the_operators_metrics(
    metrics_server: tuple[int, CollectorRegistry],
) -> None:
    port, registry = metrics_server
    # The operator's own metric families.
    for metric in (metrics.RECONCILES, metrics.ERRORS, metrics.DURATION):
        registry.register(metric)
    proc = run_test_hook(rendered("defaults"), port)
    assert proc.returncode == 0, proc.stderr
    assert "the operator exports quasar_operator_reconciles_total" in proc.stdout


def test_helm_test_hook_fails_on_another_server(metrics_server: tuple[int, CollectorRegistry]) -> None:
    port, _empty = metrics_server
    proc = run_test_hook(rendered("defaults"), port)
    assert proc.returncode == 1
    assert "lacks the operator's metrics: quasar_operator_reconciles_total" in proc.stderr


def notes(*args: str) -> str:
    proc = helm("install", RELEASE, str(CHART), "--dry-run=client", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:\n", 1)[1]


def test_notes_give_the_next_steps() -> None:
    defaults = notes("--namespace", NAMESPACE)
    assert f"watches the namespaces {NAMESPACE}." in defaults
    assert "WARNING" not in defaults
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}" in defaults
    assert f"helm test {RELEASE} -n {NAMESPACE}" in defaults
    assert "helm show crds <chart> | kubectl apply --server-side -f -" in defaults
    listed = notes("--namespace", NAMESPACE, *set_json({"operator": {"watchNamespaces": ["miners"]}}))
    assert f"watches the namespaces {NAMESPACE}, miners." in listed
    example = notes("--namespace", "quasar", "--values", str(EXAMPLE))
    assert "watches the namespaces quasar." in example
    assert "created 1 QuasarMiner(s) and 1 QuasarValidator(s)" in example


def test_notes_warn_of_a_cluster_wide_install() -> None:
    cluster_wide = notes("--namespace", NAMESPACE, *SCENARIOS["cluster-wide"][0])
    assert "watches every namespace" in cluster_wide
    assert "WARNING: operator.clusterWide is set" in cluster_wide
    assert "read every Secret and list every Pod" in cluster_wide


# ------------------------------------------------------------------------------------------ checkov


def test_checkov_finds_nothing_unexplained_in_the_rendered_chart(tmp_path: Path) -> None:
    for scenario in SCENARIOS:
        (tmp_path / f"{scenario}.yaml").write_text(yaml.safe_dump_all(rendered(scenario)), encoding="utf-8")
    assert_clean(checkov("kubernetes", tmp_path))
