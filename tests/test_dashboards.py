"""The chart's Grafana dashboard and Prometheus alerts query only what the project really exports.

Every PromQL expression (dashboard panels, PrometheusRule alerts) is read out of the rendered chart, and its
metric names and labels are compared with the /metrics pages of a running operator (against the API server
emulator, reconciling a miner), a running miner, a running engine server (the project's TGI-compatible
server: upstream TGI exports the same tgi_* names, which the operator's autoscaler reads too), the vLLM and
SGLang doubles under load (tests/fake_openai_engines.py: their gauges' names as the engines' source has them,
cited in docs/autoscaling.md) and a running validator (a round over a real miner, then weights on the
FakeChain). So no panel is dead.
"""

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from quasar_operator.builders.miner import POOL_LABEL, miner_metrics_service
from quasar_operator.builders.validator import validator_service
from quasar_operator.models import QuasarMinerSpec, QuasarValidatorSpec

from evaluation.dev_engine.server import start_engine_server
from evaluation.engines import make_engine
from evaluation.local_model import ensure_local_model
from evaluation.tokenizer import load_tokenizer
from neurons import protocol
from neurons.auth import create_wallet
from neurons.chain import FakeChain
from neurons.metrics_server import serve_metrics
from neurons.miner import MinerConfig, start_miner
from neurons.mock import read_answer
from tests.fake_openai_engines import FakeOpenAIEngine, FakeSGLang, FakeVLLM
from tests.k8s_emulator import client, emulator, eventually, operator
from tests.test_chart import CHART, EVERYTHING, NAMESPACE, one, rendered
from tests.test_crds import EXAMPLES, load
from tests.test_validator import config_for, make_validator, subnet

Obj = dict[str, Any]
Exported = dict[str, set[str]]  # series name -> its label names
# Labels Prometheus gives every target of the chart's ServiceMonitors (the Prometheus Operator's own, and
# those the ServiceMonitors ask for: targetLabels, podTargetLabels), and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "namespace", "service", "pod", "container", "endpoint", "le"}
SERVICE_MONITOR_LABELS = {"app_kubernetes_io_instance", re.sub(r"[^a-zA-Z0-9_]", "_", POOL_LABEL)}
# Series Prometheus makes itself for each target.
SYNTHETIC = {"up": set[str]()}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


# ------------------------------------------------------------------------------------------ PromQL


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """Each vector selector's metric name and the label names its matchers use."""
    text = re.sub(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""", '""', expr)  # strings hold no names
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = GROUPING.sub("", text)
    found = []
    # A name starts after no word character or dot: not the unit of a number or duration (0.95, 1h).
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?", text):
        name, matchers, call = match.groups()
        if call or name in KEYWORDS:
            continue  # a function or an aggregation
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip() for _, listed in GROUPING.findall(expr) for label in listed.split(",") if label.strip()
    }


def test_selectors_finds_metrics_not_functions_labels_or_durations() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (kind, le) (rate(a_seconds_bucket{job="x", kind=~"a|b"}[5m])))'
        " or absent(up{job='y'} == 1) and on (pod) b_total offset 1h"
    )
    assert selectors(expr) == [("a_seconds_bucket", {"job", "kind"}), ("up", {"job"}), ("b_total", set())]
    assert grouping_labels(expr) == {"kind", "le", "pod"}


# ------------------------------------------------------------------------------------------ the chart


MONITORING = {"serviceMonitor", "prometheusRule", "grafanaDashboard"}


def dashboard(objects: list[Obj]) -> Obj:
    configmap = one(objects, "ConfigMap")
    (text,) = configmap["data"].values()
    loaded: Obj = json.loads(text)
    return loaded


def expressions() -> dict[str, str]:
    """Every PromQL expression the chart ships, by where it is."""
    objects = rendered("everything")
    found = {}
    for panel in dashboard(objects)["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for group in one(objects, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = rule["expr"]
    return found


def test_monitoring_is_off_by_default_and_everything_turns_it_on() -> None:
    kinds = {o["kind"] for o in rendered("defaults")}
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & kinds
    assert all(EVERYTHING["metrics"][key]["enabled"] for key in MONITORING)


def test_the_dashboard_is_the_charts_json_with_the_sidecar_label() -> None:
    objects = rendered("everything")
    configmap = one(objects, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == EVERYTHING["metrics"]["grafanaDashboard"]["namespace"]
    shipped = json.loads((CHART / "dashboards" / "quasar.json").read_text(encoding="utf-8"))
    assert dashboard(objects) == shipped
    panels = shipped["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    # Every panel asks the dashboard's Prometheus data source, chosen when it is imported.
    assert [v["name"] for v in shipped["templating"]["list"]] == ["datasource"]
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_the_service_monitors_select_the_operators_metrics_services() -> None:
    objects = rendered("everything")
    monitors = {
        o["metadata"]["name"].rsplit("-", 1)[1]: o["spec"] for o in objects if o["kind"] == "ServiceMonitor"
    }
    full = load(EXAMPLES / "quasarminer-full.yaml")
    service = miner_metrics_service("m", "miners", "uid-1", QuasarMinerSpec.model_validate(full["spec"]))
    miners = monitors["miners"]
    assert miners["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in miners["endpoints"]} == {p["name"] for p in service["spec"]["ports"]}
    assert miners["namespaceSelector"] == {"matchNames": [NAMESPACE, "miners", "validators"]}
    assert miners["podTargetLabels"] == [POOL_LABEL]
    # Each validator's headless Service, by its metrics port.
    example = load(EXAMPLES / "quasarvalidator-full.yaml")
    headless = validator_service(
        "v", "validators", "uid-2", QuasarValidatorSpec.model_validate(example["spec"])
    )
    validators = monitors["validators"]
    assert validators["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    assert [e["port"] for e in validators["endpoints"]] == [p["name"] for p in headless["spec"]["ports"]]
    assert validators["namespaceSelector"] == miners["namespaceSelector"]
    assert validators["targetLabels"] == miners["targetLabels"] == ["app.kubernetes.io/instance"]
    # The operator's: the chart's metrics Service, by its port's name.
    operator_service = one(objects, "Service")
    assert (
        monitors["operator"]["selector"]["matchLabels"].items()
        <= operator_service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitors["operator"]["endpoints"]] == ["metrics"]
    # Each job is the Service's app.kubernetes.io/name, which the alerts select by.
    assert {m["jobLabel"] for m in monitors.values()} == {"app.kubernetes.io/name"}


def test_the_weights_alert_waits_its_value_after_the_last_weights_and_the_start() -> None:
    (group,) = one(rendered("everything"), "PrometheusRule")["spec"]["groups"]
    (rule,) = [r for r in group["rules"] if r["alert"] == "QuasarValidatorNotSettingWeights"]
    limit = EVERYTHING["metrics"]["prometheusRule"]["validatorWeightsMaxAgeSeconds"]
    assert rule["expr"].count(f"> {limit}") == 2
    assert {name for name, _ in selectors(rule["expr"])} == {
        "quasar_validator_weights_last_set_timestamp_seconds",
        "process_start_time_seconds",
        "up",
    }
    assert rule["for"] == EVERYTHING["metrics"]["prometheusRule"]["for"]


# ------------------------------------------------------------------------------------------ what is exported


def exported(page: str) -> Exported:
    """The series names a /metrics page has (every name a family's type implies) and their label names."""
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["", "_sum", "_count"],
    }
    found: Exported = {}
    for family in text_string_to_metric_families(page):
        for suffix in suffixes.get(family.type, [""]):
            found.setdefault(family.name + suffix, set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


async def get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, url
        return await response.text()


async def operator_page() -> str:
    """The operator reconciling one miner whose wallet Secret is missing (so a reconcile error is counted)."""
    namespace = "miners"
    example = load(EXAMPLES / "quasarminer.yaml")
    miner = {**example, "metadata": {**example["metadata"], "namespace": namespace}}
    async with emulator() as server, client(server) as api, operator(server):
        await api.create(f"/apis/quasar.ai/v1alpha1/namespaces/{namespace}/quasarminers", miner)
        failures = {"kind": "QuasarMiner", "outcome": "failure"}

        async def counted() -> float | None:
            return REGISTRY.get_sample_value("quasar_operator_reconciles_total", failures)

        await eventually(counted, what="a failed reconcile counted")
        # `quasar operator run` serves the default registry (cli.main); here on loopback.
        server_, thread = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
        try:
            return await get(f"http://127.0.0.1:{server_.server_port}/metrics")
        finally:
            server_.shutdown()
            thread.join(timeout=5)


async def miner_and_engine_pages(model: Path, wallets: Path) -> tuple[str, str]:
    """A miner in front of an engine server, after one refused query (so its outcome series exist)."""
    engine_server = await start_engine_server(str(model), shutdown_timeout_s=1.0)
    wallet = create_wallet("miner", "hotkey", str(wallets))
    chain = FakeChain(netuid=7)
    chain.register(wallet.hotkey.ss58_address)
    engine = make_engine("tgi", engine_server.url, None, 30.0)
    miner = await start_miner(MinerConfig(netuid=7), chain.view(wallet.hotkey.ss58_address), engine)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(miner.url + protocol.QUERY_PATH, data=b"{}") as refused,
        ):
            assert refused.status < 500
        return await get(miner.metrics_url), await get(engine_server.url + "/metrics")
    finally:
        await miner.stop()
        await engine.aclose()
        await engine_server.stop()


async def double_page(engine: FakeOpenAIEngine) -> str:
    with engine:
        return await get(f"{engine.url}/metrics")


async def validator_page(wallets: Path, state: Path) -> str:
    """A validator after a round over a real miner and weights set (so its per-uid series exist)."""
    wallet = create_wallet("quasar-test", "validator", str(wallets))
    async with subnet(wallets, wallet, {"reader": read_answer}) as net:
        config = config_for(state, rounds=1, epoch_length=1)
        view = net.chain.view(wallet.hotkey.ss58_address)
        validator = make_validator(config, view, wallet, load_tokenizer(None))
        site = await serve_metrics(validator.metrics.registry, "127.0.0.1", 0)
        try:
            await validator.run()
            assert net.chain.weights, "the validator set no weights"
            return await get(site.url + "/metrics")
        finally:
            await site.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    model = ensure_local_model(tmp_path_factory.getbasetemp() / "quasar-cache" / "local-model-v1")
    miner, engine = asyncio.run(miner_and_engine_pages(model, tmp_path_factory.mktemp("wallets")))
    validator_wallets, validator_state = (tmp_path_factory.mktemp(n) for n in ("validator-wallets", "state"))
    return {
        "operator": exported(asyncio.run(operator_page())),
        "miner": exported(miner),
        "engine": exported(engine),
        **{double.kind: exported(asyncio.run(double_page(double()))) for double in (FakeVLLM, FakeSGLang)},
        "validator": exported(asyncio.run(validator_page(validator_wallets, validator_state))),
    }


def test_every_metric_queried_is_exported(live: dict[str, Exported]) -> None:
    every = {name for page in live.values() for name in page} | set(SYNTHETIC)
    dead = {
        where: sorted(name for name, _ in selectors(expr) if name not in every)
        for where, expr in expressions().items()
    }
    assert {where: names for where, names in dead.items() if names} == {}
    # The pages really are the four processes' (not an empty registry that anything would pass).
    assert "quasar_operator_reconcile_errors_total" in live["operator"]
    assert "quasar_miner_requests_total" in live["miner"]
    assert "tgi_queue_size" in live["engine"]
    assert "vllm:num_requests_waiting" in live["vllm"]
    assert "sglang:num_queue_reqs" in live["sglang"]
    assert live["validator"]["quasar_validator_miner_weight"] == {"uid"}


def test_every_label_queried_is_on_the_series(live: dict[str, Exported]) -> None:
    labels: Exported = {}
    for page in live.values():
        for name, names in page.items():
            labels.setdefault(name, set()).update(names)
    for where, expr in expressions().items():
        known_here = TARGET_LABELS | SERVICE_MONITOR_LABELS
        for name, matchers in selectors(expr):
            known = known_here | labels.get(name, set())
            assert matchers <= known, (where, name, matchers - known)
        series_labels = set().union(*(labels.get(name, set()) for name, _ in selectors(expr)))
        unknown = grouping_labels(expr) - known_here - series_labels
        assert unknown == set(), (where, unknown)
