"""The inference engines' own argument parsers, installed where the tests can run them:
`python scripts/engine_parsers/install.py` installs each (once per machine) and prints its venv.

The operator writes the engines' flags; only the engines' parsers can say how they read them. vLLM installs
from PyPI on a machine without a GPU (its CUDA wheels and torch's CUDA libraries: about 11 GB, five minutes
with pip's download cache warm), and its parser runs there (vllm_parse.py). The venv is cached outside the
clone, keyed by the pin, as the Kubernetes binaries are (scripts/k8s/build.sh), so every clone on the machine
reuses it: ${QUASAR_ENGINE_PARSERS:-~/.cache/quasar/engine-parsers}/vllm-<version>. The pin is the default
image's (tests/test_engine_args.py checks it against VLLM_IMAGE), so the parser checked is the one pods run.
"""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

VLLM_VERSION = "0.11.2"


def cache_root() -> Path:
    return Path(os.environ.get("QUASAR_ENGINE_PARSERS", Path.home() / ".cache" / "quasar" / "engine-parsers"))


def vllm_python() -> Path:
    """The interpreter of the venv holding vLLM (installed or not)."""
    return cache_root() / f"vllm-{VLLM_VERSION}" / "bin" / "python"


def install_vllm() -> Path:
    """The venv holding vLLM at the pin, installed unless a finished one is cached."""
    target = cache_root() / f"vllm-{VLLM_VERSION}"
    complete = target / ".complete"
    if complete.is_file():
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    # One install at a time per machine: a second caller waits, then finds the finished venv.
    with open(cache_root() / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete.is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)  # what an interrupted install left
        print(f"installing vllm=={VLLM_VERSION} into {target} (about 11 GB, minutes)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, f"vllm=={VLLM_VERSION}"], check=True)
        complete.write_text(f"vllm=={VLLM_VERSION}\n", encoding="utf-8")
    return target


if __name__ == "__main__":
    print(install_vllm())
