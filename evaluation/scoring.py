"""`quasar eval score PATH`: LongBench's eval.py as a faster drop-in, with line-level errors.

Reads a folder of `<dataset>.jsonl` prediction files (or one such file), scores every line with
`evaluation.metrics.score_prediction` and writes result.json exactly as eval.py does: same keys in the same
order, same numbers, same formatting. Where eval.py's behaviour is an accident of its code it is kept
(docs/scoring.md lists each): the dataset is the file name up to its first dot, a file's `all_classes` is the
one on its last line (per dataset, for files whose lines name their own), and LongBench-E's per-group means
are numpy's (pairwise summation, numpy's rounding, NaN for an empty group).

A folder's result.json is replaced whole, as eval.py writes it; scoring one file updates only its datasets'
entries in the result.json it writes to. Datasets whose metric needs a package that is not installed (jieba
for the Chinese ones) are skipped and named on stderr; the others are scored.

Everything is read and scored before anything is written, and files are written whole (temp file, then
os.replace), so bad input leaves no half-written result. Outputs go into existing folders only.
"""

import io
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evaluation.errors import InputError
from evaluation.files import check_destination, locked_folder, write_text_atomic
from evaluation.metrics import missing_dependency, score_prediction
from evaluation.tasks import metric_for_dataset

# LongBench-E's length groups, in result.json's order.
LENGTH_GROUPS = ("0-4k", "4-8k", "8k+")

# Below this many characters of predictions and answers in all, a process pool costs more than it saves.
_PARALLEL_MIN_CHARS = 2_000_000
_CHUNK_SAMPLES = 256


@dataclass(frozen=True)
class Sample:
    """One prediction line, checked."""

    file: Path
    line: int
    dataset: str
    prediction: str
    answers: tuple[str, ...]
    all_classes: tuple[str, ...] | None
    length: float | None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class _Failure:
    """An InputError from a worker process (InputError itself does not survive pickling)."""

    where: str
    problem: str


def run_score(path: Path, *, longbench_e: bool, per_sample: Path | None, output: Path | None) -> int:
    files = prediction_files(path)
    result_path = output if output is not None else (path if path.is_dir() else path.parent) / "result.json"
    for destination in (per_sample, result_path):
        if destination is not None:
            check_destination(destination)
    samples = [sample for file in sorted(files) for sample in read_predictions(file)]
    skipped = unscorable_datasets(samples)
    if len(skipped) == len({sample.dataset for sample in samples}):
        reasons = "; ".join(f"{dataset}: {reason}" for dataset, reason in skipped.items())
        raise InputError(str(path), f"nothing can be scored: {reasons}")
    skipped_lines = _line_counts([sample for sample in samples if sample.dataset in skipped])
    samples = [sample for sample in samples if sample.dataset not in skipped]
    lengths = [required_length(sample) for sample in samples] if longbench_e else []
    scores = score_samples(samples)
    order = dataset_order(files, samples)
    result: dict[str, Any] = (
        grouped_results(order, samples, scores, lengths)
        if longbench_e
        else dataset_results(order, samples, scores)
    )
    with locked_folder(result_path.parent):
        if not path.is_dir():
            result = merged_result(result_path, result, longbench_e=longbench_e)
        if per_sample is not None:
            write_text_atomic(per_sample, per_sample_lines(samples, scores), create_folders=False)
        # eval.py: json.dump(scores, f, ensure_ascii=False, indent=4), no trailing newline.
        write_text_atomic(result_path, json.dumps(result, ensure_ascii=False, indent=4), create_folders=False)
    print(format_table(result, _line_counts(samples)))
    for dataset, reason in skipped.items():
        print(f"skipped {dataset} ({skipped_lines[dataset]} lines): {reason}", file=sys.stderr)
    print(f"wrote {result_path}")
    return 0


def unscorable_datasets(samples: Sequence[Sample]) -> dict[str, str]:
    """dataset -> why it cannot be scored here (a missing optional package), in order of appearance."""
    reasons = {dataset: missing_dependency(dataset) for dataset in dict.fromkeys(s.dataset for s in samples)}
    return {dataset: reason for dataset, reason in reasons.items() if reason is not None}


def merged_result(result_path: Path, result: dict[str, Any], *, longbench_e: bool) -> dict[str, Any]:
    """The result.json already at `result_path` with this run's datasets replaced in place and new ones added
    at the end: scoring one file keeps the other files' scores."""
    if not result_path.exists():
        return result
    try:
        existing = json.loads(result_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(str(result_path), f"existing result.json is not valid JSON ({error})") from None
    if not isinstance(existing, dict):
        raise InputError(str(result_path), "existing result.json is not a JSON object")
    for dataset, value in existing.items():
        if isinstance(value, dict) != longbench_e:
            kind = "LongBench-E (--e) results" if isinstance(value, dict) else "results without --e"
            raise InputError(
                str(result_path), f"holds {kind} (see {dataset!r}); write this run elsewhere with --output"
            )
    return existing | result


def _line_counts(samples: Sequence[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.dataset] = counts.get(sample.dataset, 0) + 1
    return counts


def prediction_files(path: Path) -> list[Path]:
    """The files eval.py reads, in os.listdir order (the order of result.json's keys): names ending in
    "jsonl"."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(str(path), "no such file or folder")
    files = [path / name for name in os.listdir(path) if name.endswith("jsonl") and (path / name).is_file()]
    if not files:
        raise InputError(str(path), "no <dataset>.jsonl prediction files in this folder")
    return files


def read_predictions(file: Path) -> list[Sample]:
    default_dataset = file.name.split(".")[0]  # eval.py's rule: the name up to its first dot
    samples = [
        _sample(file, number, _record(f"{file}:{number}", text), default_dataset)
        for number, text in _lines(file)
    ]
    if not samples:
        raise InputError(str(file), "empty file: no predictions")
    # eval.py keeps only the last line's all_classes and scores the whole file with it. Where lines name
    # their own datasets, each dataset's last line counts for that dataset only: another dataset's classes
    # (or its null) would be meaningless.
    last_classes = {sample.dataset: sample.all_classes for sample in samples}
    return [replace(sample, all_classes=last_classes[sample.dataset]) for sample in samples]


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) as eval.py's text-mode `for line in f` splits them (universal newlines)."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{file}:{line}", "not valid UTF-8") from None
    return enumerate(io.StringIO(text, newline=None), start=1)


def _record(where: str, text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(where, f"not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise InputError(where, "a line must be a JSON object")
    return record


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


def _sample(file: Path, number: int, record: dict[str, Any], default_dataset: str) -> Sample:
    where = f"{file}:{number}"
    prediction = record.get("pred")
    if not isinstance(prediction, str):
        raise InputError(where, "pred must be a string" if "pred" in record else "missing pred")
    answers = _strings(record.get("answers"))
    if answers is None:
        raise InputError(
            where, "answers must be a list of strings" if "answers" in record else "missing answers"
        )
    all_classes = record.get("all_classes")
    if all_classes is not None and _strings(all_classes) is None:
        raise InputError(where, "all_classes must be null or a list of strings")
    dataset = record.get("dataset", default_dataset)
    if not isinstance(dataset, str):
        raise InputError(where, "dataset must be a string")
    try:
        metric_for_dataset(dataset)
    except InputError as error:
        raise InputError(where, str(error)) from None
    length = record.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int | float)):
        raise InputError(where, "length must be a number")
    return Sample(file, number, dataset, prediction, answers, _strings(all_classes), length)


def required_length(sample: Sample) -> float:
    if sample.length is None:
        raise InputError(sample.where, "LongBench-E (--e) needs `length` on every line")
    return sample.length


def _score_chunk(samples: Sequence[Sample]) -> list[float] | _Failure:
    scores = []
    for sample in samples:
        try:
            scores.append(
                score_prediction(sample.dataset, sample.prediction, sample.answers, sample.all_classes)
            )
        except InputError as error:
            return _Failure(sample.where, str(error))
    return scores


def score_samples(samples: Sequence[Sample]) -> list[float]:
    """Scores in sample order. Big inputs are scored in chunks across processes; each score is a pure
    function of its sample, so the result does not depend on how the work was split."""
    chunks = [samples[start : start + _CHUNK_SAMPLES] for start in range(0, len(samples), _CHUNK_SAMPLES)]
    workers = os.cpu_count() or 1
    size = sum(len(sample.prediction) + sum(map(len, sample.answers)) for sample in samples)
    if workers > 1 and len(chunks) > 1 and size >= _PARALLEL_MIN_CHARS:
        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            results = list(pool.map(_score_chunk, chunks))
    else:
        results = [_score_chunk(chunk) for chunk in chunks]
    scores: list[float] = []
    for result in results:
        if isinstance(result, _Failure):
            raise InputError(result.where, result.problem)
        scores.extend(result)
    return scores


def dataset_order(files: Sequence[Path], samples: Sequence[Sample]) -> list[str]:
    """Datasets in eval.py's key order: files in os.listdir order, then lines."""
    rank = {file: index for index, file in enumerate(files)}
    order: dict[str, None] = {}
    for sample in sorted(samples, key=lambda sample: (rank[sample.file], sample.line)):
        order.setdefault(sample.dataset)
    return list(order)


def _by_dataset(samples: Sequence[Sample], scores: Sequence[float]) -> dict[str, list[tuple[Sample, float]]]:
    groups: dict[str, list[tuple[Sample, float]]] = {}
    for sample, score in zip(samples, scores, strict=True):
        groups.setdefault(sample.dataset, []).append((sample, score))
    return groups


def dataset_results(
    order: Sequence[str], samples: Sequence[Sample], scores: Sequence[float]
) -> dict[str, float]:
    groups = _by_dataset(samples, scores)
    result = {}
    for dataset in order:
        total = 0.0
        for _, score in groups[dataset]:
            total += score  # eval.py's running sum, in line order: the last digit depends on it
        result[dataset] = round(100 * total / len(groups[dataset]), 2)
    return result


def length_group(length: float) -> str:
    # eval.py's tests, in its order (a NaN length lands in 8k+).
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def grouped_results(
    order: Sequence[str], samples: Sequence[Sample], scores: Sequence[float], lengths: Sequence[float]
) -> dict[str, dict[str, float]]:
    buckets: dict[str, dict[str, list[float]]] = {
        dataset: {name: [] for name in LENGTH_GROUPS} for dataset in order
    }
    for sample, score, length in zip(samples, scores, lengths, strict=True):
        buckets[sample.dataset][length_group(length)].append(score)
    return {
        dataset: {name: numpy_round2(100 * numpy_mean(values)) for name, values in groups.items()}
        for dataset, groups in buckets.items()
    }


def numpy_mean(values: Sequence[float]) -> float:
    """np.mean of a float64 list to the last bit: numpy adds with pairwise summation. NaN when empty."""
    return _pairwise_sum(values, 0, len(values)) / len(values) if values else math.nan


def _pairwise_sum(values: Sequence[float], start: int, count: int) -> float:
    """numpy's pairwise_sum: plain loop below 8 values, 8 interleaved partial sums up to 128, else halves
    split at a multiple of 8."""
    if count < 8:
        total = 0.0
        for index in range(start, start + count):
            total += values[index]
        return total
    if count <= 128:
        partial = list(values[start : start + 8])
        index = 8
        while index < count - count % 8:
            for lane in range(8):
                partial[lane] += values[start + index + lane]
            index += 8
        total = ((partial[0] + partial[1]) + (partial[2] + partial[3])) + (
            (partial[4] + partial[5]) + (partial[6] + partial[7])
        )
        for rest in range(start + index, start + count):
            total += values[rest]
        return total
    half = count // 2
    half -= half % 8
    return _pairwise_sum(values, start, half) + _pairwise_sum(values, start + half, count - half)


def numpy_round2(value: float) -> float:
    """round(np.float64, 2): numpy scales by 100, rounds half to even and scales back (Python's round(x, 2)
    rounds the exact decimal value instead, which can differ in the last digit)."""
    return value if math.isnan(value) else round(value * 100.0) / 100.0


def per_sample_lines(samples: Sequence[Sample], scores: Sequence[float]) -> str:
    return "".join(
        json.dumps(
            {"file": str(sample.file), "line": sample.line, "dataset": sample.dataset, "score": score},
            ensure_ascii=False,
        )
        + "\n"
        for sample, score in zip(samples, scores, strict=True)
    )


def format_table(result: dict[str, Any], counts: dict[str, int]) -> str:
    """This run's datasets (a merged result.json may hold more) with their line counts and scores."""
    result = {dataset: value for dataset, value in result.items() if dataset in counts}
    grouped = any(isinstance(value, dict) for value in result.values())
    columns = list(LENGTH_GROUPS) if grouped else ["score"]
    width = max(len("dataset"), *map(len, result))
    lines = [f"{'dataset':<{width}}  {'samples':>7}" + "".join(f"  {column:>7}" for column in columns)]
    for dataset, value in result.items():
        values = [value[column] for column in columns] if grouped else [value]
        lines.append(f"{dataset:<{width}}  {counts[dataset]:>7}" + "".join(f"  {v:>7.2f}" for v in values))
    return "\n".join(lines)
