"""API writes per minute at steady state: N QuasarMiners on the real control plane (target 0).

    .venv/bin/python -m benchmarks.bench_operator_writes [--count 100] [--window 180] [--settle 70]

- A loopback cluster (scripts/k8s/cluster.py: etcd, kube-apiserver, controller-manager, scheduler, three
  hollow GPU nodes, here each advertising 40 GPUs so that every miner's pod is scheduled and Ready);
- the committed CRDs, a wallet Secret, a model-cache claim bound to a host-path volume (every miner names
  it as `cache.existingClaim`), then N QuasarMiners (crds/examples/quasarminer.yaml with a fixed external
  IP: no cloud controller gives a LoadBalancer one);
- the operator as users run it, `quasar operator run -n bench` in its own process with the production
  settings (60 s drift timer: every miner reconciled once a minute), as the cluster's admin.

Measured, once every miner is Ready and `--settle` more seconds have passed (every drift timer has fired
at least once since): over `--window` seconds, the write requests (POST, PATCH, APPLY, DELETE; not PUT,
which only controllers use) the API server served on what the operator writes (its
`apiserver_request_total`: QuasarMiners and their status, Deployments, Services, PodDisruptionBudgets,
PersistentVolumeClaims, StatefulSets, and core Events from any source), per minute, with the reconciles the
operator ran in the window (its own metrics).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts.k8s import cluster as k8s
from tests.e2e.test_operator_lifecycle import operator_writes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "crds" / "examples" / "quasarminer.yaml"
NAMESPACE = "bench"
GPUS_PER_NODE = 40


def kubectl(cluster: k8s.Cluster, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(k8s.build() / "kubectl"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr}")
    return done.stdout


def prepare(cluster: k8s.Cluster) -> None:
    """The committed CRDs, established; the namespace NAMESPACE and its wallet Secret."""
    kubectl(
        cluster,
        "apply",
        "--server-side",
        *[a for p in sorted((ROOT / "crds").glob("*.yaml")) for a in ("-f", str(p))],
    )
    kubectl(cluster, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl(cluster, "create", "namespace", NAMESPACE)
    kubectl(
        cluster, "create", "secret", "generic", "miner-wallet", "-n", NAMESPACE,
        "--from-literal=hotkey={}", "--from-literal=coldkeypub.txt={}",
    )  # fmt: skip


def miner(name: str, example: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """crds/examples/quasarminer.yaml (`example`) named `name`, with a fixed external IP (no cloud controller
    gives a LoadBalancer one) and `spec`'s fields."""
    body = {**example, "metadata": {"name": name, "namespace": NAMESPACE}}
    body["spec"] = {**example["spec"], "exposure": {"externalIP": "203.0.113.7"}, **spec}
    return body


def setup(cluster: k8s.Cluster, count: int, volume: Path) -> None:
    prepare(cluster)
    for name in cluster.node_pools:
        cluster.set_gpus(name, GPUS_PER_NODE)
    storage: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "bench-models"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "bench",
                "hostPath": {"path": str(volume)},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": NAMESPACE},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "bench",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    kubectl(
        cluster, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": storage})
    )
    example = yaml.safe_load(EXAMPLE.read_text())
    miners = [miner(f"m{index}", example, cache={"existingClaim": "models"}) for index in range(count)]
    kubectl(
        cluster, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": miners})
    )


def ready_count(cluster: k8s.Cluster) -> int:
    listed = cluster.api("GET", f"/apis/quasar.ai/v1alpha1/namespaces/{NAMESPACE}/quasarminers")["items"]
    return sum(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (m.get("status") or {}).get("conditions") or []
        )
        for m in listed
    )


def reconcile_counts(port: int) -> dict[str, float]:
    """The reconciles the operator has run, of every kind, by outcome (`success`, `failure`): its metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "quasar_operator_reconciles":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels["outcome"]
                    counts[outcome] = counts.get(outcome, 0.0) + sample.value
    return counts


def reconciles(port: int) -> float:
    return sum(reconcile_counts(port).values())


def start_operator(
    cluster: k8s.Cluster, log: Path, metrics_port: int, liveness_port: int
) -> subprocess.Popen[bytes]:
    """`quasar operator run -n NAMESPACE` in its own process, production settings, as the cluster's admin."""
    command = [sys.executable, "-m", "quasar_cli", "operator", "run", "-n", NAMESPACE]
    command += ["--liveness-port", str(liveness_port), "--metrics-port", str(metrics_port)]
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "QUASAR_OPERATOR_LISTEN_ADDRESS": "127.0.0.1",
    }
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def stop_operator(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="QuasarMiners")
    parser.add_argument("--window", type=float, default=180, help="seconds of steady state measured")
    parser.add_argument("--settle", type=float, default=70, help="seconds after all are Ready, first")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for all Ready")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, k8s.running() as cluster:
        print(
            f"{os.cpu_count()} CPUs; kube-apiserver {cluster.version()}; {args.count} QuasarMiners",
            flush=True,
        )
        setup(cluster, args.count, Path(tmp) / "models")
        metrics_port = k8s.free_port()
        process = start_operator(cluster, Path(tmp) / "operator.log", metrics_port, k8s.free_port())
        try:
            started = time.monotonic()
            while (ready := ready_count(cluster)) < args.count:
                if time.monotonic() - started > args.timeout:
                    print(f"only {ready} of {args.count} Ready after {args.timeout:.0f} s")
                    return 1
                time.sleep(1)
            print(
                f"all {args.count} Ready in {time.monotonic() - started:.1f} s; settling {args.settle:.0f} s",
                flush=True,
            )
            time.sleep(args.settle)
            writes_before, reconciles_before = operator_writes(cluster), reconciles(metrics_port)
            time.sleep(args.window)
            writes_after, reconciles_after = operator_writes(cluster), reconciles(metrics_port)
        finally:
            stop_operator(process)
    minutes = args.window / 60
    delta = {
        k: v - writes_before.get(k, 0.0) for k, v in writes_after.items() if v != writes_before.get(k, 0.0)
    }
    print("| N | window (s) | reconciles | write requests | writes per minute |")
    print("|---|---|---|---|---|")
    total = sum(delta.values())
    print(
        f"| {args.count} | {args.window:.0f} | {reconciles_after - reconciles_before:.0f} | {total:.0f} "
        f"| {total / minutes:.1f} |"
    )
    for key, value in sorted(delta.items()):
        print(f"  {key}: {value:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
