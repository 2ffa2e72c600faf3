"""N QuasarMiners created at once: how long until the operator has reconciled them all, per-object latency,
and the operator process's peak memory.

    .venv/bin/python -m benchmarks.bench_operator [--counts 100,500] [--timeout 300]

For each N:

- this process runs the API server: kmock's emulator with the tests' adaptations (tests/k8s_emulator.py),
  without its request log (adaptation 4, whose O(N²) matching would otherwise be what is measured); its
  lists honour `labelSelector` (adaptation 5: otherwise each reconcile, which lists its miner's own
  Deployments, would get and parse all N, an O(N²) that a real API server does not cause);
- the operator runs as users run it, `quasar operator run -A` in its own process, logged in through a
  kubeconfig that points at the emulator, with the production settings (60 s drift timer);
- one wallet Secret, then N QuasarMiners (crds/examples/quasarminer.yaml, each with a fixed external IP:
  the emulator runs no cloud controller to give a LoadBalancer one) are created as fast as the API server
  takes them.

Measured: "all reconciled", from the first create to the last resource whose status says Reconciled=True
(its children applied); per-object latency, from a resource's create to its Reconciled=True (the
emulator's state, sampled every 20 ms); the reconciles and failures the operator counted (its Prometheus
metrics); its peak RSS (VmHWM) and the CPU time it used from the first create to the end (Linux /proc); the
CPU time of this process over the same span: the emulator, and the sampling (at most about 1 ms a sample
at N=500). Both processes share the machine's cores. p99 is the nearest rank.
Target: 500 reconciled in under 60 s, peak RSS under 300 MB.
"""

import argparse
import asyncio
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml
from prometheus_client.parser import text_string_to_metric_families
from quasar_operator.apply import KubeApi, object_path

from benchmarks.operator_process import kubeconfig, proc_status, wait_alive
from tests.k8s_emulator import Emulator, client, emulator, free_port, url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "crds" / "examples" / "quasarminer.yaml"
NAMESPACE = "bench"
MINERS = f"/apis/quasar.ai/v1alpha1/namespaces/{NAMESPACE}/quasarminers"
# kmock looks up `objects[key]` with the resource as a string, but `key in objects` only with this.
RESOURCE = kmock.resource("quasar.ai/v1alpha1/quasarminers")
POLL = 0.02


@dataclass(frozen=True)
class Outcome:
    count: int
    reconciled: int
    total_s: float
    p50_s: float
    p99_s: float
    reconciles: float
    failures: float
    peak_rss_mb: float
    cpu_s: float
    emulator_cpu_s: float


def miner(name: str, example: dict[str, Any]) -> dict[str, Any]:
    body = {**example, "metadata": {"name": name, "namespace": NAMESPACE}}
    body["spec"] = {**example["spec"], "exposure": {"externalIP": "203.0.113.7"}}
    return body


def reconciled(server: Emulator, name: str) -> bool:
    key = (RESOURCE, NAMESPACE, name)
    if key not in server.objects:
        return False
    conditions = (server.objects[key].get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Reconciled" and c.get("status") == "True" for c in conditions)


async def metrics(session: aiohttp.ClientSession, port: int) -> tuple[float, float]:
    """The operator's own counts: QuasarMiner reconciles, and those that failed."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    counts = {"success": 0.0, "failure": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "quasar_operator_reconciles":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("kind") == "QuasarMiner":
                    counts[sample.labels["outcome"]] += sample.value
    return counts["success"] + counts["failure"], counts["failure"]


async def create_all(api: KubeApi, names: list[str], example: dict[str, Any]) -> dict[str, float]:
    created: dict[str, float] = {}

    async def create(name: str) -> None:
        await api.create(MINERS, miner(name, example))
        created[name] = time.monotonic()

    await asyncio.gather(*(create(name) for name in names))
    return created


async def measure(count: int, timeout: float, workdir: Path) -> Outcome:
    example = yaml.safe_load(EXAMPLE.read_text())
    names = [f"m{i}" for i in range(count)]
    # SIGTERM cancels this, so that the finally below stops the operator while the emulator still serves it.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with emulator(log_requests=False) as server, client(server) as api:
        await api.create(
            object_path("Secret", NAMESPACE),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "miner-wallet"},
                # The keys the pods mount (values base64): the operator refuses a Secret without them.
                "data": {"hotkey": "e30=", "coldkeypub.txt": "e30="},
            },
        )
        config = workdir / "kubeconfig"
        kubeconfig(config, url(server))
        liveness, metrics_port = free_port(), free_port()
        command = [sys.executable, "-m", "quasar_cli", "operator", "run", "-A"]
        command += ["--liveness-port", str(liveness), "--metrics-port", str(metrics_port)]
        env = {**os.environ, "KUBECONFIG": str(config)}
        with (workdir / f"operator-{count}.log").open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_alive(session, liveness, process)
                _, cpu_before = proc_status(process.pid)
                emulator_before = time.process_time()
                started = time.monotonic()
                creating = asyncio.create_task(create_all(api, names, example))
                done: dict[str, float] = {}
                while len(done) < count and time.monotonic() - started < timeout:
                    await asyncio.sleep(POLL)
                    now = time.monotonic()
                    done.update(
                        {name: now for name in names if name not in done and reconciled(server, name)}
                    )
                created = await creating
                emulator_cpu_s = time.process_time() - emulator_before
                peak_mb, cpu_after = proc_status(process.pid)
                reconciles, failures = await metrics(session, metrics_port)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                # In a thread: the operator may still be waiting on the emulator, which this loop serves.
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    latencies = sorted(done[name] - created[name] for name in done)
    rank = max(0, math.ceil(0.99 * len(latencies)) - 1)
    return Outcome(
        count=count,
        reconciled=len(done),
        total_s=max(done.values(), default=started) - started,
        p50_s=statistics.median(latencies) if latencies else float("nan"),
        p99_s=latencies[rank] if latencies else float("nan"),
        reconciles=reconciles,
        failures=failures,
        peak_rss_mb=peak_mb,
        cpu_s=cpu_after - cpu_before,
        emulator_cpu_s=emulator_cpu_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="100,500", help="comma-separated numbers of QuasarMiners")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for each N")
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    print(
        f"{os.cpu_count()} CPUs; operator: quasar operator run -A (its own process) against kmock's emulator"
    )
    columns = ["N", "reconciled", "all reconciled (s)", "p50 (s)", "p99 (s)", "reconciles", "failures"]
    columns += ["peak RSS (MB)", "operator CPU (s)", "emulator CPU (s)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            try:
                o = asyncio.run(measure(count, args.timeout, Path(tmp)))
            except asyncio.CancelledError:
                sys.exit(143)
            print(
                f"| {o.count} | {o.reconciled} | {o.total_s:.1f} | {o.p50_s:.2f} | {o.p99_s:.2f} "
                f"| {o.reconciles:.0f} | {o.failures:.0f} | {o.peak_rss_mb:.0f} | {o.cpu_s:.1f} "
                f"| {o.emulator_cpu_s:.1f} |",
                flush=True,
            )
            if o.reconciled < o.count:
                log = Path(tmp) / f"operator-{count}.log"
                print(f"  not all reconciled within {args.timeout:.0f} s; the operator's log ends:")
                print("  " + "\n  ".join(log.read_text().splitlines()[-10:]))


if __name__ == "__main__":
    main()
