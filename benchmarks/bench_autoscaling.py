"""Autoscaling across pools on the real control plane: the operator places and scales QuasarMiners over three
GPU pools of hollow nodes under a synthetic load trace.

    .venv/bin/python -m benchmarks.bench_autoscaling [--miners 10] [--nodes 3] [--spike-s 90] ...

The cluster (scripts/k8s/cluster.py, fresh for the run): etcd, kube-apiserver, kube-controller-manager (the
Deployment and ReplicaSet controllers make the pods), kube-scheduler (binds them), and `--nodes` hollow nodes
in each of the pools `h100`, `a100` and `spot` (8 GPUs each; `spot` tainted, tolerated by the miners) whose
kubelets run the pods' real probes: startup and readiness every 10 s, as the operator sets them. A pod is
Ready once its probes pass against the engine double this process serves at the pod's own loopback address
(tests/e2e/pod_engines.py, vLLM's gauges), so "ready" includes the real probe periods. Each miner's cache
claim binds to a host-path volume of a StorageClass of the run's own.

Each pod's engine reports `vllm:num_requests_waiting`: its miner's queue (the trace), split among the
miner's Ready pods as the doubles' thread last listed them, so the sum the autoscaler reads is the queue.

The operator runs as users run it, `quasar operator run -n bench` in its own process, as the cluster's admin,
with production settings but for QUASAR_OPERATOR_SCALE_INTERVAL (`--scale-interval`, 5 s; production 15) and
_CLUSTER_TTL (`--cluster-ttl`, the production 5 s), which it takes from this process's environment.

Each QuasarMiner: vLLM, 2 GPUs a replica, pools h100, a100, spot in that order (maxReplicas 8 each,
ReadWriteMany cache), autoscaling in operator mode on queueSize, target 2, 1 to 8 replicas, scale-down
window 30 s, one replica per 10 s. After a warm-up (every miner at 1 ready replica, on h100), the trace:
every miner's queue is 1 request (1 replica needed) for `--baseline-s`; then every other miner's jumps to
`--spike-queue` (10: 5 replicas needed) for `--spike-s`; then back to 1 for `--recovery-s`. With the
defaults (10 miners, 3 nodes a pool: 12 replicas a pool) the spike asks for 30 replicas: h100 fills, then
a100, then 6 go to spot.

The sizes are the simulated run's (100 miners, 50 nodes a pool) cut to what two shared cores carry: each
hollow kubelet is a process running probes, and each pod's doubles are two threaded servers in this process.

Measured, from the API server's Pods, Deployments and QuasarMiners listed every `--sample` seconds:

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
  being bound;
- ready replicas lost: a miner's ready pods falling below both what it had and what its status wants, and
  staying below the desired count for 5 s (the Deployments are written a moment before the status); the
  first two such miners' samples around it are printed after the table;
- the operator's peak RSS (VmHWM) and CPU seconds over the trace (Linux /proc), its reconciles (and how
  many a second the timer asks for: miners / interval), failures and mean reconcile time (its Prometheus
  metrics), its API requests by verb (the API server's `apiserver_request_total` on what the operator reads
  and writes, as benchmarks/bench_operator.py counts them, less this process's own listings); the CPU of the
  control plane's processes and of the hollow nodes, and this process's (doubles, sampling) CPU and peak RSS.

Everything shares the machine's cores. p99 is the nearest rank.
"""

import argparse
import asyncio
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from quasar_operator.capacity import pod_ready

from benchmarks.bench_operator import operator_requests, request_counts
from benchmarks.bench_operator_writes import (
    NAMESPACE,
    prepare,
    reconcile_counts,
    start_operator,
    stop_operator,
)
from benchmarks.operator_process import proc_status, wait_alive
from scripts.k8s import cluster as k8s
from tests.e2e.conftest import Kube
from tests.e2e.pod_engines import MINER_LABEL, POOL_LABEL, PodEngines
from tests.e2e.test_operator_lifecycle import local_storage

MINERS = f"/apis/quasar.ai/v1alpha1/namespaces/{NAMESPACE}/quasarminers"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
BENCH_LISTS_PER_SAMPLE = 3  # observe()
POOLS = ("h100", "a100", "spot")
SPOT_TAINT = {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}
STORAGE_CLASS = "bench-local"
MODEL = "Qwen/Qwen2.5-7B-Instruct-1M"
GPUS_PER_NODE = 8
GPUS_PER_REPLICA = 2
MIN_REPLICAS, MAX_REPLICAS, POOL_MAX, TARGET = 1, 8, 8, 2.0
DOWN_WINDOW_S, DOWN_PERIOD_S = 30, 10
CONFIRM_S = 5.0
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Trace:
    """Each miner's queue (requests waiting, all replicas together) over time, from the trace's start."""

    baseline_s: float
    spike_s: float
    recovery_s: float
    low: int
    high: int
    spiking: frozenset[str]

    @property
    def total_s(self) -> float:
        return self.baseline_s + self.spike_s + self.recovery_s

    def queue(self, miner: str, t: float | None) -> int:
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
            "model": {"id": MODEL, "gpusPerReplica": GPUS_PER_REPLICA},
            "engine": {"kind": "vllm"},
            "wallet": {"secretName": "miner-wallet"},
            "subnet": {"netuid": 7},
            # A fixed address: no cloud controller gives the LoadBalancer one (nothing dials it).
            "exposure": {"externalIP": "203.0.113.7"},
            "cache": {"size": "1Gi", "storageClassName": STORAGE_CLASS, "accessMode": "ReadWriteMany"},
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


def reconcile_seconds(port: int) -> float:
    """The time the operator has spent reconciling QuasarMiners, summed (its metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "quasar_operator_reconcile_seconds"
        for sample in family.samples
        if sample.name.endswith("_sum") and sample.labels.get("kind") == "QuasarMiner"
    )


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


def observe(cluster: k8s.Cluster, names: list[str]) -> dict[str, MinerView]:
    """Every miner now, from three listings of the namespace (counted in BENCH_LISTS_PER_SAMPLE)."""
    views = {name: MinerView() for name in names}
    for pod in listed(cluster, PODS):
        meta = pod["metadata"]
        view = views.get((meta.get("labels") or {}).get(MINER_LABEL, ""))
        if view is None or meta.get("deletionTimestamp"):
            continue
        view.pods.add(meta["name"])
        if not pod["spec"].get("nodeName"):
            continue
        view.bound += 1
        view.bound_pods.add(meta["name"])
        if pod_ready(pod):
            view.ready += 1
            pool = meta["labels"].get(POOL_LABEL, "")
            view.pools_ready[pool] = view.pools_ready.get(pool, 0) + 1
    for deployment in listed(cluster, DEPLOYMENTS):
        miner_name, _, pool = deployment["metadata"]["name"].partition("-miner-")
        if miner_name in views:
            views[miner_name].deployments[pool] = int(deployment["spec"].get("replicas") or 0)
    for obj in listed(cluster, MINERS):
        view_of = views.get(obj["metadata"]["name"])
        if view_of is None:
            continue
        status = obj.get("status") or {}
        view_of.desired = status.get("desiredReplicas")
        view_of.status_ready = sum(int(p.get("ready") or 0) for p in status.get("pools") or [])
        last = status.get("lastScale")
        if last:
            view_of.last_scale = (last["time"], int(last["replicasFrom"]), int(last["replicasTo"]))
    return views


def listed(cluster: k8s.Cluster, path: str) -> list[Obj]:
    items: list[Obj] = cluster.api("GET", path)["items"]
    return items


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


@dataclass(frozen=True)
class Config:
    miners: int
    nodes: int
    baseline_s: float
    spike_s: float
    recovery_s: float
    spike_queue: int
    scale_interval: float
    cluster_ttl: float
    sample: float
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
    cluster_cpu_s: dict[str, float]  # each control-plane process, and "hollow nodes" together
    reconciles: float
    failures: float
    reconcile_s: float  # summed
    requests: Counter[str]  # the operator's API requests over the trace, by verb
    pods_peak: int
    log_scaled: int
    log_tail: list[str]


def pools(nodes: int) -> tuple[k8s.Pool, ...]:
    return tuple(k8s.Pool(name, nodes, GPUS_PER_NODE, probes=True) for name in POOLS)


def setup(cluster: k8s.Cluster, config: Config, workdir: Path) -> None:
    """CRDs, namespace and wallet (bench_operator_writes.prepare); the spot nodes' taint; a volume a miner."""
    prepare(cluster)
    for name, pool in cluster.node_pools.items():
        if pool.name == "spot":
            patch = {"spec": {"taints": [SPOT_TAINT]}}
            cluster.api("PATCH", f"/api/v1/nodes/{name}", patch, "application/merge-patch+json")
    local_storage(Kube(cluster, workdir), STORAGE_CLASS, workdir / "volumes", volumes=config.miners)


def cluster_cpu(cluster: k8s.Cluster) -> dict[str, float]:
    """CPU seconds so far of each control-plane process, and of the hollow nodes together."""
    spent = {name: 0.0 for name in (*CONTROL_PLANE, "hollow nodes")}
    for component in cluster.components:
        name = "hollow nodes" if component.name.startswith("node-") else component.name
        if name in spent:
            spent[name] += proc_status(component.process.pid)[1]
    return spent


async def operator_alive(port: int, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        await wait_alive(session, port, process)


def measure(cluster: k8s.Cluster, config: Config, workdir: Path) -> Outcome:
    names = [f"m{i}" for i in range(config.miners)]
    trace = Trace(
        baseline_s=config.baseline_s,
        spike_s=config.spike_s,
        recovery_s=config.recovery_s,
        low=1,
        high=config.spike_queue,
        spiking=frozenset(names[::2]),
    )
    clock: dict[str, float | None] = {"start": None}

    def queue(name: str) -> int:
        start = clock["start"]
        return trace.queue(name, None if start is None else time.monotonic() - start)

    setup(cluster, config, workdir)
    # start_operator passes this process's environment on: the two settings the run changes.
    os.environ["QUASAR_OPERATOR_SCALE_INTERVAL"] = str(config.scale_interval)
    os.environ["QUASAR_OPERATOR_CLUSTER_TTL"] = str(config.cluster_ttl)
    metrics_port, liveness_port = k8s.free_port(), k8s.free_port()
    log_path = config.operator_log or workdir / "operator.log"
    with PodEngines(cluster, NAMESPACE, kind="vllm", model_id=MODEL, queues=queue) as engines:
        process = start_operator(cluster, log_path, metrics_port, liveness_port)
        try:
            asyncio.run(operator_alive(liveness_port, process))
            warm_started = time.monotonic()
            for name in names:
                cluster.api("POST", MINERS, miner(name))
            views = warm_up(cluster, names, config, process)
            warmup_s = time.monotonic() - warm_started
            cpu_before, cluster_before = proc_status(process.pid)[1], cluster_cpu(cluster)
            counts_before, seconds_before = reconcile_counts(metrics_port), reconcile_seconds(metrics_port)
            requests_before, listings_before = request_counts(cluster), engines.listings
            bench_before = time.process_time()
            tally, pods_peak, samples = Tally(), 0, 0
            clock["start"] = started = last = time.monotonic()
            while (now := time.monotonic()) - started < trace.total_s:
                check_running(process)
                t = now - started
                current = observe(cluster, names)
                samples += 1
                account(tally, trace, t, now - last, current, views, config.scale_interval + config.sample)
                pods_peak = max(pods_peak, sum(v.bound for v in current.values()))
                if config.follow in current and current[config.follow] != views.get(config.follow):
                    needs = trace.needed(config.follow, t)
                    print(f"needs {needs} " + describe(t, current[config.follow]), file=sys.stderr)
                views, last = current, now
                time.sleep(max(0.0, config.sample - (time.monotonic() - now)))
            duration_s = time.monotonic() - started
            bench_cpu_s = time.process_time() - bench_before
            requests = operator_requests(requests_before, request_counts(cluster))
            # This process's own listings (the sampling, the doubles' thread) are counted there too.
            requests["LIST"] -= BENCH_LISTS_PER_SAMPLE * samples + engines.listings - listings_before
            peak_mb, cpu_after = proc_status(process.pid)
            cluster_after = cluster_cpu(cluster)
            counts_after, seconds_after = reconcile_counts(metrics_port), reconcile_seconds(metrics_port)
        finally:
            stop_operator(process)
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
        cluster_cpu_s={name: cluster_after[name] - cluster_before[name] for name in cluster_after},
        reconciles=sum(counts_after.values()) - sum(counts_before.values()),
        failures=counts_after.get("failure", 0.0) - counts_before.get("failure", 0.0),
        reconcile_s=seconds_after - seconds_before,
        requests=requests,
        pods_peak=pods_peak,
        log_scaled=sum(":Scaled: " in line for line in lines),
        log_tail=lines[-15:],
    )


def check_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"the operator exited with {process.returncode}")


def warm_up(
    cluster: k8s.Cluster, names: list[str], config: Config, process: subprocess.Popen[bytes]
) -> dict[str, MinerView]:
    """Until every miner runs its one ready replica and says so."""
    deadline = time.monotonic() + config.warmup_timeout
    while True:
        views = observe(cluster, names)
        settled = sum(
            v.desired == MIN_REPLICAS and v.ready == v.bound == MIN_REPLICAS for v in views.values()
        )
        if settled == len(names):
            return views
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"warm-up: {settled} of {len(names)} miners at rest after {config.warmup_timeout} s"
            )
        check_running(process)
        time.sleep(config.sample)


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
    asked = c.miners / c.scale_interval
    verbs = ("GET", "LIST", "APPLY", "PATCH", "POST", "DELETE")
    cpu = o.cluster_cpu_s
    return [
        ("miners (spiking)", f"{c.miners} ({spiking}: queue {trace.low} -> {trace.high}, needs 1 -> {high})"),
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
            f"{tally.idle_gpu_s / 3600:.3f} ({policy_floor_gpu_h(trace):.3f})",
        ),
        ("GPU-hours short (needed, not ready)", f"{tally.short_gpu_s / 3600:.3f}"),
        (
            "scale decisions: per minute mean / peak; up, down",
            f"{len(tally.decisions) / minutes:.1f} / {max(per_minute.values(), default=0)}; "
            f"{ups}, {len(tally.decisions) - ups}",
        ),
        ("decisions against the load; ready replicas lost", f"{len(tally.unexpected)}; {len(tally.lost)}"),
        (
            "operator reconciles/s (timer asks); failures",
            f"{o.reconciles / o.duration_s:.2f} ({asked:.2f}); {o.failures:.0f}",
        ),
        (
            "operator mean reconcile (ms)",
            f"{1000 * o.reconcile_s / o.reconciles:.0f}" if o.reconciles else "-",
        ),
        (
            "operator API requests/s: all (" + ", ".join(v.lower() for v in verbs) + ")",
            f"{sum(o.requests.values()) / o.duration_s:.1f} ("
            + ", ".join(f"{o.requests[v] / o.duration_s:.1f}" for v in verbs)
            + ")",
        ),
        ("operator peak RSS (MB)", f"{o.peak_rss_mb:.0f}"),
        ("operator CPU (s, share of one core)", f"{o.cpu_s:.0f} ({100 * o.cpu_s / o.duration_s:.0f}%)"),
        (
            "CPU (s): kube-apiserver, etcd, controller-manager, scheduler; hollow nodes",
            ", ".join(f"{cpu[name]:.0f}" for name in CONTROL_PLANE) + f"; {cpu['hollow nodes']:.0f}",
        ),
        (
            "bench process CPU (s), peak RSS (MB): engine doubles, sampling",
            f"{o.bench_cpu_s:.0f}, {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miners", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=3, help="hollow nodes per pool (8 GPUs each)")
    parser.add_argument("--baseline-s", type=float, default=20)
    parser.add_argument("--spike-s", type=float, default=90)
    parser.add_argument("--spike-queue", type=int, default=10, help="a spiking miner's queue (target 2)")
    parser.add_argument("--recovery-s", type=float, default=120)
    parser.add_argument("--scale-interval", type=float, default=5.0, help="QUASAR_OPERATOR_SCALE_INTERVAL")
    parser.add_argument("--cluster-ttl", type=float, default=5.0, help="QUASAR_OPERATOR_CLUSTER_TTL")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--warmup-timeout", type=float, default=300)
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
        sample=args.sample,
        warmup_timeout=args.warmup_timeout,
        follow=args.follow,
        operator_log=args.operator_log,
    )
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp, k8s.running(pools=pools(config.nodes)) as cluster:
        print(
            f"{os.cpu_count()} CPUs, load average {load_before}; kube-apiserver {cluster.version()}; "
            f"operator: quasar operator run -n {NAMESPACE} (its own process), scale interval "
            f"{config.scale_interval:g} s, cluster cache {config.cluster_ttl:g} s; nodes probe pods "
            "(startup, readiness every 10 s)",
            flush=True,
        )
        outcome = measure(cluster, config, Path(tmp))
    print("| measure | value |")
    print("|---|---|")
    for what, value in report(outcome):
        print(f"| {what} | {value} |")
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
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
    if outcome.failures:
        print("the operator's log ends:\n  " + "\n  ".join(outcome.log_tail))


if __name__ == "__main__":
    main()
