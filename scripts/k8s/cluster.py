"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and hollow GPU nodes, from the binaries scripts/k8s/build.sh builds (docs/cluster.md).

`python scripts/k8s/cluster.py` (`make cluster`) starts one, prints its kubeconfig and runs until Ctrl-C;
tests/e2e/conftest.py starts one per test session through `start()`.

Everything listens on, and connects to, 127.0.0.0/8 only: ports are picked free at run time, the service and
pod ranges are loopback ranges, hollow nodes report their own loopback address, and the API server reaches
into the cluster only through egress_guard.py, which refuses anything else.
"""

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVICE_CIDR = "127.0.128.0/17"  # the `kubernetes` Service gets 127.0.128.1; two Services a miner
# Each cluster's pod range, whose /24s are its nodes' spec.podCIDR (every pod one address of its node's), is
# a 127.N.0.0/16 no other cluster on the machine holds: pods' addresses are served on this machine itself.
POD_RANGE_OCTETS = range(64, 128)  # 127.64.0.0/10
NODE_ADDRESSES = "127.0.1.{}"  # hollow node n (from 1) is named 127.0.1.n, its address
POOL_LABEL = "quasar.ai/pool"
GPU = "nvidia.com/gpu"
START_TIMEOUT = 120.0  # seconds; a warm start takes well under 30 on two busy cores


@dataclass(frozen=True)
class Pool:
    """Hollow nodes labelled `quasar.ai/pool=<name>`, each advertising `gpus_per_node` nvidia.com/gpu.

    `probes`: the nodes' kubelets run the pods' probes against the pods' own addresses, so a pod is Ready
    only while something answers there (a test's engine double); otherwise every container is Ready at once.
    """

    name: str
    nodes: int
    gpus_per_node: int
    probes: bool = False


POOLS = (Pool("h100", 1, 8), Pool("a100", 1, 8), Pool("l4", 1, 4))


class ClusterError(Exception):
    """A component failed to build, start or become ready (the message names it and its log)."""


def build() -> Path:
    """The folder of the built binaries (cached: only the first call on a machine builds)."""
    done = subprocess.run(["bash", str(HERE / "build.sh")], check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise ClusterError(f"scripts/k8s/build.sh failed with exit code {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ----------------------------------------------------------------------------------------- certificates


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Certificates:
    """A CA and the key pairs signed by it, as files in `folder`."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def create_ca(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(self.folder / "ca.key"))
        _openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            str(self.folder / "ca.key"),
            "-subj",
            "/CN=quasar-e2e-ca",
            "-days",
            "30",
            "-out",
            str(self.ca),
        )

    def issue(self, name: str, subject: str, alt_names: str = "") -> tuple[Path, Path]:
        """A certificate for `subject` (`/O=group/CN=user` for clients), valid for `alt_names` if given."""
        key, csr, crt = (self.folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
        _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        extensions = self.folder / f"{name}.ext"
        usage = "serverAuth" if alt_names else "clientAuth"
        extensions.write_text(
            f"extendedKeyUsage={usage}\n" + (f"subjectAltName={alt_names}\n" if alt_names else ""),
            encoding="utf-8",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(self.ca),
            "-CAkey",
            str(self.folder / "ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            str(extensions),
            "-out",
            str(crt),
        )
        return crt, key


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "user"}}],
        "current-context": "e2e",
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML: every client reads it
    return path


# ----------------------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it if the Python process dies without cleaning up."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float) -> None:
        """SIGTERM to its process group, SIGKILL after `grace` seconds."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def check_running(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise ClusterError(
                f"{self.name} exited with code {self.process.returncode}; {self.log}:\n" + "\n".join(tail)
            )


@dataclass
class Cluster:
    """A running cluster. `kubeconfig` is the admin's (system:masters); `stop()` ends every process."""

    workdir: Path
    server: str
    kubeconfig: Path
    certificates: Certificates
    refusals: Path  # destinations outside loopback the API server tried to reach (must stay empty)
    bin_dir: Path
    pod_range: str  # the cluster's 127.N.0.0/16
    components: list[Component] = field(default_factory=list)
    node_pools: dict[str, Pool] = field(default_factory=dict)  # each running hollow node: its pool
    _owns_workdir: bool = False
    _nodes_started: int = 0
    _pod_range_lock: int | None = None  # the open, locked file that claims the pod range

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Component:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "TMPDIR": str(self.workdir / "tmp"), **(env or {})},
                start_new_session=True,  # its own process group: stop() signals all it started
                preexec_fn=_die_with_parent,
            )
        component = Component(name, process, log)
        self.components.append(component)
        return component

    def stop(self) -> None:
        for component in reversed(self.components):  # nodes first, etcd and the guard last
            component.stop(grace=10)
        self.components.clear()
        if self._pod_range_lock is not None:
            os.close(self._pod_range_lock)  # releases the range
            self._pod_range_lock = None
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def issue_kubeconfig(self, name: str, subject: str) -> Path:
        """A kubeconfig for the client certificate of `subject` (e.g. `/O=system:nodes/CN=system:node:X`)."""
        cert, key = self.certificates.issue(name, subject)
        return write_kubeconfig(
            self.workdir / f"{name}.kubeconfig", self.server, self.certificates.ca, cert, key
        )

    def add_nodes(self, pools: tuple[Pool, ...], timeout: float = START_TIMEOUT) -> list[str]:
        """Start each pool's hollow nodes; return their names once they are Ready, have their pod range and
        advertise their GPUs. Node n (from 1, in start order) is named 127.0.1.n."""
        names = []
        for pool in [each for each in pools for _ in range(each.nodes)]:
            self._nodes_started += 1
            name = NODE_ADDRESSES.format(self._nodes_started)
            kubeconfig = self.issue_kubeconfig(f"node-{name}", f"/O=system:nodes/CN=system:node:{name}")
            argv = [
                str(self.bin_dir / "hollow-node"),
                f"--kubeconfig={kubeconfig}",
                f"--name={name}",
                f"--port={free_port()}",
                f"--labels={POOL_LABEL}={pool.name}",
            ]
            self.start(f"node-{name}", [*argv, "--probes"] if pool.probes else argv)
            names.append(name)
            self.node_pools[name] = pool

        def nodes_ready() -> bool:
            # Ready, and given its pod range by the node IPAM controller (which happens a moment after).
            ready = {n["metadata"]["name"] for n in self.nodes() if _is_ready(n) and n["spec"].get("podCIDR")}
            return ready >= set(names)

        self.wait_for(f"hollow nodes {', '.join(names)}", nodes_ready, time.monotonic() + timeout)
        for name in names:
            self.set_gpus(name, self.node_pools[name].gpus_per_node)
        return names

    def remove_node(self, name: str) -> None:
        """Stop a hollow node and delete its Node (the controllers then remove its pods)."""
        component = next(c for c in self.components if c.name == f"node-{name}")
        component.stop(grace=10)
        self.components.remove(component)
        del self.node_pools[name]
        with contextlib.suppress(urllib.error.HTTPError):  # already gone
            self.api("DELETE", f"/api/v1/nodes/{name}")

    def wait_for(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        while True:
            for component in self.components:
                component.check_running()
            with contextlib.suppress(OSError, ValueError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} not ready in time; logs in {self.workdir}/logs")
            time.sleep(0.2)

    # ------------------------------------------------------------------------------------- API calls

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.certificates.ca))
        folder = self.certificates.folder
        context.load_cert_chain(folder / "admin.crt", folder / "admin.key")
        return context

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> bytes:
        """One request to the API server as the admin; the answer's body (HTTPError for 4xx and 5xx)."""
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, context=self._ssl_context(), timeout=30) as answer:
            body_bytes: bytes = answer.read()
            return body_bytes

    def api(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """One request to the API server as the admin; the decoded JSON answer."""
        return json.loads(self.request(method, path, body, content_type) or b"null")

    def version(self) -> str:
        """The API server's version, e.g. `v1.37.2`."""
        git_version: str = self.api("GET", "/version")["gitVersion"]
        return git_version

    def set_gpus(self, node: str, gpus: int, resource: str = GPU) -> None:
        """Advertise `gpus` of `resource` on `node`, as a device plugin would: a PATCH of its status."""
        name = resource.replace("~", "~0").replace("/", "~1")
        patch = [
            {"op": "add", "path": f"/status/capacity/{name}", "value": str(gpus)},
            {"op": "add", "path": f"/status/allocatable/{name}", "value": str(gpus)},
        ]
        self.api("PATCH", f"/api/v1/nodes/{node}/status", patch, "application/json-patch+json")

    def nodes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api("GET", "/api/v1/nodes")["items"]
        return items


def _is_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _https_ok(url: str) -> bool:
    """A component's own /healthz (self-signed serving certificate, on loopback)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as answer:
            return bool(answer.status == 200)
    except urllib.error.URLError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except urllib.error.URLError:
        return False


# ----------------------------------------------------------------------------------------- start


def _egress_config(workdir: Path, socket_path: Path) -> Path:
    through_guard = {"proxyProtocol": "HTTPConnect", "transport": {"uds": {"udsName": str(socket_path)}}}
    config = {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {"name": "cluster", "connection": through_guard},
            {"name": "controlplane", "connection": through_guard},
            {"name": "etcd", "connection": {"proxyProtocol": "Direct"}},
        ],
    }
    path = workdir / "egress-selector.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def claim_pod_range() -> tuple[str, int]:
    """The first 127.N.0.0/16 of POD_RANGE_OCTETS whose lock file this process can hold, and the file's
    descriptor (the claim lasts while it is open; the kernel drops it if the process dies)."""
    folder = (
        Path(os.environ.get("QUASAR_K8S_CACHE", Path.home() / ".cache" / "quasar" / "k8s")) / "pod-ranges"
    )
    folder.mkdir(parents=True, exist_ok=True)
    for octet in POD_RANGE_OCTETS:
        descriptor = os.open(folder / f"127.{octet}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        return f"127.{octet}.0.0/16", descriptor
    raise ClusterError(f"every pod range is taken: {len(POD_RANGE_OCTETS)} clusters run on this machine")


def start(workdir: Path | None = None, pools: tuple[Pool, ...] = POOLS) -> Cluster:
    """Start a cluster and return once the nodes are Ready with their GPUs; stop it on any failure."""
    bin_dir = build()
    pod_range, pod_range_lock = claim_pod_range()
    deadline = time.monotonic() + START_TIMEOUT
    owns = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="quasar-k8s-")) if workdir is None else workdir
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    certificates = Certificates(workdir / "pki")
    api_port = free_port()
    server = f"https://127.0.0.1:{api_port}"
    cluster = Cluster(
        workdir,
        server,
        workdir / "admin.kubeconfig",
        certificates,
        workdir / "egress-refusals.log",
        bin_dir,
        pod_range,
        _owns_workdir=owns,
        _pod_range_lock=pod_range_lock,
    )
    atexit.register(cluster.stop)  # a caller that never calls stop() leaves nothing running either
    try:
        _start_all(cluster, api_port, pools, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_all(cluster: Cluster, api_port: int, pools: tuple[Pool, ...], deadline: float) -> None:
    workdir, certs, bin_dir = cluster.workdir, cluster.certificates, cluster.bin_dir
    certs.create_ca()
    pki = certs.folder
    cluster.issue_kubeconfig("admin", "/O=system:masters/CN=admin")  # cluster.kubeconfig
    serving_cert, serving_key = certs.issue(
        "apiserver",
        "/CN=kube-apiserver",
        "IP:127.0.0.1,IP:127.0.128.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
    )
    kubelet_client_cert, kubelet_client_key = certs.issue(
        "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"
    )
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki / "sa.key"))
    _openssl("ec", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))

    guard_socket = workdir / "egress.sock"
    cluster.start(
        "egress-guard",
        [sys.executable, str(HERE / "egress_guard.py"), str(guard_socket), str(cluster.refusals)],
    )
    etcd_port, etcd_peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    cluster.start(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=e2e",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer_port}",
            "--unsafe-no-fsync",  # a throwaway store: durability only costs time here
            "--log-level=warn",
        ],
    )
    cluster.wait_for("etcd", lambda: _http_ok(f"{etcd_url}/health") and guard_socket.exists(), deadline)

    cluster.start(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={serving_cert}",
            f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={certs.ca}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Endpoints may not hold loopback addresses: the `kubernetes` Service keeps none.
            "--endpoint-reconciler-type=none",
            f"--kubelet-client-certificate={kubelet_client_cert}",
            f"--kubelet-client-key={kubelet_client_key}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--egress-selector-config-file={_egress_config(workdir, guard_socket)}",
            "--profiling=false",
        ],
    )
    cluster.wait_for("kube-apiserver", lambda: cluster.request("GET", "/readyz") == b"ok", deadline)

    manager_port, scheduler_port = free_port(), free_port()
    manager_kubeconfig = cluster.issue_kubeconfig("controller-manager", "/CN=system:kube-controller-manager")
    cluster.start(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={manager_kubeconfig}",
            f"--authentication-kubeconfig={manager_kubeconfig}",
            f"--authorization-kubeconfig={manager_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={manager_port}",
            f"--cert-dir={workdir / 'manager'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={certs.ca}",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={cluster.pod_range}",
            # Endpoints and EndpointSlices may not hold loopback addresses, which every pod here has: the
            # controllers would retry and post a Warning Event a minute per Service. Nothing routes through
            # Services here (no kube-proxy).
            "--controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ],
    )
    scheduler_kubeconfig = cluster.issue_kubeconfig("scheduler", "/CN=system:kube-scheduler")
    cluster.start(
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={scheduler_kubeconfig}",
            f"--authentication-kubeconfig={scheduler_kubeconfig}",
            f"--authorization-kubeconfig={scheduler_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={scheduler_port}",
            f"--cert-dir={workdir / 'scheduler'}",
            "--leader-elect=false",
        ],
    )
    cluster.wait_for(
        "kube-controller-manager", lambda: _https_ok(f"https://127.0.0.1:{manager_port}/healthz"), deadline
    )
    cluster.wait_for(
        "kube-scheduler", lambda: _https_ok(f"https://127.0.0.1:{scheduler_port}/healthz"), deadline
    )
    cluster.add_nodes(pools, deadline - time.monotonic())


@contextlib.contextmanager
def running(workdir: Path | None = None, pools: tuple[Pool, ...] = POOLS) -> Iterator[Cluster]:
    cluster = start(workdir, pools)
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a loopback Kubernetes cluster until Ctrl-C.")
    parser.add_argument(
        "--workdir", type=Path, help="keep certificates, data and logs here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    # SIGTERM (a CI job ending, `kill`) stops the cluster as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()
    try:
        with running(args.workdir) as cluster:
            print(
                f"kube-apiserver {cluster.version()} ready in {time.monotonic() - started:.1f} s", flush=True
            )
            print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
            print(f"logs: {cluster.workdir}/logs; Ctrl-C stops it", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
