"""Validator state: round trip, durable atomic writes, and clear errors for corrupt or foreign files."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from neurons import state as state_module
from neurons.state import SCHEMA_VERSION, StateError, ValidatorState


def _state() -> ValidatorState:
    return ValidatorState(
        netuid=7,
        hotkey="5Validator",
        round=12,
        last_weights_block=340,
        hotkeys={1: "5A", 2: "5B"},
        bucket_scores={"32k": {1: 0.5, 2: 0.25}, "124k": {1: 0.125}},
        combined={1: 0.3125, 2: 0.125},
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state_module.save(path, _state())
    assert state_module.load(path, 7, "5Validator") == _state()
    assert json.loads(path.read_text())["schema"] == SCHEMA_VERSION


def test_missing_file_is_a_fresh_state(tmp_path: Path) -> None:
    assert state_module.load(tmp_path / "none.json", 7, "5V") == ValidatorState(7, "5V")


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    state_module.save(path, _state())

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    changed = _state()
    changed.round = 13
    with pytest.raises(OSError, match="disk full"):
        state_module.save(path, changed)
    monkeypatch.undo()
    assert state_module.load(path, 7, "5Validator").round == 12
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_a_save_reaches_the_disk_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new content is fsynced before it replaces the old file, and the folder after, so that a power
    loss leaves either file whole, and a finished save stays finished."""
    path = tmp_path / "state.json"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    state_module.save(path, _state())
    assert events == ["fsync file", "rename", "fsync folder"]


_CRASHING_SAVE = """
import os, sys
from pathlib import Path
from neurons import state

path = Path(sys.argv[1])
saved = state.load(path, 7, "5Validator")
saved.round += 1
os.replace = lambda src, dst: os._exit(9)  # the process dies between writing the temp file and the rename
state.save(path, saved)
"""


def test_a_crash_mid_save_keeps_the_old_state_and_the_next_start_removes_the_temp_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    state_module.save(path, _state())
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_SAVE, str(path)], cwd=Path(__file__).parent.parent, check=False
    )
    assert crashed.returncode == 9
    (temp,) = (p for p in tmp_path.iterdir() if p != path)
    assert json.loads(temp.read_text())["round"] == 13  # the unfinished save, written whole but not renamed

    assert state_module.load(path, 7, "5Validator") == _state()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_only_this_files_temp_files_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "state[1].json"  # glob characters in the name are matched literally
    others = [tmp_path / ".other.json.abc.tmp", tmp_path / ".state1.json.abc.tmp", tmp_path / "notes.tmp"]
    for other in others:
        other.write_text("{}")
    (tmp_path / ".state[1].json.abc.tmp").write_text("{")
    assert state_module.load(path, 7, "5V") == ValidatorState(7, "5V")
    assert sorted(tmp_path.iterdir()) == sorted(others)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "unreadable or corrupt"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**_state().to_json(), "schema": 99}), "schema version 99"),
        (json.dumps({**_state().to_json(), "netuid": 8}), "belongs to netuid 8, not 7"),
        (json.dumps({**_state().to_json(), "hotkey": "5Other"}), "belongs to validator hotkey '5Other'"),
        (json.dumps({**_state().to_json(), "combined": {"1": "high"}}), "combined.1 must be a finite number"),
        (json.dumps({**_state().to_json(), "round": -1}), "round must be a non-negative integer"),
        (json.dumps({k: v for k, v in _state().to_json().items() if k != "hotkeys"}), "corrupt"),
    ],
)
def test_corrupt_or_foreign_files_are_reported_never_reset(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateError, match=problem) as caught:
        state_module.load(path, 7, "5Validator")
    assert str(path) in str(caught.value)
    assert path.read_text() == content  # left as it was, for the operator to inspect
