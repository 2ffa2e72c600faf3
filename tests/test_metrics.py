"""LongBench's metrics against the plain official formulas (tests/longbench_oracle.py) on generated inputs."""

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
    qa_f1_score,
    retrieval_score,
    retrieval_zh_score,
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

TOLERANCE = 1e-6


@st.composite
def texts(draw: st.DrawFn, max_tokens: int = 25) -> str:
    tokens = draw(st.lists(st.sampled_from(TOKENS), max_size=max_tokens))
    return "".join(token + draw(st.sampled_from(SEPARATORS)) for token in tokens)


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
@given(st.sampled_from(SUPPORTED), texts(), answers, class_lists)
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


def test_unknown_and_unsupported_datasets_are_input_errors() -> None:
    with pytest.raises(InputError, match="unknown dataset"):
        score_prediction("not_a_dataset", "x", ["x"], None)
    for dataset in ("multifieldqa_zh", "dureader", "vcsum"):
        with pytest.raises(InputError, match=f"dataset '{dataset}'.*jieba"):
            score_prediction(dataset, "x", ["x"], None)


def test_classification_needs_classes() -> None:
    with pytest.raises(InputError, match="all_classes"):
        score_prediction("trec", "City", ["City"], None)
