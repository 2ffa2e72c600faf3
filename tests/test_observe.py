"""The scaling reads: each engine's metrics over real HTTP (TGI's text, the vLLM and SGLang doubles under
load), and free GPUs shared by miners planning at once."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from quasar_operator.apply import ApiError
from quasar_operator.builders.miner import POOL_LABEL
from quasar_operator.capacity import PoolScheduling, free_replicas
from quasar_operator.observe import ClusterView, Observer, metrics_address, pool_key, read_metric

from tests.fake_openai_engines import FakeOpenAIEngine, FakeSGLang, FakeVLLM

Obj = dict[str, Any]
GPU = "nvidia.com/gpu"

# What TGI's /metrics serves, trimmed (Prometheus text format).
TGI_METRICS = """# HELP tgi_queue_size Current queue size
# TYPE tgi_queue_size gauge
tgi_queue_size {queue}
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 3
# TYPE tgi_request_queue_duration histogram
tgi_request_queue_duration_bucket{{le="0.5"}} 1
tgi_request_queue_duration_bucket{{le="+Inf"}} {count}
tgi_request_queue_duration_sum {total}
tgi_request_queue_duration_count {count}
"""


def text(queue: float = 4, total: float = 10.0, count: int = 5) -> str:
    return TGI_METRICS.format(queue=queue, total=total, count=count)


def test_read_metric_gauges_and_the_queue_duration_histogram() -> None:
    assert read_metric(text(queue=7), "queueSize") == 7
    assert read_metric(text(), "batchSize") == 3
    assert read_metric(text(total=12.5, count=5), "queueTime") == (12.5, 5)
    assert read_metric("# TYPE other gauge\nother 1\n", "queueSize") is None


def engine_pod(ip: str | None, port: int, *, ready: bool = True, uid: str = "p1") -> Obj:
    ports = [{"name": "engine", "containerPort": 80}, {"name": "engine-metrics", "containerPort": port}]
    return {
        "metadata": {"uid": uid},
        "spec": {"containers": [{"ports": ports}, {"ports": []}]},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def openai_engine_pod(port: int) -> Obj:
    """A vLLM or SGLang pod as the builders make it: one `engine` port, serving /metrics too."""
    return {
        "metadata": {"uid": f"p{port}"},
        "spec": {"containers": [{"ports": [{"name": "engine", "containerPort": port}]}, {"ports": []}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_metrics_address_is_the_pods_ip_and_its_engine_metrics_port() -> None:
    assert metrics_address(engine_pod("10.0.0.7", 9000)) == "http://10.0.0.7:9000/metrics"
    assert metrics_address(engine_pod("fd00::7", 9000)) == "http://[fd00::7]:9000/metrics"
    assert metrics_address(engine_pod(None, 9000)) is None  # not started yet
    # vLLM and SGLang: no port of their own for metrics, the API port serves them.
    assert metrics_address(openai_engine_pod(8000)) == "http://127.0.0.1:8000/metrics"


@pytest_asyncio.fixture
async def engines() -> AsyncIterator[Callable[[Callable[[], str]], Any]]:
    runners: list[web.AppRunner] = []

    async def start(body: Callable[[], str]) -> int:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=body())

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        port: int = runner.addresses[0][1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_the_metric_of_every_ready_pod_that_answers(engines: Any) -> None:
    up = await engines(lambda: text(queue=6))
    observer = Observer(scrape_timeout=2)
    try:
        pods = [
            engine_pod("127.0.0.1", up, uid="a"),
            engine_pod("127.0.0.1", up, ready=False, uid="b"),  # loading: not read
            engine_pod("127.0.0.1", 1, uid="c"),  # nothing listens on port 1: does not report
        ]
        assert await observer.metric(pods, "queueSize") == [6.0]
    finally:
        await observer.close()


@pytest.mark.asyncio
async def test_queue_time_is_the_mean_wait_between_two_reads(engines: Any) -> None:
    totals = {"total": 10.0, "count": 5}
    port = await engines(lambda: text(total=totals["total"], count=int(totals["count"])))
    observer = Observer(scrape_timeout=2)
    try:
        pods = [engine_pod("127.0.0.1", port)]
        assert await observer.metric(pods, "queueTime") == []  # a first read has no interval
        totals.update(total=16.0, count=8)  # 3 more requests waited 6 s in all
        assert await observer.metric(pods, "queueTime") == [2.0]
        assert await observer.metric(pods, "queueTime") == [0.0]  # none served since: none waited
        totals.update(total=1.0, count=1)  # the engine restarted: its counters went back
        assert await observer.metric(pods, "queueTime") == []
    finally:
        await observer.close()


# --- free GPUs shared by miners planning from one listing ------------------------------------------------


def gpu_node(name: str, gpus: int = 8) -> Obj:
    return {
        "metadata": {"name": name, "labels": {"pool": "h100"}},
        "spec": {},
        "status": {"allocatable": {GPU: str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pool_pod(miner: str, gpus: int = 4, node: str | None = None) -> Obj:
    spec: Obj = {
        "nodeSelector": {"pool": "h100"},
        "containers": [{"resources": {"limits": {GPU: str(gpus)}}}],
    }
    if node is not None:
        spec["nodeName"] = node
    return {
        "metadata": {
            "namespace": "miners",
            "labels": {"app.kubernetes.io/instance": miner, POOL_LABEL: "h100"},
        },
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


def mine(miner: str) -> Callable[[Obj], bool]:
    return lambda pod: pod["metadata"]["labels"].get("app.kubernetes.io/instance") == miner


SHAPE = PoolScheduling({"pool": "h100"}, None, [], GPU, 4)


def free_for(view: ClusterView, miner: str) -> int:
    return free_replicas(view.nodes, view.committed(GPU, mine(miner)), SHAPE)


def test_other_miners_waiting_pods_and_claims_take_gpus_but_a_miners_own_do_not() -> None:
    nodes = [gpu_node("n1"), gpu_node("n2")]  # 4 replicas of 4 GPUs
    view = ClusterView(nodes, [pool_pod("a", node="n1"), pool_pod("b")])
    assert free_for(view, "a") == 2  # a's own bound pod counts; b's waiting one will take a slot
    assert free_for(view, "b") == 3  # b's waiting pod is in b's own room already


@pytest.mark.asyncio
async def test_a_claim_holds_gpus_until_a_listing_shows_its_pods() -> None:
    class Api:
        def __init__(self) -> None:
            self.pods: list[Obj] = []

        async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[Obj]:
            return [gpu_node("n1"), gpu_node("n2")] if path.endswith("/nodes") else list(self.pods)

    api = Api()
    observer = Observer(cluster_ttl=0)
    view = await observer.cluster(api)
    assert free_for(view, "b") == 4
    # Miner a decided its pool is to have 3 pods: until they are listed, b sees 1 slot, a still 4.
    observer.claim(pool_pod("a"), 3)
    assert (free_for(view, "b"), free_for(view, "a")) == (1, 4)
    # The next listing shows two of them (one bound, one waiting): the claim still holds the third.
    api.pods = [pool_pod("a", node="n1"), pool_pod("a")]
    view = await observer.cluster(api)
    assert free_for(view, "b") == 1
    api.pods.append(pool_pod("a"))
    assert free_for(await observer.cluster(api), "b") == 1  # all three listed: the pods count, not the claim
    with pytest.raises(ValueError, match="labels"):
        observer.claim({"metadata": {}, "spec": {}}, 1)
    assert pool_key(pool_pod("a")) == "miners/a/h100"


@pytest.mark.asyncio
async def test_a_forbidden_cluster_wide_read_says_which_chart_value_grants_it() -> None:
    class Api:
        async def list(self, path: str, label_selector: dict[str, str] | None = None) -> list[Obj]:
            if path == "/api/v1/pods":
                raise ApiError(403, 'pods is forbidden: cannot list resource "pods" at the cluster scope')
            if path == "/api/v1/nodes":
                return [gpu_node("n1")]
            raise ApiError(500, "etcd is down")

    with pytest.raises(ApiError) as refused:
        await Observer(cluster_ttl=0).cluster(Api())
    assert refused.value.status == 403
    assert 'cannot list resource "pods"' in str(refused.value)
    assert "rbac.listPodsClusterWide=true" in str(refused.value)


# --- vLLM and SGLang: their own gauges, read off the doubles while requests run and wait -------------------


async def load(engine: FakeOpenAIEngine, requests: int) -> list[asyncio.Task[Any]]:
    """`requests` completions sent at once; returns when the engine shows them all running or waiting."""
    session = aiohttp.ClientSession()

    async def one() -> None:
        body = {"model": engine.model_id, "prompt": "hello", "max_tokens": 1}
        async with session.post(f"{engine.url}/v1/completions", json=body) as response:
            assert response.status == 200

    tasks = [asyncio.create_task(one()) for _ in range(requests)]
    while engine.running + engine.waiting < requests:
        await asyncio.sleep(0.01)
    closer = asyncio.create_task(_close_after(session, tasks))
    return [*tasks, closer]


async def _close_after(session: aiohttp.ClientSession, tasks: list[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks)
    await session.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("double", [FakeVLLM, FakeSGLang])
async def test_vllm_and_sglang_report_waiting_as_queue_size_and_running_as_batch_size(
    double: type[FakeOpenAIEngine],
) -> None:
    with double(max_running=2, latency_s=1.5) as engine:
        observer = Observer(scrape_timeout=2)
        tasks = await load(engine, 5)
        try:
            pods = [openai_engine_pod(engine.port)]
            # The oracle: the double's own counts of requests waiting for a slot and generating.
            assert await observer.metric(pods, "queueSize") == [float(engine.waiting)] == [3.0]
            assert await observer.metric(pods, "batchSize") == [float(engine.running)] == [2.0]
            assert await observer.metric(pods, "queueTime") == []  # TGI's histogram only
        finally:
            await asyncio.gather(*tasks)
            await observer.close()


def test_a_gauge_split_over_labels_is_summed() -> None:
    # vLLM with data parallelism: one series per engine core; some SGLang versions add labels too.
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 3.0\n'
    )
    assert read_metric(text, "queueSize") == 5.0
    assert read_metric(text, "batchSize") is None
