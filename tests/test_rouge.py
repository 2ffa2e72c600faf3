"""The fast ROUGE-L against the real `rouge` 1.0.1 package called the LongBench way: the same float."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.metrics import rouge_zh_score
from evaluation.rouge import MAX_RECON_STEPS, MAX_RECON_STEPS_ZH, rouge_l_f
from tests import longbench_oracle as oracle

# Few words, so that sentences share words and LCS paths branch; dots, blanks and case variants on purpose.
TOKENS = [
    "a",
    "b",
    "c",
    "the",
    "The",
    "cat",
    "Cat",
    "sat",
    "on",
    "mat",
    ".",
    "..",
    ". .",
    "x.y",
    "é",
    "a,",
    "1",
]
SEPARATORS = [" ", " ", "  ", "\n", "\t", "", " . "]


@st.composite
def texts(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from(TOKENS), max_size=40))
    return "".join(token + draw(st.sampled_from(SEPARATORS)) for token in tokens)


@settings(max_examples=400, deadline=None)
@given(texts(), texts())
def test_matches_package_on_generated_texts(hypothesis: str, reference: str) -> None:
    assert rouge_l_f(hypothesis, reference) == oracle.rouge(hypothesis, reference, None)


def _summary(rng: random.Random, words: list[str], total: int) -> str:
    weights = [1 / (rank + 1) for rank in range(len(words))]
    sentences: list[list[str]] = []
    while sum(map(len, sentences)) < total:
        sentences.append(rng.choices(words, weights, k=rng.randint(5, 30)))
    return " ".join(" ".join(sentence) + "." for sentence in sentences)


def test_matches_package_on_summary_sized_texts() -> None:
    rng = random.Random(3)
    words = [f"w{index}" for index in range(400)]
    for _ in range(15):
        reference = _summary(rng, words, rng.randint(50, 400))
        hypothesis = _summary(rng, words, rng.randint(50, 500))
        assert rouge_l_f(hypothesis, reference) == oracle.rouge(hypothesis, reference, None)


def test_identical_text_scores_just_under_one() -> None:
    text = "The cat sat on the mat. It was happy."
    assert rouge_l_f(text, text) == 2.0 * (1.0 / (2.0 + 1e-8))  # 0.999999995
    assert rouge_l_f(text, text) == pytest.approx(0.999999995, abs=1e-15)


@pytest.mark.parametrize(
    ("hypothesis", "reference"), [("", "a b"), ("a b", ""), ("...", "a b"), ("a b", "."), ("", "")]
)
def test_no_sentence_on_either_side_scores_zero(hypothesis: str, reference: str) -> None:
    assert rouge_l_f(hypothesis, reference) == 0.0
    assert oracle.rouge(hypothesis, reference, None) == 0.0


def test_case_sensitive_and_blank_sentences_count_as_the_empty_word() -> None:
    assert rouge_l_f("The cat", "the cat") < 0.6
    # " " between two dots is a sentence whose only word is "": it matches the same in the reference.
    for hypothesis, reference in [("a. .b", "a. . b"), (" .", " ."), ("a .  . b", "b")]:
        assert rouge_l_f(hypothesis, reference) == oracle.rouge(hypothesis, reference, None)


def _deep_pair(moves: int) -> tuple[str, str]:
    """A one-sentence pair whose backtrack takes exactly `moves` moves: left along the hypothesis to its first
    word, the only match, then one diagonal."""
    return "common " + " ".join(f"w{index}" for index in range(moves - 1)), "common"


def test_recursion_quirk_boundary() -> None:
    # The oracle runs the package with eval.py's recursion budget: pinned here at the measured boundary.
    deepest, too_deep = _deep_pair(MAX_RECON_STEPS), _deep_pair(MAX_RECON_STEPS + 1)
    assert MAX_RECON_STEPS == 990
    assert oracle.rouge(*deepest, None) > 0.0
    assert oracle.rouge(*too_deep, None) == 0.0
    assert rouge_l_f(*deepest) == oracle.rouge(*deepest, None)
    assert rouge_l_f(*too_deep) == 0.0


def test_recursion_quirk_boundary_of_rouge_zh_is_one_move_earlier() -> None:
    # LongBench's rouge_zh_score calls rouge_score: one frame deeper. Measured with the official eval.py on
    # one-line gov_report and vcsum files: k = 990 moves score on gov_report and give 0.0 on vcsum.
    assert MAX_RECON_STEPS_ZH == MAX_RECON_STEPS - 1
    deepest, too_deep = _deep_pair(MAX_RECON_STEPS_ZH), _deep_pair(MAX_RECON_STEPS_ZH + 1)
    assert oracle.rouge_zh(*deepest, None) > 0.0
    assert oracle.rouge_zh(*too_deep, None) == 0.0
    assert oracle.rouge(*too_deep, None) > 0.0
    assert rouge_zh_score(*deepest) == oracle.rouge_zh(*deepest, None)
    assert rouge_zh_score(*too_deep) == 0.0


def test_long_chinese_summaries_around_the_recursion_boundary() -> None:
    # vcsum and dureader answers are long Chinese texts with no ASCII dot: one ROUGE sentence of hundreds of
    # jieba words, so backtracks often pass the boundary and the sample scores 0.0, as in LongBench.
    rng = random.Random(5)
    words = ["会议", "讨论", "项目", "进展", "我们", "需要", "市场", "产品", "用户", "数据", "，", "。", "的"]
    words += [f"{chr(0x4E00 + rng.randrange(2000))}{chr(0x4E00 + rng.randrange(2000))}" for _ in range(300)]
    scores = []
    for _ in range(6):
        reference = "".join(rng.choices(words, k=rng.randint(250, 300)))
        hypothesis = "".join(rng.choices(words, k=rng.randint(250, 300)))
        expected = oracle.rouge_zh(hypothesis, reference, None)
        assert rouge_zh_score(hypothesis, reference) == expected
        scores.append(expected)
    assert 0.0 in scores
    assert any(score > 0.0 for score in scores)


def test_deep_pair_is_found_even_when_it_adds_no_word() -> None:
    # "d c" adds nothing after "c d" has put both words in the union, but its backtrack is too deep.
    filler = " ".join(f"w{index}" for index in range(995))
    hypothesis, reference = f"d. {filler} c", "c d. d c"
    assert oracle.rouge(hypothesis, reference, None) == 0.0
    assert rouge_l_f(hypothesis, reference) == 0.0
    shorter = f"d. {' '.join(f'w{index}' for index in range(900))} c"
    assert rouge_l_f(shorter, reference) == oracle.rouge(shorter, reference, None) > 0.0


def test_long_sentences_around_the_recursion_boundary() -> None:
    rng = random.Random(11)
    scores = []
    for _ in range(8):
        # One long sentence each: backtracks of roughly 900 to 1010 moves, on both sides of the boundary.
        words = [f"v{index}" for index in range(rng.randint(300, 2000))]
        reference = " ".join(rng.choices(words, k=rng.randint(490, 540)))
        hypothesis = " ".join(rng.choices(words, k=rng.randint(490, 540)))
        expected = oracle.rouge(hypothesis, reference, None)
        assert rouge_l_f(hypothesis, reference) == expected
        scores.append(expected)
    assert 0.0 in scores
    assert any(score > 0.0 for score in scores)
