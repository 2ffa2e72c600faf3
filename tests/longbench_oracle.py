"""LongBench v1's scoring, written plainly after its metrics.py and eval.py: the reference the tests hold the
fast implementation to.

Nothing here is optimised or tidied: each formula follows the official code step by step, quirks included
(the classification list is mutated while it is iterated, a retrieval answer without "Paragraph N" crashes).
ROUGE-L is the real `rouge` 1.0.1 package, called as LongBench calls it, with the recursion budget that
LongBench's eval.py leaves it. The Chinese metrics segment with the real jieba, as LongBench does.
"""

import difflib
import importlib
import json
import os
import re
import string
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rouge import Rouge

AllClasses = Sequence[str] | None


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: list[str], answer: list[str]) -> float:
    common = Counter(prediction) & Counter(answer)
    same = sum(common.values())
    if same == 0:
        return 0
    precision = 1.0 * same / len(prediction)
    recall = 1.0 * same / len(answer)
    return (2 * precision * recall) / (precision + recall)


def qa_f1(prediction: str, answer: str, all_classes: AllClasses) -> float:
    return f1(normalize(prediction).split(), normalize(answer).split())


def normalize_zh(text: str) -> str:
    cn_punctuation = (
        "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》"
        "「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
    )
    all_punctuation = set(string.punctuation + cn_punctuation)
    text = text.lower()
    text = "".join(ch for ch in text if ch not in all_punctuation)
    return "".join(text.split())


def jieba_cut(text: str) -> list[str]:
    jieba = importlib.import_module("jieba")  # the `zh` extra, part of `dev`
    return list(jieba.cut(text, cut_all=False))


def qa_f1_zh(prediction: str, answer: str, all_classes: AllClasses) -> float:
    prediction_tokens = [normalize_zh(token) for token in jieba_cut(prediction)]
    answer_tokens = [normalize_zh(token) for token in jieba_cut(answer)]
    prediction_tokens = [token for token in prediction_tokens if len(token) > 0]
    answer_tokens = [token for token in answer_tokens if len(token) > 0]
    return f1(prediction_tokens, answer_tokens)


def classification(prediction: str, answer: str, all_classes: AllClasses) -> float:
    assert all_classes is not None
    matched = []
    for name in all_classes:
        if name in prediction:
            matched.append(name)
    for name in matched:
        if name in answer and name != answer:
            matched.remove(name)  # the official quirk: removing while iterating skips the next name
    if answer in matched:
        return 1.0 / len(matched)
    return 0.0


def _share(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    right = 0
    for number in numbers:
        if str(number) == str(target):
            right += 1
    return 0.0 if len(numbers) == 0 else right / len(numbers)


def retrieval(prediction: str, answer: str, all_classes: AllClasses) -> float:
    return _share(prediction, re.findall(r"Paragraph (\d+)", answer)[0])


def retrieval_zh(prediction: str, answer: str, all_classes: AllClasses) -> float:
    return _share(prediction, re.findall(r"段落(\d+)", answer)[0])


def count(prediction: str, answer: str, all_classes: AllClasses) -> float:
    return _share(prediction, answer)


def fuzz_ratio(a: str, b: str) -> int:
    # fuzzywuzzy 0.18 fuzz.ratio without python-Levenshtein: its three decorators, then difflib.
    if a is None or b is None:
        return 0
    if a == b:
        return 100
    if len(a) == 0 or len(b) == 0:
        return 0
    return round(100 * difflib.SequenceMatcher(None, a, b).ratio())  # utils.intr: int(round(x))


def code_sim(prediction: str, answer: str, all_classes: AllClasses) -> float:
    kept = ""
    for line in prediction.lstrip("\n").split("\n"):
        if ("`" not in line) and ("#" not in line) and ("//" not in line):
            kept = line
            break
    return fuzz_ratio(kept, answer) / 100


# In eval.py the metric is called from `scorer`, which runs at depth 2 (the module, then scorer): the metric
# and everything below it may use 998 more frames under the default recursion limit of 1000.
EVAL_PY_FREE_FRAMES = 998


def _free_frames() -> int:
    """How many frames the caller of this function may still push before RecursionError."""

    def dive(depth: int) -> int:
        try:
            return dive(depth + 1)
        except RecursionError:
            return depth

    return dive(1)


def _package_rouge(prediction: str, answer: str) -> float:
    try:
        scores = Rouge().get_scores([prediction], [answer], avg=True)
    except Exception:
        return 0.0
    f: float = scores["rouge-l"]["f"]
    return f


def _as_called_by_scorer(metric: Callable[[str, str], float], prediction: str, answer: str) -> float:
    """metric(prediction, answer) with as many free frames as eval.py's scorer leaves its metric (this frame
    stands for scorer's)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit - (_free_frames() + 1) + EVAL_PY_FREE_FRAMES)
    try:
        return metric(prediction, answer)
    finally:
        sys.setrecursionlimit(limit)


def rouge(prediction: str, answer: str, all_classes: AllClasses) -> float:
    """metrics.rouge_score, run with as many free frames as under eval.py."""
    return _as_called_by_scorer(_package_rouge, prediction, answer)


def _rouge_zh_score(prediction: str, answer: str) -> float:
    # metrics.rouge_zh_score: segment, then call rouge_score (one frame deeper than rouge_score under scorer).
    prediction = " ".join(jieba_cut(prediction))
    answer = " ".join(jieba_cut(answer))
    return _package_rouge(prediction, answer)


def rouge_zh(prediction: str, answer: str, all_classes: AllClasses) -> float:
    return _as_called_by_scorer(_rouge_zh_score, prediction, answer)


def string_match_all(prediction: str, answers: Sequence[str]) -> float:
    return sum([1.0 if answer.lower() in prediction.lower() else 0.0 for answer in answers]) / len(answers)


def string_match_part(prediction: str, answers: Sequence[str]) -> float:
    return max([1.0 if answer.lower() in prediction.lower() else 0.0 for answer in answers])


DATASET_METRIC: dict[str, Callable[[str, str, AllClasses], float]] = {
    "narrativeqa": qa_f1,
    "qasper": qa_f1,
    "multifieldqa_en": qa_f1,
    "multifieldqa_zh": qa_f1_zh,
    "hotpotqa": qa_f1,
    "2wikimqa": qa_f1,
    "musique": qa_f1,
    "dureader": rouge_zh,
    "gov_report": rouge,
    "qmsum": rouge,
    "multi_news": rouge,
    "vcsum": rouge_zh,
    "trec": classification,
    "triviaqa": qa_f1,
    "samsum": rouge,
    "lsht": classification,
    "passage_retrieval_en": retrieval,
    "passage_count": count,
    "passage_retrieval_zh": retrieval_zh,
    "lcc": code_sim,
    "repobench-p": code_sim,
}
SYNTHETIC = ("niah_single", "niah_multikey", "niah_multivalue", "variable_tracking", "aggregation")


def score(dataset: str, prediction: str, answers: Sequence[str], all_classes: AllClasses) -> float:
    """One sample, as eval.py's scorer scores it."""
    if dataset in SYNTHETIC:
        return string_match_all(prediction, answers) if answers else 0.0
    value = 0.0
    if dataset in ["trec", "triviaqa", "samsum", "lsht"]:
        prediction = prediction.lstrip("\n").split("\n")[0]
    for answer in answers:
        value = max(value, DATASET_METRIC[dataset](prediction, answer, all_classes))
    return value


def eval_py(folder: Path, longbench_e: bool) -> str:
    """result.json's text as eval.py writes it for `folder` (scored with `score`)."""
    results: dict[str, Any] = {}
    for filename in os.listdir(folder):
        if not filename.endswith("jsonl"):
            continue
        predictions, answers, lengths = [], [], []
        dataset = filename.split(".")[0]
        with open(folder / filename, encoding="utf-8") as handle:
            for line in handle:
                data = json.loads(line)
                predictions.append(data["pred"])
                answers.append(data["answers"])
                all_classes = data["all_classes"]
                if "length" in data:
                    lengths.append(data["length"])
        scores = [score(dataset, p, a, all_classes) for p, a in zip(predictions, answers, strict=True)]
        if longbench_e:
            groups: dict[str, list[float]] = {"0-4k": [], "4-8k": [], "8k+": []}
            for value, length in zip(scores, lengths, strict=True):
                groups["0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"].append(value)
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", RuntimeWarning
                )  # np.mean of an empty group: NaN, as in eval.py
                results[dataset] = {key: round(100 * np.mean(group), 2) for key, group in groups.items()}
        else:
            total = 0.0
            for value in scores:
                total += value
            results[dataset] = round(100 * total / len(predictions), 2)
    return json.dumps(results, ensure_ascii=False, indent=4)
