"""`quasar eval score`: result.json byte-identical to LongBench's eval.py (as written plainly in the oracle),
per-sample scores, and bad input reported by file and line with nothing written."""

import json
import math
import os
import random
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluation import scoring
from evaluation.cli import main as cli_main
from evaluation.errors import InputError
from evaluation.scoring import numpy_mean, numpy_round2, run_score, score_samples
from evaluation.tasks import LONGBENCH_METRIC
from tests import longbench_oracle as oracle

WORDS = ["the", "cat", "sat", "on", "a", "mat", "Paris", "red", "Apple", "of", "and", "report", "12", "3"]
CLASSES = ["City", "Country", "Other location", "location", "Number of something"]
ZH_WORDS = ["我们", "会议", "讨论", "了", "项目", "北京", "清华大学", "的", "，", "。", "《", "》", "AI"]
ZH_CLASSES = ["农业、农村", "农业", "军事", "体育", "文化", "经济"]
ZH_DATASETS = [dataset for dataset, metric in LONGBENCH_METRIC.items() if metric in {"qa_f1_zh", "rouge_zh"}]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) + rng.choice(["", "", ".", ",", "\n"]) for _ in range(words))


def _zh_text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(ZH_WORDS) + rng.choice(["", "", "", " ", "\n", "."]) for _ in range(words))


def _line(rng: random.Random, dataset: str) -> dict[str, Any]:
    answers = [_text(rng, rng.randint(1, 4)) for _ in range(rng.randint(1, 2))]
    record: dict[str, Any] = {"pred": _text(rng, rng.randint(0, 12)), "answers": answers, "all_classes": None}
    metric = LONGBENCH_METRIC.get(dataset)
    if metric == "rouge":
        record |= {"pred": _text(rng, rng.randint(20, 80)), "answers": [_text(rng, rng.randint(20, 60))]}
    elif metric == "rouge_zh":
        record |= {"pred": _zh_text(rng, rng.randint(0, 80)), "answers": [_zh_text(rng, rng.randint(5, 60))]}
    elif metric == "qa_f1_zh":
        record |= {"pred": _zh_text(rng, rng.randint(0, 8)), "answers": [_zh_text(rng, rng.randint(1, 4))]}
    elif metric == "classification":
        classes = CLASSES if dataset == "trec" else ZH_CLASSES
        record |= {"answers": [rng.choice(classes)], "all_classes": classes}
        record["pred"] = f"{rng.choice(classes)}\n{record['pred']}"
    elif metric == "retrieval":
        record |= {"answers": [f"Paragraph {rng.randint(1, 5)}"], "pred": f"Paragraph {rng.randint(1, 5)}"}
    elif metric == "retrieval_zh":
        record |= {"answers": [f"段落{rng.randint(1, 5)}"], "pred": f"答案是段落{rng.randint(1, 5)}"}
    elif metric == "count":
        record |= {"answers": [str(rng.randint(1, 5))], "pred": f"{rng.randint(1, 5)} {rng.randint(1, 5)}"}
    return record | {"length": rng.choice([1000, 3999, 4000, 7999, 8000, 20000])}


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _folder(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder = root / "pred"
    folder.mkdir()
    for dataset, size in sizes.items():
        _write(folder / f"{dataset}.jsonl", [_line(rng, dataset) for _ in range(size)])
    return folder


SIZES = {"narrativeqa": 300, "gov_report": 40, "trec": 60, "triviaqa": 50, "passage_retrieval_en": 30}


@pytest.mark.parametrize("longbench_e", [False, True])
def test_result_json_is_byte_identical_to_eval_py(tmp_path: Path, longbench_e: bool) -> None:
    folder = _folder(tmp_path, SIZES)
    expected = oracle.eval_py(folder, longbench_e)
    assert run_score(folder, longbench_e=longbench_e, per_sample=None, output=None) == 0
    assert (folder / "result.json").read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("longbench_e", [False, True])
def test_a_complete_longbench_folder_is_byte_identical_to_eval_py(tmp_path: Path, longbench_e: bool) -> None:
    folder = _folder(tmp_path, dict.fromkeys(LONGBENCH_METRIC, 12), seed=3)
    per_sample = tmp_path / "scores.jsonl"
    assert run_score(folder, longbench_e=longbench_e, per_sample=per_sample, output=None) == 0
    assert (folder / "result.json").read_text(encoding="utf-8") == oracle.eval_py(folder, longbench_e)
    rows = [json.loads(line) for line in per_sample.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 12 * len(LONGBENCH_METRIC)
    for row in rows:
        if row["dataset"] in ZH_DATASETS:  # per sample too, on Chinese predictions
            record = json.loads(Path(row["file"]).read_text(encoding="utf-8").splitlines()[row["line"] - 1])
            expected = oracle.score(row["dataset"], record["pred"], record["answers"], record["all_classes"])
            assert row["score"] == expected


def test_without_jieba_the_chinese_datasets_are_skipped_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "jieba", None)  # as if the `zh` extra were not installed
    folder = _folder(tmp_path, dict.fromkeys(LONGBENCH_METRIC, 3), seed=4)
    without_zh = tmp_path / "without_zh"
    shutil.copytree(folder, without_zh)
    for dataset in ZH_DATASETS:
        (without_zh / f"{dataset}.jsonl").unlink()
    assert cli_main(["score", str(folder)]) == 0
    assert (folder / "result.json").read_text(encoding="utf-8") == oracle.eval_py(without_zh, False)
    captured = capsys.readouterr()
    for dataset in ZH_DATASETS:
        assert f"skipped {dataset} (3 lines)" in captured.err
        assert dataset not in captured.out
    assert "pip install 'quasar-subnet[zh]'" in captured.err
    only_zh = tmp_path / "only_zh"
    only_zh.mkdir()
    shutil.copy(folder / "vcsum.jsonl", only_zh)
    with pytest.raises(InputError, match=r"nothing can be scored.*jieba"):
        run_score(only_zh, longbench_e=False, per_sample=None, output=None)
    assert list(only_zh.iterdir()) == [only_zh / "vcsum.jsonl"]


def test_empty_length_group_is_nan_as_in_eval_py(tmp_path: Path) -> None:
    folder = tmp_path / "pred"
    folder.mkdir()
    _write(folder / "qasper.jsonl", [{"pred": "x y", "answers": ["x"], "all_classes": None, "length": 5000}])
    run_score(folder, longbench_e=True, per_sample=None, output=None)
    text = (folder / "result.json").read_text(encoding="utf-8")
    assert text == oracle.eval_py(folder, True)
    assert '"0-4k": NaN' in text
    assert '"4-8k": 66.67' in text


def test_file_uses_last_lines_all_classes_as_eval_py(tmp_path: Path) -> None:
    folder = tmp_path / "pred"
    folder.mkdir()
    lines = [
        {"pred": "City and Country", "answers": ["City"], "all_classes": ["City"]},
        {"pred": "City", "answers": ["City"], "all_classes": ["City", "Country"]},
    ]
    _write(folder / "trec.jsonl", lines)
    per_sample = tmp_path / "scores.jsonl"
    run_score(folder, longbench_e=False, per_sample=per_sample, output=None)
    assert (folder / "result.json").read_text(encoding="utf-8") == oracle.eval_py(folder, False)
    assert [json.loads(line)["score"] for line in per_sample.read_text().splitlines()] == [0.5, 1.0]


def test_last_lines_all_classes_applies_within_its_dataset_only(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    trec = [
        {"pred": "City and Country", "answers": ["City"], "all_classes": ["City"], "dataset": "trec"},
        {"pred": "City", "answers": ["City"], "all_classes": ["City", "Country"], "dataset": "trec"},
    ]
    qasper = {"pred": "red", "answers": ["red apple"], "all_classes": None, "dataset": "qasper"}
    _write(path, [*trec, qasper])
    per_sample = tmp_path / "scores.jsonl"
    run_score(path, longbench_e=False, per_sample=per_sample, output=None)
    # trec's lines use trec's last classes (eval.py's quirk, within trec); qasper's null does not reach them.
    assert [json.loads(line)["score"] for line in per_sample.read_text().splitlines()] == [0.5, 1.0, 2 / 3]
    # Each dataset's lines alone, in a file of their own, score as eval.py scores that file.
    alone = tmp_path / "alone"
    alone.mkdir()
    _write(alone / "trec.jsonl", trec)
    _write(alone / "qasper.jsonl", [qasper])
    expected = json.loads(oracle.eval_py(alone, False))
    assert json.loads((tmp_path / "result.json").read_text()) == {"trec": expected["trec"], "qasper": 66.67}


def test_per_sample_lines_follow_sorted_files_and_input_order(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"triviaqa": 3, "narrativeqa": 4})
    per_sample = tmp_path / "scores.jsonl"
    run_score(folder, longbench_e=False, per_sample=per_sample, output=None)
    rows = [json.loads(line) for line in per_sample.read_text(encoding="utf-8").splitlines()]
    assert [(Path(row["file"]).name, row["line"], row["dataset"]) for row in rows] == [
        *[("narrativeqa.jsonl", line, "narrativeqa") for line in range(1, 5)],
        *[("triviaqa.jsonl", line, "triviaqa") for line in range(1, 4)],
    ]
    for row in rows:
        record = json.loads(Path(row["file"]).read_text(encoding="utf-8").splitlines()[row["line"] - 1])
        expected = oracle.score(row["dataset"], record["pred"], record["answers"], record["all_classes"])
        assert row["score"] == expected
        assert 0.0 <= row["score"] <= 1.0


def test_single_file_writes_beside_it_or_to_output(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"qasper": 5})
    run_score(folder / "qasper.jsonl", longbench_e=False, per_sample=None, output=None)
    assert json.loads((folder / "result.json").read_text()).keys() == {"qasper"}
    target = tmp_path / "elsewhere" / "r.json"
    target.parent.mkdir()
    run_score(folder / "qasper.jsonl", longbench_e=False, per_sample=None, output=target)
    assert target.read_text() == (folder / "result.json").read_text()


@pytest.mark.parametrize("longbench_e", [False, True])
def test_scoring_one_file_keeps_the_other_files_results(tmp_path: Path, longbench_e: bool) -> None:
    folder = _folder(tmp_path, {"qasper": 5, "trec": 4, "gov_report": 3}, seed=5)
    run_score(folder, longbench_e=longbench_e, per_sample=None, output=None)
    whole = (folder / "result.json").read_text(encoding="utf-8")
    # A new version of one file: its entry changes in place, the others stay, in their order.
    _write(folder / "trec.jsonl", [_line(random.Random(9), "trec") for _ in range(6)])
    run_score(folder / "trec.jsonl", longbench_e=longbench_e, per_sample=None, output=None)
    assert (folder / "result.json").read_text(encoding="utf-8") == oracle.eval_py(folder, longbench_e)
    assert list(json.loads((folder / "result.json").read_text())) == list(json.loads(whole))
    # A file of a dataset not in result.json yet is added at the end.
    _write(folder / "triviaqa.jsonl", [_line(random.Random(10), "triviaqa") for _ in range(2)])
    run_score(folder / "triviaqa.jsonl", longbench_e=longbench_e, per_sample=None, output=None)
    merged = json.loads((folder / "result.json").read_text())
    assert list(merged) == [*json.loads(whole), "triviaqa"]
    assert merged == json.loads(oracle.eval_py(folder, longbench_e))


@pytest.mark.parametrize(
    ("existing", "problem"),
    [
        ("{oops", "not valid JSON"),
        ("[1]", "not a JSON object"),
        (json.dumps({"trec": {"0-4k": 1.0, "4-8k": 2.0, "8k+": 3.0}}), "LongBench-E"),
    ],
)
def test_a_result_json_that_cannot_be_merged_is_named_and_kept(
    tmp_path: Path, existing: str, problem: str
) -> None:
    folder = _folder(tmp_path, {"qasper": 2})
    (folder / "result.json").write_text(existing, encoding="utf-8")
    per_sample = tmp_path / "scores.jsonl"
    with pytest.raises(InputError, match=problem) as caught:
        run_score(folder / "qasper.jsonl", longbench_e=False, per_sample=per_sample, output=None)
    assert caught.value.where == str(folder / "result.json")
    assert (folder / "result.json").read_text(encoding="utf-8") == existing
    assert not per_sample.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_respect_the_umask(tmp_path: Path, umask: int) -> None:
    folder = _folder(tmp_path, {"qasper": 2})
    previous = os.umask(umask)
    try:
        run_score(folder, longbench_e=False, per_sample=tmp_path / "scores.jsonl", output=None)
    finally:
        os.umask(previous)
    for path in (folder / "result.json", tmp_path / "scores.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("flag", ["--output", "--per-sample"])
def test_outputs_are_not_written_into_missing_folders_nor_over_folders(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path, {"qasper": 2})
    missing = tmp_path / "missing" / "out.json"
    assert cli_main(["score", str(folder), flag, str(missing)]) == 2
    assert f"{missing}: no such folder: {missing.parent}" in capsys.readouterr().err
    assert cli_main(["score", str(folder), flag, str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["pred", "qasper.jsonl"]


def test_line_dataset_overrides_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "pred"
    folder.mkdir()
    _write(
        folder / "mixed.jsonl",
        [
            {"pred": "Paris", "answers": ["Paris"], "all_classes": None, "dataset": "triviaqa"},
            {"pred": "red", "answers": ["red apple"], "all_classes": None, "dataset": "qasper"},
            {"pred": "x", "answers": ["y"], "all_classes": None, "dataset": "triviaqa"},
        ],
    )
    run_score(folder, longbench_e=False, per_sample=None, output=None)
    assert (folder / "result.json").read_text() == json.dumps({"triviaqa": 50.0, "qasper": 66.67}, indent=4)


def test_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path, {"qasper": 2, "trec": 3})
    assert cli_main(["score", str(folder), "--e"]) == 0
    out = capsys.readouterr().out
    assert "0-4k" in out
    assert "qasper" in out
    assert "trec" in out


GOOD = {"pred": "a", "answers": ["a"], "all_classes": None, "length": 10}
BAD_LINES: list[tuple[str, str, str]] = [
    ("qasper", "{not json", "not valid JSON"),
    ("qasper", "", "not valid JSON"),
    ("qasper", "[1, 2]", "JSON object"),
    ("qasper", json.dumps({"answers": ["a"], "all_classes": None}), "missing pred"),
    ("qasper", json.dumps({"pred": None, "answers": ["a"]}), "pred must be a string"),
    ("qasper", json.dumps({"pred": "a", "all_classes": None}), "missing answers"),
    ("qasper", json.dumps({"pred": "a", "answers": "a"}), "answers must be a list of strings"),
    ("qasper", json.dumps({"pred": "a", "answers": [1]}), "answers must be a list of strings"),
    ("qasper", json.dumps({"pred": "a", "answers": ["a"], "all_classes": "City"}), "all_classes"),
    ("qasper", json.dumps({"pred": "a", "answers": ["a"], "dataset": 3}), "dataset must be a string"),
    ("qasper", json.dumps({"pred": "a", "answers": ["a"], "dataset": "nope"}), "unknown dataset"),
    ("qasper", json.dumps({"pred": "a", "answers": ["a"], "length": "long"}), "length must be a number"),
    ("nope", json.dumps({"pred": "a", "answers": ["a"]}), "unknown dataset"),
    ("passage_retrieval_en", json.dumps({"pred": "1", "answers": ["first"]}), "Paragraph"),
]


@pytest.mark.parametrize(("dataset", "bad_line", "problem"), BAD_LINES)
def test_bad_line_names_file_and_line_and_writes_nothing(
    tmp_path: Path, dataset: str, bad_line: str, problem: str
) -> None:
    folder = tmp_path / "pred"
    folder.mkdir()
    _write(folder / "narrativeqa.jsonl", [GOOD])
    path = folder / f"{dataset}.jsonl"
    path.write_text(json.dumps(GOOD | {"dataset": "qasper"}) + "\n" + bad_line + "\n", encoding="utf-8")
    per_sample = tmp_path / "scores.jsonl"
    with pytest.raises(InputError, match=problem) as caught:
        run_score(folder, longbench_e=False, per_sample=per_sample, output=None)
    assert caught.value.where == f"{path}:2"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["pred", "narrativeqa.jsonl", path.name])


def test_longbench_e_needs_lengths(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"qasper": 2})
    _write(folder / "qasper.jsonl", [GOOD, {"pred": "a", "answers": ["a"], "all_classes": None}])
    with pytest.raises(InputError, match="length") as caught:
        run_score(folder, longbench_e=True, per_sample=None, output=None)
    assert caught.value.where.endswith("qasper.jsonl:2")
    run_score(folder, longbench_e=False, per_sample=None, output=None)  # eval.py without --e ignores length


def test_bad_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "qasper.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"pred": "\xff"}\n')
    with pytest.raises(InputError, match="UTF-8") as caught:
        run_score(path, longbench_e=False, per_sample=None, output=None)
    assert caught.value.where == f"{path}:2"


def test_missing_empty_folder_and_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["score", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no <dataset>"):
        run_score(tmp_path, longbench_e=False, per_sample=None, output=None)
    (tmp_path / "qasper.jsonl").write_text("")
    with pytest.raises(InputError, match="empty file"):
        run_score(tmp_path, longbench_e=False, per_sample=None, output=None)


def test_parallel_scoring_matches_sequential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, {"gov_report": 30, "trec": 30, "qasper": 30})
    samples = [sample for file in sorted(folder.iterdir()) for sample in scoring.read_predictions(file)]
    sequential = score_samples(samples)
    monkeypatch.setattr(scoring, "_PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(scoring, "_CHUNK_SAMPLES", 7)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert score_samples(samples) == sequential
    _write(
        folder / "passage_retrieval_en.jsonl", [{"pred": "1", "answers": ["no number"], "all_classes": None}]
    )
    broken = [*samples, *scoring.read_predictions(folder / "passage_retrieval_en.jsonl")]
    with pytest.raises(InputError, match="Paragraph") as caught:
        score_samples(broken)
    assert caught.value.where.endswith("passage_retrieval_en.jsonl:1")


def test_numpy_mean_and_round_are_numpy_to_the_last_bit() -> None:
    rng = random.Random(2)
    for size in [1, 5, 8, 9, 127, 128, 129, 300, 1000, 4099]:
        values = [rng.choice([0.0, 1.0, 0.5, 1 / 3, 2 / 7, 0.999999995, rng.random()]) for _ in range(size)]
        assert numpy_mean(values) == float(np.mean(values))
        scaled = 100 * numpy_mean(values)
        assert numpy_round2(scaled) == float(round(np.float64(scaled), 2))
    assert math.isnan(numpy_mean([]))
