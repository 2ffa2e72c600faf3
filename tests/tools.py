"""The command-line tools the chart and image tests run, where `make install` puts them, and checkov's report.

A missing tool fails the test in CI (`CI` set: the install step must have put it there) and skips it, with
the reason, on a developer's machine whose venv predates these tools.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# The venv running the tests is the one `make install` built.
HELM = Path(sys.executable).parent / "helm"
HADOLINT = Path(sys.executable).parent / "hadolint"
# checkov has a venv of its own inside it (its pins clash with the project's).
CHECKOV = Path(sys.prefix) / "checkov" / "bin" / "checkov"


# JSON out; nothing fetched from Prisma Cloud (this machine reaches no such host).
OFFLINE_JSON = ("--output", "json", "--skip-download")


def require(tool: Path) -> str:
    if tool.is_file() and os.access(tool, os.X_OK):
        return str(tool)
    message = f"{tool} is missing: run `make install` (it installs helm, hadolint and checkov)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Finding:
    check: str
    resource: str
    file: str
    reason: str  # why it was skipped; empty for a failed check

    def __str__(self) -> str:
        return f"{self.check} on {self.resource} ({self.file}){': ' + self.reason if self.reason else ''}"


@dataclass(frozen=True)
class CheckovReport:
    passed: int
    failed: list[Finding]
    skipped: list[Finding]


def _findings(results: dict[str, Any], key: str) -> list[Finding]:
    return [
        Finding(
            c["check_id"],
            c["resource"],
            c["file_path"],
            (c["check_result"].get("suppress_comment") or "") if key == "skipped_checks" else "",
        )
        for c in results.get(key, [])
    ]


def checkov(framework: str, directory: Path) -> CheckovReport:
    """checkov's checks of one framework over `directory`. Offline (`--skip-download`): checkov then has
    no severities (they come from Prisma Cloud), so every failed check counts. Its banner asks pypi.org for
    a newer checkov unless told not to."""
    proc = subprocess.run(
        [require(CHECKOV), "--directory", str(directory), "--framework", framework, *OFFLINE_JSON],
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
        capture_output=True,
        text=True,
        check=False,
    )
    # Exit 1 means failed checks (reported below); anything else that is not 0 is checkov failing to run.
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    results = [r["results"] for r in reports if "results" in r]
    assert results, f"checkov found nothing to check in {directory}: {proc.stdout[-500:]}"
    for result in results:
        assert result["parsing_errors"] == [], result["parsing_errors"]
    return CheckovReport(
        passed=sum(len(r["passed_checks"]) for r in results),
        failed=[f for r in results for f in _findings(r, "failed_checks")],
        skipped=[f for r in results for f in _findings(r, "skipped_checks")],
    )


def assert_clean(report: CheckovReport) -> None:
    """No failed check, and every skipped one with its written reason."""
    assert report.passed > 0
    assert report.failed == [], "checkov failed:\n" + "\n".join(map(str, report.failed))
    unexplained = [f for f in report.skipped if len(f.reason) < 20 or f.reason == "No comment provided"]
    assert unexplained == [], "skipped without a reason:\n" + "\n".join(map(str, unexplained))
