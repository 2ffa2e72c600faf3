"""Suite-wide settings: nothing here may reach the network, and caches stay inside the test run."""

import os
import runpy
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before any Hugging Face import so the libraries never try the Hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

# The egress guard, here and in every Python process the tests start (see its docstring).
_GUARD = Path(__file__).parent / "egress_guard"
_EGRESS_LOG = Path(tempfile.mkdtemp(prefix="quasar-egress-")) / "refused.log"
_EGRESS_LOG.touch()
os.environ["QUASAR_EGRESS_LOG"] = str(_EGRESS_LOG)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_GUARD), os.environ.get("PYTHONPATH")]))
runpy.run_path(str(_GUARD / "sitecustomize.py"))


@pytest.fixture(autouse=True)
def _no_egress() -> Iterator[None]:
    before = _EGRESS_LOG.stat().st_size
    yield
    with _EGRESS_LOG.open(encoding="utf-8") as log:
        log.seek(before)
        refused = log.read()
    if refused:
        pytest.fail(f"this test tried to reach beyond loopback:\n{refused}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Also what no single test saw: session fixtures' set-up, processes writing after the last test.
    refused = _EGRESS_LOG.read_text(encoding="utf-8")
    if refused:
        print(f"\nthe test session tried to reach beyond loopback:\n{refused}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
