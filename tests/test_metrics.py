"""LongBench's metrics against the plain official formulas (tests/longbench_oracle.py) on generated inputs."""

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.errors import InputError
from evaluation.metrics import (
    METRICS,
    classification_score,
    code_sim_score,
    count_score,
    normalize_answer,
    normalize_zh_answer,
    qa_f1_score,
    qa_f1_zh_score,
    retrieval_score,
    retrieval_zh_score,
    rouge_zh_score,
    score_prediction,
    string_match_all,
    string_match_part,
)
from evaluation.tasks import LONGBENCH_METRIC, SYNTHETIC_TASKS
from tests import longbench_oracle as oracle

# Case variants, articles, punctuation glued to words, numbers, code-ish lines and class names.
TOKENS = [
    "a", "an", "the", "The", "An", "cat", "Cat", "CAT", "dog's", "don't", "U.S.", "x-y", "(b)", "1", "12",
    "012", "Paragraph", "Paragraph 3", "Paragraph 12", "段落4", "location", "other location", "Location",
    "number", "#", "//", "`", "def", "f(x):", "é", "İ", "٣", "!", "?", ".", "",
]  # fmt: skip
SEPARATORS = [" ", " ", "  ", "\n", "\n\n", "\t", "", ", "]
CLASSES = ["location", "other location", "Location", "other", "number", "other number", "cat", "Cat", "dog's"]
SUPPORTED = sorted(name for name, metric in LONGBENCH_METRIC.items() if metric in METRICS) + list(
    SYNTHETIC_TASKS
)
# Chinese words jieba may join or split, full-width and ASCII punctuation (ASCII dots end ROUGE sentences),
# "《" (not in LongBench's punctuation list) and "》" (in it), mixed scripts, full-width digits.
ZH_TOKENS = [
    "我", "来到", "北京", "清华大学", "清华", "大学", "的", "是", "他", "他们", "中国", "人民", "中国人民",
    "会议", "讨论", "了", "项目", "进展", "。", "，", "、", "！", "？", "《", "》", "“", "”", "…", "．",
    "（", "）", "Paris", "AI", "ａｂ", "１２", "12", "3.5", "段落3", ".", "", "é",
]  # fmt: skip
ZH_SEPARATORS = ["", "", "", " ", "\n", "。", "."]

TOLERANCE = 1e-6


@st.composite
def texts(draw: st.DrawFn, max_tokens: int = 25) -> str:
    tokens = draw(st.lists(st.sampled_from(TOKENS), max_size=max_tokens))
    return "".join(token + draw(st.sampled_from(SEPARATORS)) for token in tokens)


@st.composite
def zh_texts(draw: st.DrawFn, max_tokens: int = 30) -> str:
    tokens = draw(st.lists(st.sampled_from(ZH_TOKENS), max_size=max_tokens))
    return "".join(token + draw(st.sampled_from(ZH_SEPARATORS)) for token in tokens)


answers = st.lists(texts(6), max_size=3)
class_lists = st.lists(st.sampled_from(CLASSES), min_size=1, max_size=8)
paragraphs = st.builds(
    lambda n, tail: f"Paragraph {n}{tail}", st.integers(0, 40), st.sampled_from(["", " 7", "."])
)
digits = st.lists(st.sampled_from(["1", "2", "12", "3", "x", " ", "Paragraph 2", "02"]), max_size=8).map(
    "".join
)


@settings(max_examples=300, deadline=None)
@given(texts(), texts(8))
def test_qa_f1_matches_oracle(prediction: str, answer: str) -> None:
    assert normalize_answer(prediction) == oracle.normalize(prediction)
    assert qa_f1_score(prediction, answer) == pytest.approx(
        oracle.qa_f1(prediction, answer, None), abs=TOLERANCE
    )


@settings(max_examples=300, deadline=None)
@given(zh_texts(), zh_texts(10))
def test_chinese_metrics_match_oracle(prediction: str, answer: str) -> None:
    assert normalize_zh_answer(prediction) == oracle.normalize_zh(prediction)
    assert qa_f1_zh_score(prediction, answer) == oracle.qa_f1_zh(prediction, answer, None)
    assert rouge_zh_score(prediction, answer) == oracle.rouge_zh(prediction, answer, None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(CLASSES), max_size=4).map(" ".join), st.sampled_from(CLASSES), class_lists)
def test_classification_matches_oracle(prediction: str, answer: str, classes: list[str]) -> None:
    expected = oracle.classification(prediction, answer, classes)
    assert classification_score(prediction, answer, classes) == pytest.approx(expected, abs=TOLERANCE)


@settings(max_examples=200, deadline=None)
@given(digits, paragraphs, st.integers(0, 40))
def test_retrieval_and_count_match_oracle(prediction: str, answer: str, count: int) -> None:
    assert retrieval_score(prediction, answer) == oracle.retrieval(prediction, answer, None)
    assert count_score(prediction, str(count)) == oracle.count(prediction, str(count), None)
    chinese = answer.replace("Paragraph ", "段落")
    assert retrieval_zh_score(prediction, chinese) == oracle.retrieval_zh(prediction, chinese, None)


@settings(max_examples=200, deadline=None)
@given(texts(), texts(8))
def test_code_sim_matches_oracle(prediction: str, answer: str) -> None:
    assert code_sim_score(prediction, answer) == oracle.code_sim(prediction, answer, None)


@settings(max_examples=200, deadline=None)
@given(texts(), answers)
def test_string_match_matches_ruler(prediction: str, references: list[str]) -> None:
    if references:
        assert string_match_all(prediction, references) == oracle.string_match_all(prediction, references)
        assert string_match_part(prediction, references) == oracle.string_match_part(prediction, references)
    else:
        assert string_match_all(prediction, references) == string_match_part(prediction, references) == 0.0


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SUPPORTED), texts() | zh_texts(), answers, class_lists)
def test_score_prediction_matches_oracle(
    dataset: str, prediction: str, gold: list[str], classes: list[str]
) -> None:
    if LONGBENCH_METRIC.get(dataset) == "retrieval":
        gold = [f"Paragraph {index}" for index, _ in enumerate(gold)]
    elif LONGBENCH_METRIC.get(dataset) == "retrieval_zh":
        gold = [f"段落{index}" for index, _ in enumerate(gold)]
    expected = oracle.score(dataset, prediction, gold, classes)
    assert score_prediction(dataset, prediction, gold, classes) == pytest.approx(expected, abs=TOLERANCE)


def test_classification_skips_the_class_after_a_removed_one() -> None:
    # "location" is part of the answer without being it, so it is removed, and "other", now in its place, is
    # never checked: it stays and halves the score.
    classes = ["location", "other", "other location"]
    assert classification_score("other location", "other location", classes) == 0.5
    assert oracle.classification("other location", "other location", classes) == 0.5
    # In another order "other" is checked and removed too.
    assert (
        classification_score("other location", "other location", ["location", "other location", "other"])
        == 1.0
    )


def test_qa_f1_normalisation() -> None:
    assert normalize_answer("Don't  stop, THE U.S.-led\tan apple!") == "dont stop usled apple"
    assert qa_f1_score("The Cat.", "a cat") == 1.0
    assert qa_f1_score("cat dog", "dog mouse") == 0.5
    assert qa_f1_score("", "cat") == 0.0


def test_first_line_cut_for_few_shot_datasets() -> None:
    prediction = "\n\nParis\nQuestion: what else?\nAnswer: London"
    assert score_prediction("triviaqa", prediction, ["Paris"], None) == 1.0
    assert score_prediction("triviaqa", prediction, ["London"], None) == 0.0
    assert score_prediction("narrativeqa", prediction, ["London"], None) > 0.0  # no cut: London counts
    assert score_prediction("trec", "\nCity\nCountry", ["Country"], ["City", "Country"]) == 0.0


def test_best_over_answers_and_answer_sets() -> None:
    assert score_prediction("qasper", "red apple", ["blue", "red apple", "apple"], None) == 1.0
    assert score_prediction("qasper", "anything", [], None) == 0.0
    assert score_prediction("niah_multivalue", "Values: 12, 7.", ["12", "7", "9"], None) == 2 / 3
    assert string_match_part("Values: 12", ["12", "9"]) == 1.0


def test_code_sim_uses_first_plain_line() -> None:
    prediction = "\n# comment\n```python\nreturn x // 2\nreturn x + 1\n"
    assert code_sim_score(prediction, "return x + 1") == 1.0
    assert code_sim_score("# only comments", "x") == 0.0
    assert code_sim_score("", "") == 1.0  # fuzz.ratio of two equal strings, even empty ones


def test_retrieval_answer_without_paragraph_is_an_input_error() -> None:
    with pytest.raises(InputError, match="Paragraph"):
        score_prediction("passage_retrieval_en", "Paragraph 3", ["the third one"], None)


def test_chinese_normalisation_and_words() -> None:
    # LongBench's list has "》" but not "《"; all whitespace goes, ASCII and full-width punctuation too.
    assert normalize_zh_answer("《三体》，Ａ b\tC!") == "《三体ａbc"
    # jieba's words, not characters: "清华大学" is one word, so "清华" alone shares nothing with it.
    assert qa_f1_zh_score("清华大学", "清华") == 0.0
    assert qa_f1_zh_score("我来到北京清华大学。", "我来到北京清华大学") == 1.0
    assert rouge_zh_score("他们讨论了项目进展", "他们讨论了会议") == oracle.rouge_zh(
        "他们讨论了项目进展", "他们讨论了会议", None
    )


def test_unknown_datasets_and_missing_jieba_are_input_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="unknown dataset"):
        score_prediction("not_a_dataset", "x", ["x"], None)
    monkeypatch.setitem(sys.modules, "jieba", None)  # as if the `zh` extra were not installed
    for dataset in ("multifieldqa_zh", "dureader", "vcsum"):
        with pytest.raises(InputError, match=r"jieba.*quasar-subnet\[zh\]"):
            score_prediction(dataset, "北京", ["北京"], None)
    assert score_prediction("passage_retrieval_zh", "段落2", ["段落2"], None) == 1.0  # no segmentation


def test_classification_needs_classes() -> None:
    with pytest.raises(InputError, match="all_classes"):
        score_prediction("trec", "City", ["City"], None)
