"""The e2e tier: tests against a real control plane (scripts/k8s/cluster.py; docs/cluster.md).

Collected only with QUASAR_E2E=1 (`make e2e`): the first run on a machine builds Kubernetes (minutes), and
each session starts a cluster. One cluster serves the whole session; tests keep to namespaces of their own.
"""

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.k8s import cluster as k8s

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".venv" / "bin" / "helm"

collect_ignore_glob = [] if os.environ.get("QUASAR_E2E") == "1" else ["test_*.py"]


def pytest_report_header() -> list[str]:
    if not collect_ignore_glob:
        # The built server's own answer (`Kubernetes v1.N.M`), printed before any test runs.
        answer = subprocess.run(
            [str(k8s.build() / "kube-apiserver"), "--version"], check=True, capture_output=True, text=True
        ).stdout.split()
        return [f"kube-apiserver {answer[-1]}"]
    return []


class Kube:
    """kubectl and helm, as the cluster's admin."""

    def __init__(self, cluster: k8s.Cluster, tmp: Path) -> None:
        self.cluster = cluster
        self.kubectl_path = k8s.build() / "kubectl"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            # helm's caches and settings stay inside the test run.
            "HELM_CACHE_HOME": str(tmp / "helm-cache"),
            "HELM_CONFIG_HOME": str(tmp / "helm-config"),
            "HELM_DATA_HOME": str(tmp / "helm-data"),
        }

    def _run(self, argv: list[str], stdin: str | None, check: bool) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env, timeout=180)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.kubectl_path), *args], stdin, check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(HELM), *args], None, check)


@pytest.fixture(scope="session")
def cluster() -> Iterator[k8s.Cluster]:
    with k8s.running() as running:
        yield running


@pytest.fixture(scope="session")
def kube(cluster: k8s.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Kube:
    return Kube(cluster, tmp_path_factory.mktemp("kube"))


@pytest.fixture(scope="session")
def crds_installed(kube: Kube) -> None:
    """The committed CRDs, applied server-side (too large for client-side apply's annotation), Established."""
    files = [arg for path in sorted((REPO / "crds").glob("*.yaml")) for arg in ("-f", str(path))]
    kube.kubectl("apply", "--server-side", *files)
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", *files)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")
