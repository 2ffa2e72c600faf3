"""Engine doubles at hollow pods' addresses: what runs in a miner pod, as far as the kubelet's probes and the
operator's scrapes can tell.

On a node with probes (`Pool(probes=True)` in scripts/k8s/cluster.py) a miner pod is Ready only while its
engine answers its health route at the pod's address and its miner container answers `/readyz`, as on a
real node; until `PodEngines` serves a pod it is still loading its model. The engine is the double of the
miner's engine kind (tests/fake_tgi.py, tests/fake_openai_engines.py) on every port of the pod's engine
container, so the operator reads its metrics under the engine's own names; the miner container is a
stand-in that answers its probe routes on the axon port (the neuron itself is tested in
tests/test_miner.py: here only its readiness matters).
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from quasar_operator.capacity import pod_ready

from scripts.k8s import cluster as k8s
from tests.fake_openai_engines import FakeOpenAIEngine, FakeSGLang, FakeVLLM
from tests.fake_server import ThreadedServer
from tests.fake_tgi import FakeTGI

Obj = dict[str, Any]
Engine = FakeTGI | FakeOpenAIEngine
DOUBLES: dict[str, type[Engine]] = {"tgi": FakeTGI, "vllm": FakeVLLM, "sglang": FakeSGLang}
POOL_LABEL = (
    "quasar.ai/pool"  # the placement pool of a miner's pod (operator/quasar_operator/builders/miner.py)
)
MINER_LABEL = "app.kubernetes.io/instance"  # the QuasarMiner a pod belongs to


@dataclass
class MinerProbes(ThreadedServer):
    """The miner container's `/healthz` and `/readyz`, answering 200."""

    thread_name = "miner-probes"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._ok)
        app.router.add_get("/readyz", self._ok)
        return app

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def container_ports(pod: Obj, container: str) -> dict[str, int]:
    for each in pod["spec"]["containers"]:
        if each["name"] == container:
            return {port["name"]: port["containerPort"] for port in each.get("ports") or []}
    raise LookupError(f"pod {pod['metadata']['name']} has no container {container!r}")


@dataclass
class PodEngines:
    """Doubles for every running pod of `namespace`'s miners of one engine `kind`, kept in step with the pods
    by a thread (a pod gone or moved loses its doubles) until `close()`.

    `loading`: placement pools (the pods' `quasar.ai/pool` label) whose pods get no doubles yet (their model
    still loading); `waiting`: the requests each engine reports queued, its batch full whenever any wait;
    `queues`, when set, instead: each miner's requests queued (its name -> requests), all its replicas
    together, split among its Ready pods (those the operator scrapes) as evenly as whole requests allow, so
    that what the operator sums is the miner's queue. `listings`: the pod listings made so far (a benchmark
    tells its own API requests from the operator's).
    """

    cluster: k8s.Cluster
    namespace: str
    kind: str
    model_id: str
    loading: set[str] = field(default_factory=set)
    waiting: int = 0
    queues: Callable[[str], int] | None = None
    listings: int = 0
    engines: dict[str, Engine] = field(default_factory=dict)
    _probes: dict[str, MinerProbes] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="pod-engines", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for name in list(self.engines):
            self._stop_pod(name)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            pods = self.cluster.api("GET", f"/api/v1/namespaces/{self.namespace}/pods")["items"]
            self.listings += 1
            self.sync([p for p in pods if "miner" in {c["name"] for c in p["spec"]["containers"]}])

    def sync(self, pods: list[Obj]) -> None:
        serving = {
            p["metadata"]["name"]: p
            for p in pods
            if (p.get("status") or {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["labels"].get(POOL_LABEL) not in self.loading
        }
        for name, engine in list(self.engines.items()):
            if name not in serving or serving[name]["status"]["podIP"] != engine.host:
                self._stop_pod(name)
        for name, pod in serving.items():
            if name not in self.engines:
                self._serve(pod)
        queued = self._queued(serving)
        for name, engine in self.engines.items():
            waiting = queued.get(name, 0)
            busy = waiting > 0
            if isinstance(engine, FakeTGI):
                engine.queue_size, engine.batch_size = waiting, 4 if busy else 0
            else:
                engine.waiting, engine.running = waiting, engine.max_running if busy else 0

    def _queued(self, serving: dict[str, Obj]) -> dict[str, int]:
        """The requests each served pod's engine reports queued."""
        if self.queues is None:
            return dict.fromkeys(serving, self.waiting)
        ready: dict[str, list[str]] = {}  # by miner, in name order
        for name in sorted(serving):
            if pod_ready(serving[name]):
                ready.setdefault(serving[name]["metadata"]["labels"].get(MINER_LABEL, ""), []).append(name)
        queued = dict.fromkeys(serving, 0)
        for miner, names in ready.items():
            share, rest = divmod(self.queues(miner), len(names))
            for index, name in enumerate(names):
                queued[name] = share + (index < rest)
        return queued

    def _serve(self, pod: Obj) -> None:
        name, address = pod["metadata"]["name"], pod["status"]["podIP"]
        engine = DOUBLES[self.kind](model_id=self.model_id)
        engine.at(address, *container_ports(pod, "engine").values()).start()
        self.engines[name] = engine
        probes = MinerProbes().at(address, container_ports(pod, "miner")["axon"])
        probes.start()
        self._probes[name] = probes

    def _stop_pod(self, name: str) -> None:
        for servers in (self.engines, self._probes):
            server = servers.pop(name, None)
            if server is not None:
                server.stop()
