"""Autoscaling across pools: the real operator against a simulated cluster of three GPU pools and many
QuasarMiners under a synthetic load trace.

    .venv/bin/python -m benchmarks.bench_autoscaling [--miners 100] [--nodes 50] [--spike-s 90] ...

The cluster (this process):

- the API server: kmock's emulator with the tests' adaptations (tests/k8s_emulator.py, label selectors
  included), without its request log, and with two more (`BenchEmulator`), each what a real API server
  does: kopf's Events get a name from their generateName, and only the last versions of an object are kept
  (kmock keeps every version of every object);
- the simulated controllers of tests/sim_cluster.py (Deployment controller, scheduler, kubelet), one pass
  every `--tick` seconds; a pod is Ready `--ready-after` seconds after it is bound (its model loading);
- each pod's engine metrics over real HTTP on loopback: `tgi_queue_size` is its miner's queue (the trace)
  split evenly among the miner's ready replicas;
- pools `h100`, `a100` and `spot` (tainted, tolerated by the miners), `--nodes` nodes of 8 GPUs each.

The operator runs as users run it, `quasar operator run -A` in its own process, logged in through a
kubeconfig that points at the emulator, with QUASAR_OPERATOR_SCALE_INTERVAL and _CLUSTER_TTL set.

Each QuasarMiner: 2 GPUs a replica, pools h100, a100, spot in that order (maxReplicas 8 each, ReadWriteMany
cache), autoscaling in operator mode on queueSize, target 2, 1 to 8 replicas, scale-down window 30 s, one
replica per 10 s. After a warm-up (every miner at 1 ready replica), the trace: every miner's queue is 1
request (1 replica needed) for `--baseline-s`; then every other miner's jumps to `--spike-queue` (16: 8
replicas needed, 900 of the 1,200 GPUs in all, so all three pools fill) for `--spike-s`; then back to 1
for `--recovery-s`.

Measured, from the emulator's objects sampled every `--sample` seconds:

- spike to decided: until the miner's status.desiredReplicas reaches what the load needs;
- spike to bound, to ready: until that many of its pods are bound to nodes, then Ready (ground truth, from
  the Pods);
- spike to status: until its status shows it too (desiredReplicas met, and the pools' ready sum to it);
- drop to released: from the load's drop until the miner is back to one pod;
- GPU-hours idle: the integral over the trace, summed over miners, of the GPUs held by its bound pods beyond
  what the load needs (needed replicas x 2 GPUs), next to the floor the scale-down policy itself sets
  (window, then one replica per period, with an operator that reacts instantly); GPU-hours short: the
  integral of needed GPUs not on ready pods;
- scale decisions: each change of status.lastScale, per minute; "against the load": a miner at steady load
  that scales, a spiking miner that scales down during the spike or up after it;
- pods started during the spike and after the drop, and how many of all those were deleted without ever
  being bound (placed in a pool whose free GPUs other miners took first);
- ready replicas lost: a miner's ready pods falling below both what it had and what its status wants, and
  staying below the desired count for 5 s (the Deployments are written a moment before the status); the
  first two such miners' samples around it are printed after the table;
- the operator's peak RSS (VmHWM) and CPU seconds over the trace (Linux /proc), its reconciles (and how
  many a second the timer asks for: miners / interval), failures and mean reconcile time (its Prometheus
  metrics), its API requests by action (every request the emulator served whose User-Agent is not this
  process's); this process's CPU and peak RSS (emulator, simulation, metrics servers, sampling) and the
  simulation's pass.

Both processes share the machine's cores. p99 is the nearest rank.
"""

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock
from prometheus_client.parser import text_string_to_metric_families
from quasar_operator.apply import NODES_PATH, ApiError, object_path

from benchmarks.operator_process import kubeconfig, proc_status, wait_alive
from tests.k8s_emulator import (
    CLUSTER_SCOPED,
    RESOURCES,
    TEST_AGENT,
    VERBS,
    Emulator,
    client,
    free_port,
    url,
)
from tests.sim_cluster import POOL_LABEL, SimCluster, node

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
MINERS = f"/apis/quasar.ai/v1alpha1/namespaces/{NAMESPACE}/quasarminers"
MINER_RESOURCE = kmock.resource("quasar.ai/v1alpha1/quasarminers")
POD_RESOURCE = kmock.resource("v1/pods")
DEPLOYMENT_RESOURCE = kmock.resource("apps/v1/deployments")
WRITES = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
INSTANCE = "app.kubernetes.io/instance"
MINER_POOL_LABEL = "quasar.ai/pool"
POOLS = ("h100", "a100", "spot")
SPOT_TAINT = {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}
GPUS_PER_NODE = 8
GPUS_PER_REPLICA = 2
MIN_REPLICAS, MAX_REPLICAS, POOL_MAX, TARGET = 1, 8, 8, 2.0
DOWN_WINDOW_S, DOWN_PERIOD_S = 30, 10
CONFIRM_S = 5.0

Obj = dict[str, Any]


class BenchEmulator(Emulator):
    """The tests' emulator, with what a real API server does and these runs lean on: an object created with
    only `generateName` (kopf's Events) gets a name (kmock answers 409 to every Event after the first, with a
    traceback that would be measured here); only an object's last two versions are kept (kmock keeps every
    one: memory, and garbage collection, that grow with every write).

    It also keeps, for the simulated engines, each miner's Ready pods as the API server has them now, and
    counts the operator's requests (every one whose User-Agent is not the benchmark's) by action.
    """

    _suffixes = itertools.count(1)

    def __init__(self) -> None:
        super().__init__(log_requests=False)
        self.ready: dict[str, set[str]] = {}
        self.operator_requests: dict[str, int] = {}

    async def _serve(self, request: Any) -> Any:
        data = request.data
        if request.headers.get("User-Agent") != TEST_AGENT and request.action is not None:
            action = str(getattr(request.action, "value", request.action))
            self.operator_requests[action] = self.operator_requests.get(action, 0) + 1
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._suffixes):x}"
        response = await super()._serve(request)
        if request.resource is not None and request.action in WRITES:
            meta = (data.get("metadata") or {}) if isinstance(data, dict) else {}
            name: str = request.name or meta.get("name") or ""
            namespace: str | None = request.namespace or meta.get("namespace")
            if (request.resource, namespace, name) in self.objects:
                obj = self.objects[request.resource, namespace, name]
                del obj.history[:-2]
                if request.resource == POD_RESOURCE:
                    self._track(name, None if obj.deleted else obj)
        return response

    def _track(self, name: str, pod: Any) -> None:
        """`pod`: the pod now, None when deleted."""
        miner = ((pod or {}).get("metadata") or {}).get("labels", {}).get(INSTANCE) or name.split("-miner-")[
            0
        ]
        ready = self.ready.setdefault(miner, set())
        conditions = ((pod or {}).get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready.add(name)
        else:
            ready.discard(name)


@contextlib.asynccontextmanager
async def bench_emulator() -> AsyncIterator[BenchEmulator]:
    """tests.k8s_emulator.emulator(log_requests=False), with BenchEmulator."""
    async with BenchEmulator() as server, kmock.Server(server):
        for key, (kind, singular) in RESOURCES.items():
            server.resources[key] = kmock.ResourceInfo(
                kind=kind, singular=singular, namespaced=kind not in CLUSTER_SCOPED, verbs=VERBS
            )
        yield server


@dataclass(frozen=True)
class Trace:
    """Each miner's queue (requests waiting, all replicas together) over time, from the trace's start."""

    baseline_s: float
    spike_s: float
    recovery_s: float
    low: float
    high: float
    spiking: frozenset[str]

    @property
    def total_s(self) -> float:
        return self.baseline_s + self.spike_s + self.recovery_s

    def queue(self, miner: str, t: float | None) -> float:
        spiking = t is not None and self.baseline_s <= t < self.baseline_s + self.spike_s
        return self.high if spiking and miner in self.spiking else self.low

    def needed(self, miner: str, t: float | None) -> int:
        """Replicas that hold the queue at the target: the autoscaler's fixed point."""
        wanted = math.ceil(self.queue(miner, t) / TARGET - 1e-9)
        return max(MIN_REPLICAS, min(MAX_REPLICAS, wanted))


def miner(name: str) -> Obj:
    def pool(pool_name: str, **extra: Any) -> Obj:
        return {"name": pool_name, "nodeSelector": {POOL_LABEL: pool_name}, "maxReplicas": POOL_MAX, **extra}

    spot_toleration = {**SPOT_TAINT, "operator": "Equal"}
    return {
        "apiVersion": "quasar.ai/v1alpha1",
        "kind": "QuasarMiner",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"id": "Qwen/Qwen2.5-7B-Instruct-1M", "gpusPerReplica": GPUS_PER_REPLICA},
            "wallet": {"secretName": "wallet"},
            "subnet": {"netuid": 7},
            # A fixed address: the emulator runs no cloud controller to give a LoadBalancer one.
            "exposure": {"externalIP": "203.0.113.7"},
            "cache": {"accessMode": "ReadWriteMany"},
            "replicas": MIN_REPLICAS,
            "placement": {
                "spillAfterSeconds": 30,
                "pools": [
                    pool("h100"),
                    pool("a100"),
                    pool("spot", tolerations=[spot_toleration], spot=True),
                ],
            },
            "autoscaling": {
                "mode": "operator",
                "minReplicas": MIN_REPLICAS,
                "maxReplicas": MAX_REPLICAS,
                "metric": "queueSize",
                "target": TARGET,
                "scaleDownStabilizationSeconds": DOWN_WINDOW_S,
                "scaleDownPeriodSeconds": DOWN_PERIOD_S,
            },
        },
    }


@dataclass(frozen=True)
class OperatorCounts:
    reconciles: float
    failures: float
    seconds: float  # summed reconcile time


async def operator_counts(session: aiohttp.ClientSession, port: int) -> OperatorCounts:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    outcomes = {"success": 0.0, "failure": 0.0}
    seconds = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("kind") != "QuasarMiner":
                continue
            if family.name == "quasar_operator_reconciles" and sample.name.endswith("_total"):
                outcomes[sample.labels["outcome"]] += sample.value
            elif family.name == "quasar_operator_reconcile_seconds" and sample.name.endswith("_sum"):
                seconds += sample.value
    return OperatorCounts(outcomes["success"] + outcomes["failure"], outcomes["failure"], seconds)


@dataclass
class MinerView:
    """One miner in one sample: ground truth from its Pods, and what its status says."""

    pods: set[str] = field(default_factory=set)  # every pod, bound or not
    bound_pods: set[str] = field(default_factory=set)
    bound: int = 0
    ready: int = 0
    pools_ready: dict[str, int] = field(default_factory=dict)
    desired: int | None = None
    status_ready: int = 0  # the sum of status.pools[].ready
    deployments: dict[str, int] = field(default_factory=dict)  # each pool's Deployment: spec.replicas
    last_scale: tuple[str, int, int] | None = None


def observe(server: Emulator, names: list[str]) -> dict[str, MinerView]:
    views = {name: MinerView() for name in names}
    for key, obj in list(server.objects.items()):
        if obj.deleted or key[1] != NAMESPACE:
            continue
        if key[0] == POD_RESOURCE:
            meta = obj.get("metadata") or {}
            view = views.get((meta.get("labels") or {}).get(INSTANCE, ""))
            if view is None or meta.get("deletionTimestamp"):
                continue
            view.pods.add(meta.get("name", ""))
            if not (obj.get("spec") or {}).get("nodeName"):
                continue
            view.bound += 1
            view.bound_pods.add(meta.get("name", ""))
            conditions = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                view.ready += 1
                pool = meta["labels"].get(MINER_POOL_LABEL, "")
                view.pools_ready[pool] = view.pools_ready.get(pool, 0) + 1
        elif key[0] == DEPLOYMENT_RESOURCE:
            miner_name, _, pool = key[2].partition("-miner-")
            if miner_name in views:
                replicas = int((obj.get("spec") or {}).get("replicas") or 0)
                views[miner_name].deployments[pool] = replicas
        elif key[0] == MINER_RESOURCE and key[2] in views:
            status = obj.get("status") or {}
            view = views[key[2]]
            view.desired = status.get("desiredReplicas")
            view.status_ready = sum(int(p.get("ready") or 0) for p in status.get("pools") or [])
            last = status.get("lastScale")
            if last:
                view.last_scale = (last["time"], int(last["replicasFrom"]), int(last["replicasTo"]))
    return views


@dataclass
class Dip:
    """A miner's ready pods fell below both what it had and what its status wants. The Deployments are
    written before the status, so a scale-down can show this way for a moment: a dip counts as a lost
    replica only when the desired count stays above the ready ones for CONFIRM_S."""

    t: float
    miner: str
    was: int
    now: int
    desired: int
    lowest_desired: int = 1 << 30


@dataclass
class Tally:
    """What the samples add up to over the trace."""

    idle_gpu_s: float = 0.0
    short_gpu_s: float = 0.0
    decided: dict[str, float] = field(default_factory=dict)  # spike -> desiredReplicas reached
    bound: dict[str, float] = field(default_factory=dict)  # spike -> that many pods bound
    ready: dict[str, float] = field(default_factory=dict)  # spike -> that many pods Ready
    shown: dict[str, float] = field(default_factory=dict)  # spike -> the status shows it
    released: dict[str, float] = field(default_factory=dict)  # drop -> back to one pod
    decisions: list[tuple[float, str, int, int]] = field(default_factory=list)  # (t, miner, from, to)
    unexpected: list[tuple[float, str, int, int]] = field(default_factory=list)
    dips: list[Dip] = field(default_factory=list)

    @property
    def lost(self) -> list[Dip]:
        """Dips the status did not explain: the desired count stayed above the ready ones."""
        return [dip for dip in self.dips if dip.lowest_desired > dip.now]

    peak_pools: dict[str, int] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)  # pods created, by phase
    history: dict[str, list[tuple[float, MinerView]]] = field(default_factory=dict)  # when a view changed
    new_pods: set[str] = field(default_factory=set)  # every pod created during the trace
    ever_bound: set[str] = field(default_factory=set)
    samples: int = 0


def account(
    tally: Tally,
    trace: Trace,
    t: float,
    dt: float,
    views: dict[str, MinerView],
    before: dict[str, MinerView],
    lag: float,
) -> None:
    """One sample's share. `lag`: how late a decision may show a phase it was read in."""
    spike_at, drop_at = trace.baseline_s, trace.baseline_s + trace.spike_s
    pools: dict[str, int] = {}
    for name, view in views.items():
        needed = trace.needed(name, t)
        tally.idle_gpu_s += max(0, view.bound - needed) * GPUS_PER_REPLICA * dt
        tally.short_gpu_s += max(0, needed - view.ready) * GPUS_PER_REPLICA * dt
        for pool, count in view.pools_ready.items():
            pools[pool] = pools.get(pool, 0) + count
        spiking = name in trace.spiking
        if spiking and spike_at <= t < drop_at:
            if name not in tally.decided and (view.desired or 0) >= needed:
                tally.decided[name] = t - spike_at
            if name not in tally.ready and view.ready >= needed:
                tally.ready[name] = t - spike_at
            if name not in tally.bound and view.bound >= needed:
                tally.bound[name] = t - spike_at
            if (
                name not in tally.shown
                and (view.desired or 0) >= needed
                and view.status_ready == view.desired
            ):
                tally.shown[name] = t - spike_at
        if spiking and t >= drop_at and name not in tally.released and view.bound <= MIN_REPLICAS:
            tally.released[name] = t - drop_at
        old = before.get(name)
        if old is None:
            continue
        if view != old:
            tally.history.setdefault(name, []).append((t, view))
        if view.last_scale is not None and view.last_scale != old.last_scale:
            _, frm, to = view.last_scale
            tally.decisions.append((t, name, frm, to))
            up = to > frm
            if spiking and spike_at <= t < drop_at:
                expected = up
            else:  # after the drop, an up decided on a read from just before it is not held against it
                expected = spiking and t >= drop_at and (not up or t < drop_at + lag)
            if not expected:
                tally.unexpected.append((t, name, frm, to))
        if view.ready < min(old.ready, view.desired or 0):
            tally.dips.append(Dip(t, name, old.ready, view.ready, view.desired or 0))
        for dip in tally.dips:
            if dip.miner == name and t - dip.t <= CONFIRM_S:
                dip.lowest_desired = min(dip.lowest_desired, view.desired or 0)
        phase = "steady" if t < spike_at else "spike" if t < drop_at else "after"
        tally.started[phase] = tally.started.get(phase, 0) + len(view.pods - old.pods)
        tally.new_pods |= view.pods - old.pods
        tally.ever_bound |= view.bound_pods
    for pool, count in pools.items():
        tally.peak_pools[pool] = max(tally.peak_pools.get(pool, 0), count)
    tally.samples += 1


def policy_floor_gpu_h(trace: Trace) -> float:
    """The idle GPU-hours the scale-down policy alone implies after the spike: the window at the peak, then
    one replica less per period, each spiking miner, with an operator that reacts instantly."""
    extra = trace.needed(next(iter(trace.spiking)), trace.baseline_s) - MIN_REPLICAS if trace.spiking else 0
    replica_s = extra * DOWN_WINDOW_S + sum(range(1, extra)) * DOWN_PERIOD_S
    return len(trace.spiking) * replica_s * GPUS_PER_REPLICA / 3600


@dataclass
class SimLoop:
    """The simulated controllers, one pass every `period` seconds, timed."""

    sim: SimCluster
    period: float
    passes: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # passes cut short by an API error (a timeout)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sim.tick()
            except ApiError as exc:
                self.errors.append(str(exc))
            self.passes.append(time.monotonic() - started)
            await asyncio.sleep(self.period)


@dataclass(frozen=True)
class Config:
    miners: int
    nodes: int
    baseline_s: float
    spike_s: float
    recovery_s: float
    spike_queue: float
    scale_interval: float
    cluster_ttl: float
    tick: float
    sample: float
    ready_after: float
    warmup_timeout: float
    follow: str | None  # a miner whose samples are printed (stderr) when they change
    operator_log: Path | None  # where to keep the operator's log


@dataclass
class Outcome:
    config: Config
    trace: Trace
    tally: Tally
    warmup_s: float
    duration_s: float
    peak_rss_mb: float
    cpu_s: float
    bench_cpu_s: float
    counts: OperatorCounts
    sim_passes: list[float]
    sim_errors: list[str]
    requests: dict[str, int]  # the operator's API requests over the trace, by action
    pods_peak: int
    log_scaled: int
    log_tail: list[str]


async def measure(config: Config, workdir: Path) -> Outcome:
    names = [f"m{i}" for i in range(config.miners)]
    trace = Trace(
        baseline_s=config.baseline_s,
        spike_s=config.spike_s,
        recovery_s=config.recovery_s,
        low=1.0,
        high=config.spike_queue,
        spiking=frozenset(names[::2]),
    )
    clock: dict[str, float | None] = {"start": None}

    async with bench_emulator() as server, client(server) as api:

        def queue(labels: Mapping[str, str]) -> float:
            """The miner's queue now, split evenly among its ready replicas as the API server has them."""
            name, start = labels.get(INSTANCE, ""), clock["start"]
            t = None if start is None else time.monotonic() - start
            return trace.queue(name, t) / max(1, len(server.ready.get(name, ())))

        sim = SimCluster(api, NAMESPACE, queue=queue, ready_after=config.ready_after)
        loop = SimLoop(sim, config.tick)
        await api.create(
            object_path("Secret", NAMESPACE),
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wallet", "namespace": NAMESPACE}},
        )
        for pool in POOLS:
            taints = [SPOT_TAINT] if pool == "spot" else None
            for i in range(config.nodes):
                await api.create(NODES_PATH, node(f"{pool}-{i}", pool, GPUS_PER_NODE, taints))
        sim_task = asyncio.create_task(loop.run())
        config_path = workdir / "kubeconfig"
        kubeconfig(config_path, url(server))
        liveness, metrics_port = free_port(), free_port()
        command = [sys.executable, "-m", "quasar_cli", "operator", "run", "-A"]
        command += ["--liveness-port", str(liveness), "--metrics-port", str(metrics_port)]
        env = {
            **os.environ,
            "KUBECONFIG": str(config_path),
            "QUASAR_OPERATOR_SCALE_INTERVAL": str(config.scale_interval),
            "QUASAR_OPERATOR_CLUSTER_TTL": str(config.cluster_ttl),
        }
        log_path = config.operator_log or workdir / "operator.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_alive(session, liveness, process)
                warm_started = time.monotonic()
                await asyncio.gather(*(api.create(MINERS, miner(name)) for name in names))
                views = await warm_up(server, names, config, sim_task)
                warmup_s = time.monotonic() - warm_started
                _, cpu_before = proc_status(process.pid)
                counts_before = await operator_counts(session, metrics_port)
                bench_before = time.process_time()
                requests_before = dict(server.operator_requests)
                passes_before = len(loop.passes)
                tally, pods_peak = Tally(), 0
                clock["start"] = started = last = time.monotonic()
                while (now := time.monotonic()) - started < trace.total_s:
                    check_running(sim_task, process)
                    t = now - started
                    current = observe(server, names)
                    account(
                        tally, trace, t, now - last, current, views, config.scale_interval + config.sample
                    )
                    pods_peak = max(pods_peak, sum(v.bound for v in current.values()))
                    if config.follow in current and current[config.follow] != views.get(config.follow):
                        needs = trace.needed(config.follow, t)
                        print(f"needs {needs} " + describe(t, current[config.follow]), file=sys.stderr)
                    views, last = current, now
                    await asyncio.sleep(config.sample)
                duration_s = time.monotonic() - started
                bench_cpu_s = time.process_time() - bench_before
                peak_mb, cpu_after = proc_status(process.pid)
                counts_after = await operator_counts(session, metrics_port)
                requests = {
                    action: count - requests_before.get(action, 0)
                    for action, count in server.operator_requests.items()
                }
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            sim_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sim_task
            await sim.close()
    lines = log_path.read_text(errors="replace").splitlines()
    return Outcome(
        config=config,
        trace=trace,
        tally=tally,
        warmup_s=warmup_s,
        duration_s=duration_s,
        peak_rss_mb=peak_mb,
        cpu_s=cpu_after - cpu_before,
        bench_cpu_s=bench_cpu_s,
        counts=OperatorCounts(
            counts_after.reconciles - counts_before.reconciles,
            counts_after.failures - counts_before.failures,
            counts_after.seconds - counts_before.seconds,
        ),
        sim_passes=loop.passes[passes_before:],
        sim_errors=loop.errors,
        requests=requests,
        pods_peak=pods_peak,
        log_scaled=sum(":Scaled: " in line for line in lines),
        log_tail=lines[-15:],
    )


def check_running(sim_task: "asyncio.Task[None]", process: subprocess.Popen[bytes]) -> None:
    if sim_task.done():
        sim_task.result()  # raises what stopped the simulation
        raise RuntimeError("the simulation stopped")
    if process.poll() is not None:
        raise RuntimeError(f"the operator exited with {process.returncode}")


async def warm_up(
    server: Emulator,
    names: list[str],
    config: Config,
    sim_task: "asyncio.Task[None]",
) -> dict[str, MinerView]:
    """Until every miner runs its one ready replica and says so."""
    deadline = time.monotonic() + config.warmup_timeout
    while True:
        views = observe(server, names)
        if all(v.desired == MIN_REPLICAS and v.ready == v.bound == MIN_REPLICAS for v in views.values()):
            return views
        if time.monotonic() > deadline:
            settled = sum(
                v.desired == MIN_REPLICAS and v.ready == v.bound == MIN_REPLICAS for v in views.values()
            )
            raise RuntimeError(
                f"warm-up: {settled} of {len(names)} miners at rest after {config.warmup_timeout} s"
            )
        if sim_task.done():
            sim_task.result()
        await asyncio.sleep(config.sample)


def describe(t: float, v: MinerView) -> str:
    return (
        f"t={t:6.1f} desired {v.desired} deployments {v.deployments} bound {v.bound} ready {v.ready} "
        f"{v.pools_ready} status ready {v.status_ready} last scale {v.last_scale}"
    )


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return f"{statistics.median(ordered):.1f} / {p99:.1f} / {ordered[-1]:.1f}"


def report(o: Outcome) -> list[tuple[str, str]]:
    c, trace, tally = o.config, o.trace, o.tally
    spiking = len(trace.spiking)
    high = trace.needed(next(iter(trace.spiking)), c.baseline_s) if trace.spiking else MIN_REPLICAS
    minutes = o.duration_s / 60
    per_minute: dict[int, int] = {}
    for t, *_ in tally.decisions:
        per_minute[int(t // 60)] = per_minute.get(int(t // 60), 0) + 1
    ups = sum(1 for _, _, frm, to in tally.decisions if to > frm)
    passes = o.sim_passes
    asked = c.miners / c.scale_interval
    return [
        (
            "miners (spiking)",
            f"{c.miners} ({spiking}: queue {trace.low:g} -> {trace.high:g}, needs 1 -> {high})",
        ),
        (
            "nodes x GPUs",
            f"{len(POOLS)} pools x {c.nodes} x {GPUS_PER_NODE} = {len(POOLS) * c.nodes * GPUS_PER_NODE}",
        ),
        (
            "trace (s)",
            f"{c.baseline_s:g} steady, {c.spike_s:g} spike, {c.recovery_s:g} after; warm-up {o.warmup_s:.0f}",
        ),
        ("spike -> desired decided, p50 / p99 / max (s)", spread(list(tally.decided.values()))),
        ("spike -> replicas bound, p50 / p99 / max (s)", spread(list(tally.bound.values()))),
        ("spike -> replicas ready, p50 / p99 / max (s)", spread(list(tally.ready.values()))),
        ("spike -> status shows them, p50 / p99 / max (s)", spread(list(tally.shown.values()))),
        (
            "miners decided / ready / shown within the spike",
            f"{len(tally.decided)} / {len(tally.ready)} / {len(tally.shown)} of {spiking}",
        ),
        (
            "drop -> back to 1 pod, p50 / p99 / max (s)",
            spread(list(tally.released.values())) + f" ({len(tally.released)} of {spiking})",
        ),
        ("peak ready replicas per pool", ", ".join(f"{p} {tally.peak_pools.get(p, 0)}" for p in POOLS)),
        ("peak pods bound", str(o.pods_peak)),
        (
            "pods started: spike / after the drop; never bound",
            f"{tally.started.get('spike', 0)} / {tally.started.get('after', 0)}; "
            f"{len(tally.new_pods - tally.ever_bound)}",
        ),
        (
            "GPU-hours idle (policy floor)",
            f"{tally.idle_gpu_s / 3600:.2f} ({policy_floor_gpu_h(trace):.2f})",
        ),
        ("GPU-hours short (needed, not ready)", f"{tally.short_gpu_s / 3600:.2f}"),
        (
            "scale decisions: per minute mean / peak; up, down",
            f"{len(tally.decisions) / minutes:.0f} / {max(per_minute.values(), default=0)}; "
            f"{ups}, {len(tally.decisions) - ups}",
        ),
        ("decisions against the load; ready replicas lost", f"{len(tally.unexpected)}; {len(tally.lost)}"),
        (
            "operator reconciles/s (timer asks); failures",
            f"{o.counts.reconciles / o.duration_s:.1f} ({asked:.0f}); {o.counts.failures:.0f}",
        ),
        (
            "operator mean reconcile (ms)",
            f"{1000 * o.counts.seconds / o.counts.reconciles:.0f}" if o.counts.reconciles else "-",
        ),
        (
            "operator API requests/s: all (list, get, patch, create)",
            f"{sum(o.requests.values()) / o.duration_s:.0f} ("
            + ", ".join(
                f"{o.requests.get(a, 0) / o.duration_s:.0f}" for a in ("LIST", "FETCH", "UPDATE", "CREATE")
            )
            + ")",
        ),
        ("operator peak RSS (MB)", f"{o.peak_rss_mb:.0f}"),
        (
            "operator CPU (s, share of one core)",
            f"{o.cpu_s:.0f} ({100 * o.cpu_s / o.duration_s:.0f}%)",
        ),
        (
            "bench process CPU (s), peak RSS (MB): emulator, simulation, sampling",
            f"{o.bench_cpu_s:.0f}, {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
        ),
        (
            "simulation pass mean / max (s); passes cut by an API error",
            (f"{statistics.mean(passes):.2f} / {max(passes):.2f}" if passes else "-")
            + f"; {len(o.sim_errors)}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miners", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=50, help="nodes per pool (8 GPUs each)")
    parser.add_argument("--baseline-s", type=float, default=30)
    parser.add_argument("--spike-s", type=float, default=90)
    parser.add_argument("--spike-queue", type=float, default=16, help="a spiking miner's queue (target 2)")
    parser.add_argument("--recovery-s", type=float, default=120)
    parser.add_argument("--scale-interval", type=float, default=2.0, help="QUASAR_OPERATOR_SCALE_INTERVAL")
    parser.add_argument("--cluster-ttl", type=float, default=2.0, help="QUASAR_OPERATOR_CLUSTER_TTL")
    parser.add_argument("--tick", type=float, default=0.5, help="seconds between simulation passes")
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--ready-after", type=float, default=10.0, help="seconds from bound to Ready")
    parser.add_argument("--warmup-timeout", type=float, default=180)
    parser.add_argument("--follow", help="print this miner's samples (stderr) when they change")
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log here")
    args = parser.parse_args()
    config = Config(
        miners=args.miners,
        nodes=args.nodes,
        baseline_s=args.baseline_s,
        spike_s=args.spike_s,
        spike_queue=args.spike_queue,
        recovery_s=args.recovery_s,
        scale_interval=args.scale_interval,
        cluster_ttl=args.cluster_ttl,
        tick=args.tick,
        sample=args.sample,
        ready_after=args.ready_after,
        warmup_timeout=args.warmup_timeout,
        follow=args.follow,
        operator_log=args.operator_log,
    )
    print(
        f"{os.cpu_count()} CPUs; operator: quasar operator run -A (its own process), scale interval "
        f"{config.scale_interval:g} s, cluster cache {config.cluster_ttl:g} s; simulation pass every "
        f"{config.tick:g} s, Ready {config.ready_after:g} s after binding",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        outcome = asyncio.run(measure(config, Path(tmp)))
    print("| measure | value |")
    print("|---|---|")
    for what, value in report(outcome):
        print(f"| {what} | {value} |")
    if outcome.log_scaled != len(outcome.tally.decisions):
        print(f"\nScaled lines in the operator's log (warm-up included): {outcome.log_scaled}")
    steps: dict[str, list[tuple[float, int, int]]] = {}
    for t, name, frm, to in outcome.tally.decisions:
        steps.setdefault(name, []).append((round(t, 1), frm, to))
    for name, seq in steps.items():
        if sum(to > frm for _, frm, to in seq) > 1:
            print(f"scaled up in steps: {name} {seq}")
    for t, name, frm, to in outcome.tally.unexpected[:10]:
        print(f"against the load: t={t:.1f} s {name} {frm} -> {to}")
    for dip in outcome.tally.lost[:10]:
        print(f"ready lost: t={dip.t:.1f} s {dip.miner} {dip.was} -> {dip.now} ready, desired {dip.desired}")
    for dip in outcome.tally.lost[:2]:
        print(f"{dip.miner} around t={dip.t:.1f} s:")
        for t, view in outcome.tally.history.get(dip.miner, []):
            if abs(t - dip.t) <= 15:
                print("  " + describe(t, view))
    if outcome.counts.failures:
        print("the operator's log ends:\n  " + "\n  ".join(outcome.log_tail))


if __name__ == "__main__":
    main()
