"""LongBench v1 records: strict loading from a folder of `<dataset>.jsonl`, LongBench's data.zip, or the Hub.

Every line is checked against LongBench's record schema and a bad one stops the load with an InputError
naming the file and line: nothing is coerced or silently dropped. (The `datasets` JSON loader is not used
for that reason: it coerces ill-typed fields, `"length": "12"` to 12 and `[1]` to `["1"]`, and reports
no line numbers.)
"""

import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from evaluation.errors import InputError
from evaluation.tasks import LONGBENCH_TASKS

LONGBENCH_REPO = "THUDM/LongBench"
# The Hub revision data.zip is fetched at. A branch name, as no commit could be looked up offline: pin it
# to a commit hash where the Hub is reachable.
LONGBENCH_REVISION = "main"

_STRING_FIELDS = ("input", "context", "dataset", "language", "_id")


@dataclass(frozen=True)
class LongBenchRecord:
    input: str
    context: str
    answers: tuple[str, ...]
    length: int
    dataset: str
    language: str
    all_classes: tuple[str, ...] | None
    id: str


def parse_record(raw: object, where: str) -> LongBenchRecord:
    """One record from its decoded JSON, or an InputError at `where` naming the bad field."""
    if not isinstance(raw, dict):
        raise InputError(where, f"expected a JSON object, got {type(raw).__name__}")
    for name in (*_STRING_FIELDS, "answers", "length", "all_classes"):
        if name not in raw:
            raise InputError(where, f"missing field {name!r}")
    for name in _STRING_FIELDS:
        if not isinstance(raw[name], str):
            raise InputError(where, f"field {name!r} must be a string, got {type(raw[name]).__name__}")
    length = raw["length"]
    if not isinstance(length, int) or isinstance(length, bool):
        raise InputError(where, f"field 'length' must be an integer, got {type(length).__name__}")
    answers = _strings(raw["answers"], "answers", where)
    if not answers:
        raise InputError(where, "field 'answers' is empty")
    all_classes = None if raw["all_classes"] is None else _strings(raw["all_classes"], "all_classes", where)
    return LongBenchRecord(
        input=raw["input"],
        context=raw["context"],
        answers=answers,
        length=length,
        dataset=raw["dataset"],
        language=raw["language"],
        all_classes=all_classes,
        id=raw["_id"],
    )


def _strings(value: object, name: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InputError(where, f"field {name!r} must be a list of strings")
    return tuple(value)


def read_jsonl(lines: Iterable[str], source: str) -> tuple[LongBenchRecord, ...]:
    """Records of a JSONL text; blank lines are skipped, anything else must be a valid record."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(where, f"not valid JSON ({error.msg})") from None
        records.append(parse_record(raw, where))
    return tuple(records)


def load_records(datasets: Sequence[str], data: Path | None = None) -> dict[str, tuple[LongBenchRecord, ...]]:
    """Records of `datasets` (each required), plus every other LongBench task found in the same source.

    The extra datasets serve as distractor documents (see evaluation.contexts). `data` is a folder of
    `<dataset>.jsonl` files or LongBench's data.zip; None downloads data.zip from the Hub.
    """
    source = data if data is not None else _download()
    wanted = list(dict.fromkeys([*datasets, *LONGBENCH_TASKS]))
    records: dict[str, tuple[LongBenchRecord, ...]] = {}
    if source.is_dir():
        for name in wanted:
            path = source / f"{name}.jsonl"
            if path.is_file():
                with path.open(encoding="utf-8") as handle:
                    records[name] = read_jsonl(handle, str(path))
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = set(archive.namelist())
            for name in wanted:
                member = f"data/{name}.jsonl"
                if member in members:
                    with archive.open(member) as handle:
                        records[name] = read_jsonl(_text_lines(handle), f"{source}:{member}")
    else:
        raise InputError(str(source), "not a folder of <dataset>.jsonl files nor a LongBench data.zip")
    for name in datasets:
        if name not in records:
            raise InputError(str(source), f"no data for {name!r} (expected {name}.jsonl)")
        if not records[name]:
            raise InputError(str(source), f"no records for {name!r}")
    return records


def _text_lines(handle: IO[bytes]) -> Iterable[str]:
    for line in handle:
        yield line.decode("utf-8")


# How long the one reachability check of the Hub may take before it counts as unreachable.
_HUB_CHECK_TIMEOUT_S = 10.0
_PASS_DATA = "pass --data with a folder of <dataset>.jsonl files or LongBench's data.zip"


def _download() -> Path:
    """data.zip from the Hugging Face cache, else from the Hub. Where the Hub cannot be reached the error
    comes at once: the Hub client would retry for about 24 s before giving up."""
    where = f"{LONGBENCH_REPO}@{LONGBENCH_REVISION}"
    try:
        from huggingface_hub import hf_hub_download, is_offline_mode
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:
        raise InputError(where, f"needs huggingface_hub ({error}); install quasar-subnet[eval]") from None

    def fetch(local_files_only: bool) -> Path:
        return Path(
            hf_hub_download(
                LONGBENCH_REPO,
                "data.zip",
                repo_type="dataset",
                revision=LONGBENCH_REVISION,
                local_files_only=local_files_only,
            )
        )

    try:
        return fetch(local_files_only=True)
    except LocalEntryNotFoundError:
        pass  # not downloaded before
    if is_offline_mode():
        raise InputError(
            where, f"data.zip is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {_PASS_DATA}"
        )
    _require_hub_reachable(where)
    try:
        return fetch(local_files_only=False)
    except Exception as error:  # the Hub client raises many unrelated types for "unreachable"
        raise InputError(where, f"cannot download data.zip ({error}); {_PASS_DATA}") from None


def _require_hub_reachable(where: str) -> None:
    """One request to the Hub's endpoint (HF_ENDPOINT), without retries: any HTTP answer will do."""
    import httpx2
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=_HUB_CHECK_TIMEOUT_S)
    except httpx2.TransportError as error:
        raise InputError(
            where, f"the Hugging Face Hub at {constants.ENDPOINT} is unreachable ({error}); {_PASS_DATA}"
        ) from None
