"""The validator's persisted state: moving-average scores, hotkeys per uid, rounds and the last weights block.

One JSON file, written durably after every round, so a crash, restart or power loss loses at most the
round in flight: a temp file beside it is written and fsynced, renamed over it, and the folder fsynced so
the rename itself survives. Temp files a crash left behind are removed when the state is next loaded.
The file names its schema version, netuid and validator hotkey: loading a file that is corrupt or belongs
to another subnet, validator or schema raises StateError naming the file and the problem. It is never
silently reset: scores are what the validator's weights stand on.
"""

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.files import remove_stale_temp_files, write_json_atomic
from neurons.rounds import Scores

log = logging.getLogger("quasar.validator")

SCHEMA_VERSION = 1


class StateError(Exception):
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"validator state {path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass
class ValidatorState:
    netuid: int
    hotkey: str
    round: int = 0
    last_weights_block: int | None = None
    hotkeys: dict[int, str] = field(default_factory=dict)
    bucket_scores: dict[str, dict[int, float]] = field(default_factory=dict)
    combined: dict[int, float] = field(default_factory=dict)

    @property
    def scores(self) -> Scores:
        return Scores(self.bucket_scores, self.combined)

    def set_scores(self, scores: Scores) -> None:
        self.bucket_scores = {b: dict(s) for b, s in scores.buckets.items()}
        self.combined = dict(scores.combined)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "netuid": self.netuid,
            "hotkey": self.hotkey,
            "round": self.round,
            "last_weights_block": self.last_weights_block,
            "hotkeys": {str(uid): hk for uid, hk in sorted(self.hotkeys.items())},
            "bucket_scores": {b: _by_uid(s) for b, s in sorted(self.bucket_scores.items())},
            "combined": _by_uid(self.combined),
        }


def _by_uid(scores: dict[int, float]) -> dict[str, float]:
    return {str(uid): score for uid, score in sorted(scores.items())}


def save(path: Path, state: ValidatorState) -> None:
    """Replace the file at `path` with `state`, durably: the old file or the new one, never a mix."""
    write_json_atomic(path, state.to_json())


def load(path: Path, netuid: int, hotkey: str) -> ValidatorState:
    """The state saved at `path` for this netuid and hotkey; a fresh state where no file exists yet.

    Loading starts a validator's use of the file: temp files of saves a crash interrupted are removed
    (one validator owns a state file; its saves all run after this)."""
    remove_stale_temp_files(path)
    if not path.exists():
        return ValidatorState(netuid, hotkey)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateError(
            path, f"unreadable or corrupt ({error}); move it away or pass --neuron.reset_state"
        ) from None
    if not isinstance(raw, dict):
        raise StateError(path, "corrupt: not a JSON object")
    if raw.get("schema") != SCHEMA_VERSION:
        raise StateError(path, f"schema version {raw.get('schema')!r}, this validator reads {SCHEMA_VERSION}")
    if raw.get("netuid") != netuid:
        raise StateError(path, f"belongs to netuid {raw.get('netuid')!r}, not {netuid}")
    if raw.get("hotkey") != hotkey:
        raise StateError(path, f"belongs to validator hotkey {raw.get('hotkey')!r}, not {hotkey!r}")
    try:
        return _parse(raw, netuid, hotkey)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StateError(
            path, f"corrupt: {error!r}" if isinstance(error, KeyError) else f"corrupt: {error}"
        ) from None


def _parse(raw: dict[str, Any], netuid: int, hotkey: str) -> ValidatorState:
    last = raw["last_weights_block"]
    return ValidatorState(
        netuid=netuid,
        hotkey=hotkey,
        round=_int(raw["round"], "round"),
        last_weights_block=None if last is None else _int(last, "last_weights_block"),
        hotkeys={_int(uid, "uid"): _str(hk) for uid, hk in dict(raw["hotkeys"]).items()},
        bucket_scores={
            _str(b): _scores(s, f"bucket_scores.{b}") for b, s in dict(raw["bucket_scores"]).items()
        },
        combined=_scores(raw["combined"], "combined"),
    )


def _int(value: object, name: str) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _scores(value: object, name: str) -> dict[int, float]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object of uid -> score")
    scores: dict[int, float] = {}
    for uid, score in value.items():
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ValueError(f"{name}.{uid} must be a finite number, got {score!r}")
        scores[_int(uid, "uid")] = float(score)
    return scores
