"""Regenerate the container images' lock files, images/<image>/requirements.lock, with uv.

    python3 -m venv /tmp/uv && /tmp/uv/bin/pip install uv
    python scripts/lock_images.py --uv /tmp/uv/bin/uv

Each lock pins, with every artifact's sha256, the distributions of the image's extras (and the project's build
backend, which the image builds the project with) for CPython 3.11 on x86-64 glibc 2.28+, the images' base.
The Dockerfiles install it with `pip install --require-hashes`, so a build gets exactly these files or fails.

The neuron image's torch is PyTorch's CPU build, not PyPI's (whose Linux x86-64 wheel pulls several GB of CUDA
libraries): torch's CUDA-only dependencies are left out of the resolution, and torch itself is the CPU wheel
from PyTorch's index, at the version pyproject.toml pins, with its sha256. That index is not reachable from
the project's machines, so the wheel's digest is written here; change it with the pin.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
LOCK_NAME = "requirements.lock"
# image -> the extras it installs.
EXTRAS = {"operator": ("operator",), "neuron": ("miner", "validator")}
TARGET = ("--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28")
# A platform where PyPI's torch wheel is the CPU build: what it needs there is what the CPU build needs.
CPU_ONLY_PLATFORM = "x86_64-pc-windows-msvc"
REGENERATE = "python scripts/lock_images.py --uv PATH_TO_UV"

TORCH_VERSION = "2.13.0"
TORCH_CPU_WHEEL = (
    f"https://download.pytorch.org/whl/cpu/torch-{TORCH_VERSION}%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"
)
TORCH_CPU_SHA256 = "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"


class LockError(Exception):
    """The project's pins and this script disagree, or uv failed."""


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def torch_pin() -> str:
    """pyproject.toml's exact torch pin, which must be the CPU wheel's version above."""
    extras = pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    (pin,) = [r for r in extras["local"] if r.startswith("torch")]
    if pin != f"torch=={TORCH_VERSION}":
        raise LockError(
            f"pyproject.toml pins {pin}; scripts/lock_images.py has the CPU wheel of {TORCH_VERSION}"
        )
    return str(pin)


def compile_lock(uv: str, requirements: list[str], *options: str) -> str:
    """`uv pip compile` of pyproject.toml (with `options`) plus further requirement lines, hashes included."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "requirements.in"
        extra.write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")
        command = [uv, "pip", "compile", "--quiet", "--no-header", "--generate-hashes", *TARGET]
        proc = subprocess.run(
            [*command, "pyproject.toml", str(extra), *options],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise LockError(f"uv pip compile failed:\n{proc.stderr}")
    # uv names the temporary file it was given in its `# via` comments.
    return proc.stdout.replace(f"-r {extra}", "build-system.requires")


def names(uv: str, requirement: str, platform: str) -> set[str]:
    """The distributions `requirement` resolves to on `platform`."""
    command = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", *TARGET[:2]]
    proc = subprocess.run(
        [*command, "--python-platform", platform, "-"],
        input=requirement,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise LockError(f"uv pip compile {requirement} for {platform} failed:\n{proc.stderr}")
    return {line.split("==")[0] for line in proc.stdout.splitlines() if "==" in line}


def cuda_only(uv: str, pin: str) -> set[str]:
    """What PyPI's Linux x86-64 torch needs that its CPU build does not: the CUDA libraries and triton."""
    linux = names(uv, pin, TARGET[-1])
    return linux - names(uv, pin, CPU_ONLY_PLATFORM)


def lock(uv: str, image: str) -> str:
    build = list(pyproject()["build-system"]["requires"])  # type: ignore[index]
    options = [arg for extra in EXTRAS[image] for arg in ("--extra", extra)]
    header = [
        f"# The {image} image's distributions (extras {', '.join(EXTRAS[image])}, and the build backend) for",
        f"# CPython 3.11 on x86_64-manylinux_2_28, with every file's sha256. Do not edit: {REGENERATE}.",
    ]
    body = compile_lock(uv, build, *options)
    if not re.search(r"^torch==", body, re.MULTILINE):
        return "\n".join(header) + "\n" + body
    pin = torch_pin()
    with tempfile.TemporaryDirectory() as tmp:
        excludes = Path(tmp) / "excludes.txt"
        excludes.write_text("".join(f"{n}\n" for n in sorted(cuda_only(uv, pin))), encoding="utf-8")
        body = compile_lock(uv, build, *options, "--excludes", str(excludes), "--no-emit-package", "torch")
    header.append(f"# torch: PyTorch's CPU wheel of {pin} (its CUDA-only dependencies left out).")
    torch = f"torch @ {TORCH_CPU_WHEEL} \\\n    --hash=sha256:{TORCH_CPU_SHA256}\n"
    return "\n".join(header) + "\n" + torch + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default="uv", help="the uv executable (default: uv on PATH)")
    parser.add_argument("images", nargs="*", default=sorted(EXTRAS), help="default: every image")
    args = parser.parse_args(argv)
    for image in args.images:
        if image not in EXTRAS:
            parser.error(f"unknown image {image!r}: one of {', '.join(sorted(EXTRAS))}")
        path = IMAGES / image / LOCK_NAME
        try:
            path.write_text(lock(args.uv, image), encoding="utf-8")
        except LockError as exc:
            print(f"{image}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
