"""N QuasarMiners created at once on the real control plane: how long until the operator has reconciled them
all, per-miner latency, what it costs the operator, and the API server requests it makes per reconcile.

    .venv/bin/python -m benchmarks.bench_operator [--counts 100,500] [--timeout 300]

For each N, a fresh cluster and operator:

- a loopback cluster (scripts/k8s/cluster.py: etcd, kube-apiserver, controller-manager, scheduler, three
  hollow GPU nodes as it starts them; its service range, a /16, holds the two ClusterIPs each miner takes);
- the committed CRDs, the namespace `bench` and its wallet Secret (bench_operator_writes.prepare);
- the operator as users run it, `quasar operator run -n bench` in its own process with the production
  settings (60 s drift timer), as the cluster's admin;
- then N QuasarMiners (crds/examples/quasarminer.yaml with a fixed external IP: no cloud controller gives a
  LoadBalancer one), POSTed concurrently by this process (up to 100 in flight, aiohttp's default pool).

The miners' pods stay Pending, never scheduled: each miner's model-cache claim (the example's default) has
no StorageClass and the cluster no provisioner, so no claim binds and the scheduler places no pod. What is
measured is the operator and the control plane, not 500 hollow pods (which three hollow nodes, 20 GPUs in
all, could not hold anyway).

Measured:

- "all reconciled": from the first create to the last miner whose status says the operator reconciled its
  current spec (status.observedGeneration == metadata.generation, and Reconciled=True: its children
  applied), as a watch on the miners sees it; each miner's latency, from its create's answer to that; p99
  is the nearest rank;
- reconciles and failures, as the operator's own metrics count them;
- the operator's peak RSS (VmHWM), and the CPU time (/proc) of the operator, kube-apiserver and etcd from
  the first create to the last miner reconciled;
- API requests per reconcile: what the API server served (its `apiserver_request_total`, after minus
  before) on what the operator reads and writes, by verb. Reads: GET and LIST of QuasarMiners, Secrets,
  Deployments, Services, PodDisruptionBudgets, PersistentVolumeClaims and Pods (the controllers read
  through their watches). Writes: those bench_operator_writes counts, less this benchmark's own creates
  and less core Events, which the controllers post too (the persistent-volume controller, about every
  claim); the operator's Events are counted apart, as the Events in the namespace it reported. WATCH is
  left out: opened once, long-running.
Target: 500 reconciled in under 60 s, peak RSS under 300 MB.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml
from prometheus_client.parser import text_string_to_metric_families
from quasar_operator.apply import KubeApi
from quasar_operator.settings import FIELD_MANAGER

from benchmarks.bench_operator_writes import (
    EXAMPLE,
    NAMESPACE,
    miner,
    prepare,
    reconcile_counts,
    start_operator,
    stop_operator,
)
from benchmarks.operator_process import proc_status, wait_alive
from scripts.k8s import cluster as k8s
from tests.e2e.test_operator_lifecycle import WRITE_VERBS, WRITTEN

MINERS = f"/apis/quasar.ai/v1alpha1/namespaces/{NAMESPACE}/quasarminers"
READ_VERBS = {"GET", "LIST"}
READ = WRITTEN | {("", "secrets"), ("", "pods")}
VERBS = ("GET", "LIST", "APPLY", "PATCH", "POST", "DELETE")


@dataclass(frozen=True)
class Outcome:
    count: int
    reconciled: int
    created_s: float
    total_s: float
    p50_s: float
    p99_s: float
    reconciles: float
    failures: float
    peak_rss_mb: float
    cpu_s: float
    apiserver_cpu_s: float
    etcd_cpu_s: float
    requests: Counter[str]  # the operator's, by verb
    events: int  # the Events the operator posted


def is_reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == "Reconciled" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def request_counts(cluster: k8s.Cluster) -> Counter[tuple[str, str, str, str]]:
    """Every request the API server has served, by (verb, group, resource, subresource)."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for family in text_string_to_metric_families(cluster.request("GET", "/metrics").decode()):
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                key = (labels["verb"], labels.get("group", ""), labels.get("resource", ""))
                counts[(*key, labels.get("subresource", ""))] += int(sample.value)
    return counts


def operator_requests(
    before: Counter[tuple[str, str, str, str]], after: Counter[tuple[str, str, str, str]]
) -> Counter[str]:
    """Of the requests served between `before` and `after`, the operator's by verb (the module says which)."""
    by_verb: Counter[str] = Counter()
    for (verb, group, resource, subresource), value in (after - before).items():
        if subresource and group != "quasar.ai":
            continue  # a child's status: its controller's
        if (verb, group, resource) == ("POST", "quasar.ai", "quasarminers"):
            continue  # this benchmark's creates
        read = verb in READ_VERBS and (group, resource) in READ
        written = verb in WRITE_VERBS and (group, resource) in WRITTEN - {("", "events")}
        if read or written:
            by_verb[verb] += value
    return by_verb


def operator_events(cluster: k8s.Cluster) -> int:
    events = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    return sum(e.get("reportingComponent") == FIELD_MANAGER for e in events)


def connection(cluster: k8s.Cluster) -> kopf.ConnectionInfo:
    folder = cluster.certificates.folder
    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=cluster.certificates.ca,
        certificate_path=folder / "admin.crt",
        private_key_path=folder / "admin.key",
    )


async def watch_reconciled(api: KubeApi, done: dict[str, float], count: int) -> None:
    """Note in `done` when each miner is first seen reconciled, until `count` are.

    A watch without a resourceVersion starts with every miner that exists already, so none is missed while
    it connects; and when the API server ends it (it closes a watch whose client falls behind a burst of 500
    creates), the next one starts the same way.
    """
    no_timeout = aiohttp.ClientTimeout(total=None)
    while len(done) < count:
        async with api.session.get(
            api.server + MINERS, params={"watch": "true"}, timeout=no_timeout
        ) as response:
            response.raise_for_status()
            async for line in response.content:
                event = json.loads(line)
                if event["type"] == "ERROR":
                    break  # a Status (an expired version): watch again
                obj = event["object"]
                name = obj["metadata"]["name"]
                if name not in done and is_reconciled(obj):
                    done[name] = time.monotonic()
                    if len(done) == count:
                        return


async def create_all(api: KubeApi, count: int) -> dict[str, float]:
    example = yaml.safe_load(EXAMPLE.read_text())
    created: dict[str, float] = {}

    async def create(name: str) -> None:
        await api.create(MINERS, miner(name, example))
        created[name] = time.monotonic()

    await asyncio.gather(*(create(f"m{i}") for i in range(count)))
    return created


def cpu_s(pid: int) -> float:
    return proc_status(pid)[1]


async def measure(cluster: k8s.Cluster, count: int, timeout: float, log: Path) -> Outcome:
    prepare(cluster)
    pids = {c.name: c.process.pid for c in cluster.components}
    metrics_port, liveness_port = k8s.free_port(), k8s.free_port()
    process = start_operator(cluster, log, metrics_port, liveness_port)
    api = KubeApi.connect(connection(cluster), timeout=60, user_agent="bench-operator")
    try:
        await wait_alive(api.session, liveness_port, process)
        before = request_counts(cluster)
        cpu_before = [cpu_s(pid) for pid in (process.pid, pids["kube-apiserver"], pids["etcd"])]
        done: dict[str, float] = {}
        watching = asyncio.create_task(watch_reconciled(api, done, count))
        started = time.monotonic()
        created = await create_all(api, count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watching, max(0.0, timeout - (time.monotonic() - started)))
        cpu_after = [cpu_s(pid) for pid in (process.pid, pids["kube-apiserver"], pids["etcd"])]
        peak_mb = proc_status(process.pid)[0]
        after = request_counts(cluster)
        counts = reconcile_counts(metrics_port)
        events = operator_events(cluster)
    finally:
        await api.close()
        await asyncio.to_thread(stop_operator, process)
    latencies = sorted(done[name] - created[name] for name in done)
    rank = max(0, math.ceil(0.99 * len(latencies)) - 1)
    operator_cpu, apiserver_cpu, etcd_cpu = (a - b for a, b in zip(cpu_after, cpu_before, strict=True))
    return Outcome(
        count=count,
        reconciled=len(done),
        created_s=max(created.values()) - started,
        total_s=max(done.values(), default=started) - started,
        p50_s=statistics.median(latencies) if latencies else float("nan"),
        p99_s=latencies[rank] if latencies else float("nan"),
        reconciles=sum(counts.values()),
        failures=counts.get("failure", 0.0),
        peak_rss_mb=peak_mb,
        cpu_s=operator_cpu,
        apiserver_cpu_s=apiserver_cpu,
        etcd_cpu_s=etcd_cpu,
        requests=operator_requests(before, after),
        events=events,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="100,500", help="comma-separated numbers of QuasarMiners")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for each N")
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    columns = ["N", "reconciled", "all reconciled (s)", "p50 (s)", "p99 (s)", "reconciles", "failures"]
    columns += ["peak RSS (MB)", "operator CPU (s)", "kube-apiserver CPU (s)", "etcd CPU (s)"]
    columns.append("API requests per reconcile")
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, count in enumerate(counts):
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            with k8s.running() as cluster:
                if index == 0:
                    print(f"{os.cpu_count()} CPUs; kube-apiserver {cluster.version()}; operator: quasar "
                          f"operator run -n {NAMESPACE} (its own process)", flush=True)  # fmt: skip
                    print("| " + " | ".join(columns) + " |")
                    print("|" + "---|" * len(columns), flush=True)
                log = Path(tmp) / f"operator-{count}.log"
                o = asyncio.run(measure(cluster, count, args.timeout, log))
            per_reconcile = {v: o.requests[v] / max(o.reconciles, 1) for v in VERBS if o.requests[v]}
            print(
                f"| {o.count} | {o.reconciled} | {o.total_s:.1f} | {o.p50_s:.2f} | {o.p99_s:.2f} "
                f"| {o.reconciles:.0f} | {o.failures:.0f} | {o.peak_rss_mb:.0f} | {o.cpu_s:.1f} "
                f"| {o.apiserver_cpu_s:.1f} | {o.etcd_cpu_s:.1f} | {sum(per_reconcile.values()):.1f} |",
                flush=True,
            )
            notes.append(
                f"N={count}: load average before {load}, after "
                + " ".join(f"{x:.2f}" for x in os.getloadavg())
                + "; requests per reconcile by verb: "
                + ", ".join(f"{verb} {n:.2f}" for verb, n in per_reconcile.items())
                + f"; all created in {o.created_s:.1f} s; Events the operator posted: {o.events}"
            )
            if o.reconciled < o.count:
                notes.append(f"N={count}: not all reconciled within {args.timeout:.0f} s; the log ends:")
                notes.append("  " + "\n  ".join(log.read_text().splitlines()[-10:]))
    print("\n".join(notes))


if __name__ == "__main__":
    main()
