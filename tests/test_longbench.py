"""Loading LongBench records: folders and data.zip, strict schema checks naming file and line."""

import json
import zipfile
from pathlib import Path

import pytest

from evaluation.demo_data import make_records, write_folder, write_zip
from evaluation.errors import InputError
from evaluation.longbench import LongBenchRecord, load_records, read_jsonl
from evaluation.tasks import LONGBENCH_TASKS

GOOD = make_records("trec", 1)[0]


def test_folder_loads_every_record_of_every_dataset(tmp_path: Path) -> None:
    records = load_records(["qasper"], write_folder(tmp_path, 3))
    assert set(records) == set(LONGBENCH_TASKS)  # the others come along as distractor documents
    assert all(len(items) == 3 for items in records.values())
    first = records["qasper"][0]
    assert isinstance(first, LongBenchRecord)
    assert isinstance(first.answers, tuple)
    assert first.dataset == "qasper"
    assert first.all_classes is None
    assert records["trec"][0].all_classes is not None


def test_zip_loads_the_same_records_as_the_folder(tmp_path: Path) -> None:
    folder = load_records(["trec"], write_folder(tmp_path / "folder", 2))
    archive = load_records(["trec"], write_zip(tmp_path / "data.zip", 2))
    assert folder == archive


def test_a_requested_dataset_that_is_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="qasper"):
        load_records(["qasper"], write_folder(tmp_path, 1, datasets=["trec"]))


def test_a_source_that_is_neither_folder_nor_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"data\.txt"):
        load_records(["trec"], path)


def _with(**changes: object) -> dict[str, object]:
    record = dict(GOOD)
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (_with(length="12"), "'length' must be an integer"),
        (_with(length=True), "'length' must be an integer"),
        (_with(answers="City"), "'answers' must be a list of strings"),
        (_with(answers=[1]), "'answers' must be a list of strings"),
        (_with(answers=[]), "'answers' is empty"),
        (_with(all_classes="City"), "'all_classes' must be a list of strings"),
        (_with(context=None), "'context' must be a string"),
        ({k: v for k, v in GOOD.items() if k != "_id"}, "missing field '_id'"),
    ],
)
def test_bad_records_are_named_by_file_and_line(
    tmp_path: Path, record: dict[str, object], problem: str
) -> None:
    path = tmp_path / "trec.jsonl"
    # Line 3 is bad; a blank line 2 still counts as a line.
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError) as caught:
        load_records(["trec"], tmp_path)
    assert caught.value.where == f"{path}:3"
    assert problem in caught.value.problem


def test_invalid_json_and_non_objects_are_named() -> None:
    with pytest.raises(InputError, match=r"x\.jsonl:2: not valid JSON"):
        read_jsonl([json.dumps(GOOD), "{oops"], "x.jsonl")
    with pytest.raises(InputError, match=r"x\.jsonl:1: expected a JSON object"):
        read_jsonl(["[1, 2]"], "x.jsonl")


def test_zip_errors_name_the_member(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/trec.jsonl", json.dumps(_with(length="1")) + "\n")
    with pytest.raises(InputError) as caught:
        load_records(["trec"], path)
    assert caught.value.where == f"{path}:data/trec.jsonl:1"


def test_fixture_qa_answers_occur_in_their_context() -> None:
    for dataset in ("narrativeqa", "multifieldqa_en", "triviaqa"):
        for raw in make_records(dataset, 5):
            text = f"{raw['context']} {raw['input']}"
            assert isinstance(raw["answers"], list)
            assert any(answer in text for answer in raw["answers"])
