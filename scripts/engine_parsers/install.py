"""The inference engines' own argument parsers, installed where the tests can run them:
`python scripts/engine_parsers/install.py` installs each engine (once per machine) and prints its venv.

The operator writes the engines' flags; only the engines' parsers can say how they read them. vLLM and
SGLang both install from PyPI on a machine without a GPU (their CUDA wheels and torch's CUDA libraries:
about 11 and 10 GB, five minutes each with pip's download cache warm), and their parsers run there
(vllm_parse.py, sglang_parse.py). Each venv is cached outside the clone, keyed by the pin, as the
Kubernetes binaries are (scripts/k8s/build.sh), so every clone on the machine reuses it:
${QUASAR_ENGINE_PARSERS:-~/.cache/quasar/engine-parsers}/<engine>-<version>. The pins are the default
images' (tests/test_engine_args.py checks them against VLLM_IMAGE and SGLANG_IMAGE), so the parsers
checked are the ones the pods run.
"""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

PINS = {"vllm": "0.11.2", "sglang": "0.5.5.post3"}


def cache_root() -> Path:
    return Path(os.environ.get("QUASAR_ENGINE_PARSERS", Path.home() / ".cache" / "quasar" / "engine-parsers"))


def venv(engine: str) -> Path:
    return cache_root() / f"{engine}-{PINS[engine]}"


def python(engine: str) -> Path:
    """The interpreter of the venv holding the engine (installed or not)."""
    return venv(engine) / "bin" / "python"


def install(engine: str) -> Path:
    """The venv holding the engine at its pin, installed unless a finished one is cached."""
    target, requirement = venv(engine), f"{engine}=={PINS[engine]}"
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
        print(f"installing {requirement} into {target} (about 10 GB, minutes)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, requirement], check=True)
        complete.write_text(f"{requirement}\n", encoding="utf-8")
    return target


if __name__ == "__main__":
    for engine in PINS:
        print(install(engine))
