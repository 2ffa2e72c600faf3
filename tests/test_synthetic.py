"""Synthetic RULER-style items: fresh needles present exactly where recorded, answers in the context."""

import random
import re
from collections import Counter
from itertools import islice

import pytest

from evaluation.contexts import build_item
from evaluation.filler import PseudoWords, prose_paragraphs
from evaluation.synthetic import make_spec
from evaluation.tasks import SYNTHETIC_TASKS, TASKS, EvalItem
from evaluation.tokenizer import Tokenizer, load_tokenizer

PREFIX, SUFFIX = TASKS["niah_single"].template.split("{context}")
SUFFIX = SUFFIX.split("{input}")[0]


@pytest.fixture(scope="session")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    # The same cache folder as the other test files: the built-in tokenizer is built once per session.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUASAR_CACHE", str(tmp_path_factory.getbasetemp() / "quasar-cache"))
        return load_tokenizer(None)


def _context(item: EvalItem) -> str:
    assert item.prompt.startswith(PREFIX)
    return item.prompt[len(PREFIX) : item.prompt.rindex(SUFFIX)]


@pytest.fixture(scope="module")
def items(tok: Tokenizer) -> dict[tuple[str, int], EvalItem]:
    return {
        (task, i): build_item(task, "32k", i, tokenizer=tok, seed=7)
        for task in SYNTHETIC_TASKS
        for i in range(3)
    }


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_every_answer_is_in_the_context(items: dict[tuple[str, int], EvalItem], task: str) -> None:
    for i in range(3):
        item = items[task, i]
        context = _context(item)
        assert item.answers
        assert all(answer in context for answer in item.answers)


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_the_prompt_ends_by_opening_an_answer_that_gives_nothing_away(
    items: dict[tuple[str, int], EvalItem], task: str
) -> None:
    for i in range(3):
        item = items[task, i]
        question = item.prompt[item.prompt.rindex("Question: ") :]
        asked, cue = question.removeprefix("Question: ").split("\nAnswer: ")
        # The cue repeats what the question asks about (a key, a value), never what it wants back.
        assert cue[0].isupper()
        assert cue.endswith((" is", " are", ":"))
        assert set(re.findall(r"[0-9a-f-]{36}|\d+", cue)) <= set(re.findall(r"[0-9a-f-]{36}|\d+", asked))
        assert not [answer for answer in item.answers if answer in cue]


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_multivalue"])
def test_the_asked_key_and_its_values_occur_once_each(
    items: dict[tuple[str, int], EvalItem], task: str
) -> None:
    for i in range(3):
        item = items[task, i]
        context = _context(item)
        key = re.search(r"numbers? for (\S+) mentioned", item.prompt[-300:])
        assert key is not None
        assert context.count(key.group(1)) == len(item.answers)
        assert all(context.count(value) == 1 for value in item.answers)


def test_the_needle_sits_at_the_recorded_depth(
    items: dict[tuple[str, int], EvalItem], tok: Tokenizer
) -> None:
    depths = []
    for task in ("niah_single", "niah_multikey"):
        for i in range(3):
            item = items[task, i]
            assert item.gold_depth is not None
            context = _context(item)
            position = context.index(f" is {item.answers[0]}.")
            position = context.rindex("The special magic number", 0, position)
            measured = tok.count(context[:position]) / tok.count(context)
            assert abs(measured - item.gold_depth) < 0.01
            depths.append(item.gold_depth)
    assert len({round(d, 2) for d in depths}) > 3  # seeded, not fixed


def test_variable_chains_appear_in_assignment_order(items: dict[tuple[str, int], EvalItem]) -> None:
    for i in range(3):
        item = items["variable_tracking", i]
        context = _context(item)
        first, *rest = item.answers
        value = re.search(rf"VAR {first} = (\d+)\.", context)
        assert value is not None
        assert f"the value {value.group(1)}," in item.prompt[-300:]
        positions = [context.index(f"VAR {first} =")] + [
            context.index(f"VAR {b} = VAR {a}.") for a, b in zip(item.answers, rest, strict=False)
        ]
        assert positions == sorted(positions)


def test_aggregation_common_words_dominate(items: dict[tuple[str, int], EvalItem]) -> None:
    for i in range(3):
        item = items["aggregation", i]
        counts = Counter(_context(item).split())
        common = [counts[word] for word in item.answers]
        others = [n for word, n in counts.items() if word not in item.answers]
        assert item.gold_depth is None
        assert min(common) >= 30
        assert max(others) <= 4  # three copies, plus a word cut in two by truncation at the end


def test_specs_are_seeded_and_fresh() -> None:
    for task in SYNTHETIC_TASKS:
        first = make_spec(task, random.Random(1))
        again = make_spec(task, random.Random(1))
        other = make_spec(task, random.Random(2))
        assert (first.question, first.answers, first.needles) == (
            again.question,
            again.answers,
            again.needles,
        )
        assert first.answers != other.answers


def test_filler_is_deterministic_and_holds_no_digits() -> None:
    head = list(islice(prose_paragraphs("a"), 200))
    assert head == list(islice(prose_paragraphs("a"), 200))
    assert head != list(islice(prose_paragraphs("b"), 200))
    text = "".join(head)
    assert not re.search(r"\d|-|VAR|magic", text)
    assert all(p.endswith("\n") and p.count("\n") == 1 for p in head)


def test_pseudo_words_are_distinct() -> None:
    words = PseudoWords("x", syllables=2)
    every = [words.word(i) for i in range(words.capacity)]
    assert len(set(every)) == words.capacity
    with pytest.raises(IndexError):
        words.word(words.capacity)
