"""LongBench v1's metrics, reproduced exactly (quirks included), and RULER's answer-set string match.

Every LongBench metric scores one prediction against one answer; a sample's score is the best over its
answers, starting from 0.0, after cutting few-shot predictions to their first line (`score_prediction`). The
synthetic tasks' metrics score the prediction against the whole answer list at once. docs/scoring.md lists the
quirks.

The Chinese metrics (qa_f1_zh, rouge_zh) segment words with jieba, as LongBench does; jieba is the optional
`zh` extra, imported when first needed (`missing_dependency` says whether it is there).
"""

import difflib
import importlib
import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from evaluation.errors import InputError
from evaluation.rouge import MAX_RECON_STEPS_ZH, rouge_l_f
from evaluation.tasks import FIRST_LINE_DATASETS, metric_for_dataset

# (prediction, one answer, all_classes) -> score in [0, 1]: LongBench's per-answer metrics.
AnswerMetric = Callable[[str, str, Sequence[str] | None], float]
# (prediction, all answers, all_classes) -> score in [0, 1]: a sample's score.
Metric = Callable[[str, Sequence[str], Sequence[str] | None], float]

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Python's \d, as LongBench uses it: any Unicode decimal digit.
_NUMBER = re.compile(r"\d+")
_PARAGRAPH = re.compile(r"Paragraph (\d+)")
_PARAGRAPH_ZH = re.compile(r"段落(\d+)")
# LongBench's Chinese punctuation list, character for character ("《" is not in it, its pair "》" is).
_ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》"
    "「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_DELETE_ZH_PUNCTUATION = str.maketrans("", "", string.punctuation + _ZH_PUNCTUATION)
# The metrics that need jieba, and how to get it.
JIEBA_METRICS = frozenset({"qa_f1_zh", "rouge_zh"})
JIEBA_INSTALL = "pip install 'quasar-subnet[zh]'"


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, delete ASCII punctuation (leaving no space), articles -> space,
    collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_DELETE_PUNCTUATION)).split())


def token_f1(prediction: Sequence[str], answer: Sequence[str]) -> float:
    common = Counter(prediction) & Counter(answer)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(answer)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(answer).split())


def rouge_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    return rouge_l_f(prediction, answer)


def jieba_installed() -> bool:
    try:
        importlib.import_module("jieba")
    except ImportError:
        return False
    return True


def segment_chinese(text: str) -> list[str]:
    """jieba's words, as LongBench cuts them: `jieba.cut(text, cut_all=False)` (accurate mode, HMM on)."""
    try:
        jieba = importlib.import_module("jieba")
    except ImportError:
        raise InputError("jieba", f"Chinese scoring needs jieba; install it: {JIEBA_INSTALL}") from None
    jieba.setLogLevel(logging.WARNING)  # not the dictionary-loading chatter on every first use
    return list(jieba.cut(text, cut_all=False))


def normalize_zh_answer(text: str) -> str:
    """LongBench's Chinese normalisation of one word: lowercase, delete ASCII and Chinese punctuation, delete
    all whitespace."""
    return "".join(text.lower().translate(_DELETE_ZH_PUNCTUATION).split())


def _zh_tokens(text: str) -> list[str]:
    return [token for token in map(normalize_zh_answer, segment_chinese(text)) if token]


def qa_f1_zh_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    """Token F1 over jieba's words, each normalised, empty ones dropped."""
    return token_f1(_zh_tokens(prediction), _zh_tokens(answer))


def rouge_zh_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    """ROUGE-L F of the texts with jieba's words joined by spaces. LongBench's rouge_zh_score calls its
    rouge_score, one frame deeper: the recursion quirk strikes one backtrack move earlier."""
    return rouge_l_f(
        " ".join(segment_chinese(prediction)), " ".join(segment_chinese(answer)), MAX_RECON_STEPS_ZH
    )


def classification_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    """Share of the classes named in the prediction that is the answer.

    LongBench drops the named classes that are part of the answer without being it (e.g. "location" when the
    answer is "other location"), but removes them from the list it is iterating over: the class right after a
    removed one is never checked, and stays. `list.remove` also drops the FIRST equal entry, which matters
    when `all_classes` repeats a name. Both reproduced here with an explicit index.
    """
    if all_classes is None:
        raise InputError("all_classes", "classification needs the list of class names, got null")
    named = [name for name in all_classes if name in prediction]
    index = 0
    while index < len(named):
        name = named[index]
        if name in answer and name != answer:
            named.remove(name)
        index += 1
    return 1.0 / len(named) if answer in named else 0.0


def _share_of_numbers(prediction: str, target: str) -> float:
    numbers = _NUMBER.findall(prediction)
    return numbers.count(target) / len(numbers) if numbers else 0.0


def _paragraph_score(pattern: re.Pattern[str], prediction: str, answer: str) -> float:
    found = pattern.search(answer)
    if found is None:
        # LongBench crashes here (IndexError); a clear error instead.
        raise InputError(f"answer {answer!r}", f"retrieval answer without {pattern.pattern!r}")
    return _share_of_numbers(prediction, found.group(1))


def retrieval_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    """Share of the numbers in the prediction equal to N of the answer's first "Paragraph N"."""
    return _paragraph_score(_PARAGRAPH, prediction, answer)


def retrieval_zh_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    return _paragraph_score(_PARAGRAPH_ZH, prediction, answer)


def count_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    return _share_of_numbers(prediction, answer)


def _is_code_line(line: str) -> bool:
    return "`" not in line and "#" not in line and "//" not in line


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's fuzz.ratio as LongBench installs it (no python-Levenshtein: difflib underneath)."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return round(100 * difflib.SequenceMatcher(None, a, b).ratio())


def code_sim_score(prediction: str, answer: str, all_classes: Sequence[str] | None = None) -> float:
    """fuzz.ratio between the answer and the prediction's first line with no backtick, '#' or '//'."""
    lines = prediction.lstrip("\n").split("\n")
    return fuzz_ratio(next(filter(_is_code_line, lines), ""), answer) / 100


def best_over_answers(metric: AnswerMetric) -> Metric:
    """LongBench's sample score: the best of the metric over the answers, starting from 0.0."""

    def score(prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None) -> float:
        best = 0.0
        for answer in answers:
            best = max(best, metric(prediction, answer, all_classes))
        return best

    return score


def _found(prediction: str, answers: Sequence[str]) -> list[float]:
    lowered = prediction.lower()
    return [1.0 if answer.lower() in lowered else 0.0 for answer in answers]


def string_match_all(
    prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None
) -> float:
    """RULER: share of the answers found in the prediction, case-insensitively (0.0 with no answer)."""
    return sum(_found(prediction, answers)) / len(answers) if answers else 0.0


def string_match_part(
    prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None
) -> float:
    """RULER: 1.0 when any answer is found in the prediction, case-insensitively."""
    return max(_found(prediction, answers), default=0.0)


METRICS: dict[str, Metric] = {
    "qa_f1": best_over_answers(qa_f1_score),
    "qa_f1_zh": best_over_answers(qa_f1_zh_score),
    "rouge": best_over_answers(rouge_score),
    "rouge_zh": best_over_answers(rouge_zh_score),
    "classification": best_over_answers(classification_score),
    "retrieval": best_over_answers(retrieval_score),
    "retrieval_zh": best_over_answers(retrieval_zh_score),
    "count": best_over_answers(count_score),
    "code_sim": best_over_answers(code_sim_score),
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
}


def first_line(prediction: str) -> str:
    return prediction.lstrip("\n").split("\n")[0]


def missing_dependency(dataset: str) -> str | None:
    """Why `dataset` cannot be scored here (a package to install), or None when it can. InputError for an
    unknown dataset."""
    metric = metric_for_dataset(dataset)
    if metric in JIEBA_METRICS and not jieba_installed():
        return f"its metric {metric} segments Chinese with jieba, which is not installed: {JIEBA_INSTALL}"
    return None


def score_prediction(
    dataset: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None
) -> float:
    """A sample's score in [0, 1], exactly as LongBench's eval.py computes it."""
    metric = metric_for_dataset(dataset)
    if dataset in FIRST_LINE_DATASETS:
        prediction = first_line(prediction)
    return METRICS[metric](prediction, answers, all_classes)
