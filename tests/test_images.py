"""The container images' Dockerfiles (images/): linted by hadolint and checkov, and checked against the
repository: what they copy exists, what they install is what their entry points need, every base is pinned by
digest and every distribution comes from a lock file with hashes (images/<image>/requirements.lock, written by
scripts/lock_images.py).

No Docker engine runs here, so the images are not built. What a build would show is checked instead: each
entry point runs with only the distributions its image installs (the others made unimportable).
"""

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from quasar_operator.builders.common import NEURON_UID

import quasar_cli
from scripts import lock_images
from tests.tools import HADOLINT, REPO, assert_clean, checkov, require

IMAGES = REPO / "images"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]["name"]
# image -> the extras it installs, and the commands it runs (the operator's Deployment, the neurons' pods).
EXTRAS = {"operator": {"operator"}, "neuron": {"miner", "validator"}}
COMMANDS = {
    "operator": [["operator", "run", "--help"]],
    "neuron": [["miner", "--help"], ["validator", "--help"]],
}
# Source folders and the import packages they hold.
PACKAGES = {"evaluation/": "evaluation", "neurons/": "neurons", "operator/": "quasar_operator"}


def dockerfile(image: str) -> Path:
    return IMAGES / image / "Dockerfile"


def instructions(image: str, name: str) -> list[str]:
    parser = DockerfileParser(str(dockerfile(image)))
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def copied(image: str) -> list[str]:
    """The build-context paths the image's COPY instructions read (not those from other stages)."""
    sources = []
    for value in instructions(image, "COPY"):
        words = value.split()
        if any(w.startswith("--from=") for w in words):
            continue
        sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def pip_installs(image: str) -> list[str]:
    return [re.sub(r"\s+", " ", v) for v in instructions(image, "RUN") if "pip install" in v]


def distributions(extras: set[str]) -> set[str]:
    """The distributions `pip install .[extras]` installs, read from the installed metadata."""
    found: set[str] = set()
    todo = [(PROJECT, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        for line in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in wanted | {""}):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency == canonicalize_name(PROJECT):
                todo.append((PROJECT, frozenset(requirement.extras)))
            elif dependency not in found:
                found.add(dependency)
                todo.append((dependency, frozenset(requirement.extras)))
    return found


IMAGES_LIST = sorted(EXTRAS)


def test_every_image_is_listed() -> None:
    assert sorted(p.parent.name for p in IMAGES.glob("*/Dockerfile")) == IMAGES_LIST


@pytest.mark.parametrize("image", IMAGES_LIST)
def test_hadolint_finds_nothing(image: str) -> None:
    proc = subprocess.run(
        [require(HADOLINT), "--no-color", str(dockerfile(image))], capture_output=True, text=True, check=False
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_checkov_finds_nothing_unexplained() -> None:
    assert_clean(checkov("dockerfile", IMAGES))


@pytest.mark.parametrize("image", IMAGES_LIST)
def test_copy_sources_exist(image: str) -> None:
    sources = copied(image)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile(image)}: COPY {source}: no such path in the repository"


@pytest.mark.parametrize("image", IMAGES_LIST)
def test_entry_point_is_the_projects_command(image: str) -> None:
    (entrypoint,) = instructions(image, "ENTRYPOINT")
    assert entrypoint == '["quasar"]'
    module, _, function = PYPROJECT["project"]["scripts"]["quasar"].partition(":")
    assert f"{module}.py" in copied(image)
    assert getattr(quasar_cli, function) is quasar_cli.main
    (cmd,) = instructions(image, "CMD")
    assert cmd.startswith("[")


@pytest.mark.parametrize("image", IMAGES_LIST)
def test_multi_stage_pinned_and_non_root(image: str) -> None:
    bases = [v.split()[0] for v in instructions(image, "FROM")]
    assert len(bases) >= 2, "build in one stage, run in another"
    for base in bases:
        # A full release tag (python:3.11.14-slim-bookworm, never a moving one such as python:3.11), for the
        # reader, and the digest, which is what is pulled.
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+-[a-z0-9.-]+@sha256:[0-9a-f]{64}", base), base
    assert instructions(image, "COPY")[-1].startswith("--from=build ")
    (user,) = instructions(image, "USER")
    uid, gid = (int(part) for part in user.split(":"))
    # The ids the chart and the operator's pods run as: the image's files and the pods' agree.
    assert uid == gid == NEURON_UID == 65532


def test_both_images_share_one_base() -> None:
    bases = {v.split()[0] for image in IMAGES_LIST for v in instructions(image, "FROM")}
    (base,) = bases
    major, minor = (int(n) for n in re.findall(r"\d+", base)[:2])
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert (major, minor) >= (3, 11)


@pytest.mark.parametrize("image", IMAGES_LIST)
def test_installs_only_its_extras(image: str) -> None:
    project_installs = [c for c in pip_installs(image) if '"[' in c or '".[' in c]
    (install,) = project_installs
    extras = re.search(r'"\.\[([a-z,]+)\]"', install)
    assert extras is not None, install
    assert set(extras.group(1).split(",")) == EXTRAS[image]


@pytest.mark.parametrize("image", IMAGES_LIST)
def test_installs_only_from_its_lock_with_hashes(image: str) -> None:
    lock_path = f"/tmp/{lock_images.LOCK_NAME}"
    assert f"images/{image}/{lock_images.LOCK_NAME} {lock_path}" in instructions(image, "COPY")
    from_lock, project = pip_installs(image)
    # Every distribution from the lock, each file checked against its sha256 ...
    assert from_lock.endswith(f"pip install --no-cache-dir --require-hashes -r {lock_path}"), from_lock
    # ... and then the project from the copied source alone: nothing fetched, nothing resolved.
    flags = set(project.split())
    assert {"--no-index", "--no-deps", "--no-build-isolation"} <= flags, project


@dataclass(frozen=True)
class Locked:
    name: str
    requirement: Requirement
    hashes: list[str]


def lock_header_and_body(image: str) -> tuple[str, str]:
    """The lock's opening comment and the rest."""
    text = (IMAGES / image / lock_images.LOCK_NAME).read_text(encoding="utf-8")
    body = re.sub(r"\A(#.*\n)+", "", text)
    return text[: len(text) - len(body)], body


def locked(image: str) -> dict[str, Locked]:
    """The lock's requirements, by canonical name, with their hashes."""
    found: dict[str, Locked] = {}
    # One entry: a requirement line, its `--hash=` continuation lines, then `# via` comments.
    for entry in re.split(r"\n(?=[^\s#])", lock_header_and_body(image)[1].rstrip("\n")):
        head, *rest = entry.split("\n")
        requirement = Requirement(head.rstrip(" \\"))
        hashes = [m for line in rest for m in re.findall(r"--hash=sha256:([0-9a-f]{64})", line)]
        found[canonicalize_name(requirement.name)] = Locked(requirement.name, requirement, hashes)
    return found


def direct_requirements(extras: set[str]) -> list[Requirement]:
    """What pyproject.toml's extras require, the project's own extras expanded."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    found: list[Requirement] = []
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for line in optional[extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == canonicalize_name(PROJECT):
                todo += [e for e in requirement.extras if e not in seen]
            else:
                found.append(requirement)
    return found


@pytest.mark.parametrize("image", IMAGES_LIST)
def test_the_lock_pins_every_requirement_with_hashes(image: str) -> None:
    lock = locked(image)
    assert lock_images.REGENERATE in lock_header_and_body(image)[0]
    for entry in lock.values():
        assert entry.hashes, f"{entry.name}: no --hash"
        pinned = entry.requirement.url is not None or str(entry.requirement.specifier).startswith("==")
        assert pinned, entry.requirement
        assert entry.requirement.marker is None, entry.requirement
    # Fresh: each of the extras' requirements (pyproject.toml) is satisfied by its locked version.
    for requirement in direct_requirements(EXTRAS[image]):
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in the lock: {lock_images.REGENERATE}"
        pin = lock[name].requirement
        version = lock_images.TORCH_VERSION if pin.url else str(pin.specifier).removeprefix("==")
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
    # And the build backend the project is installed with.
    for line in PYPROJECT["build-system"]["requires"]:
        assert canonicalize_name(Requirement(line).name) in lock


def test_operator_image_has_no_torch() -> None:
    assert "torch" not in distributions(EXTRAS["operator"])
    assert not {"torch", "bittensor"} & set(locked("operator"))


def test_neuron_image_has_the_pinned_cpu_torch_without_cuda() -> None:
    assert "torch" in distributions(EXTRAS["neuron"])
    lock = locked("neuron")
    torch = lock["torch"]
    assert torch.requirement.url == lock_images.TORCH_CPU_WHEEL
    assert torch.hashes == [lock_images.TORCH_CPU_SHA256]
    assert lock_images.torch_pin() == f"torch=={lock_images.TORCH_VERSION}"  # pyproject.toml's pin
    assert f"/cpu/torch-{lock_images.TORCH_VERSION}%2Bcpu-cp311-" in lock_images.TORCH_CPU_WHEEL
    cuda = [n for n in lock if n.startswith(("nvidia-", "cuda-", "triton"))]
    assert cuda == []


BLOCKER = """
import sys
from importlib.abc import MetaPathFinder


class Absent(MetaPathFinder):
    # Modules of distributions the image does not install: importing one fails as it would there.
    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)", name=name)
        return None


sys.meta_path.insert(0, Absent(set(sys.argv[1].split(","))))
import quasar_cli

sys.exit(quasar_cli.main(sys.argv[2:]))
"""


def absent_modules(image: str) -> set[str]:
    """Top-level modules this venv has that the image would not: other extras' and uncopied packages."""
    present = distributions(EXTRAS[image]) | {canonicalize_name(PROJECT)}
    absent = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in dists} & present
    }
    own = {package for source, package in PACKAGES.items() if source not in copied(image)}
    return (absent | own) - {package for source, package in PACKAGES.items() if source in copied(image)}


@pytest.mark.parametrize(
    ("image", "command"), [(image, c) for image in IMAGES_LIST for c in COMMANDS[image]], ids=str
)
def test_entry_point_runs_with_only_the_images_distributions(image: str, command: list[str]) -> None:
    absent = absent_modules(image)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(sorted(absent)), *command],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: quasar" in proc.stdout


def test_the_blocker_blocks() -> None:
    # torch is absent from the operator's image: a command that needs it must fail here too.
    assert "torch" in absent_modules("operator")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, "neurons", "miner", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert "No module named 'neurons" in proc.stderr
