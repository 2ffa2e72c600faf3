"""Anti-memorisation: consistent entity substitution, and a verification phrase where that is not enough."""

import random
import re
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.demo_data import make_records
from evaluation.metrics import score_prediction
from evaluation.perturb import perturb, substitute_entities
from evaluation.tasks import LONGBENCH_METRIC

TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
STORY = (
    "Corwin Aldt left Brennag in 1987 with 42 horses. Corwin later wrote to Aldt's sister. "
    "In Brennag the winter was long, and Corwin counted 42 days of snow. The end."
)


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def test_every_occurrence_is_replaced_and_answers_the_same_way() -> None:
    changed = substitute_entities(
        STORY, "Where did Corwin Aldt go in 1987?", ["Brennag", "42 horses"], random.Random(1)
    )
    assert set(changed.substitutions) == {"Brennag", "42"}
    for original, surrogate in changed.substitutions.items():
        assert original not in _tokens(changed.context)
        assert _tokens(changed.context).count(surrogate) == _tokens(STORY).count(original)
        assert surrogate.lower() not in {t.lower() for t in _tokens(STORY)}
    assert changed.answers == (changed.substitutions["Brennag"], f"{changed.substitutions['42']} horses")
    # Names in the question that are not in the answers stay as they are.
    assert changed.input == "Where did Corwin Aldt go in 1987?"


def test_common_words_and_short_numbers_are_left_alone() -> None:
    text = "The Red house had 3 doors; the red paint was old. The end."
    changed = substitute_entities(text, "What colour?", ["Red", "3"], random.Random(0))
    assert changed.substitutions == {}
    assert changed.context == text


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), picks=st.lists(st.integers(0, 40), min_size=1, max_size=4))
def test_substitution_is_a_consistent_renaming(seed: int, picks: list[int]) -> None:
    record = make_records("narrativeqa", 1, seed=seed, words=120)[0]
    context, question = str(record["context"]), str(record["input"])
    words = _tokens(context)
    answers = [" ".join(words[p % len(words) : p % len(words) + 2]) for p in picks]
    changed = substitute_entities(context, question, answers, random.Random(seed))
    inverse = {v: k for k, v in changed.substitutions.items()}
    assert len(inverse) == len(changed.substitutions)  # distinct surrogates: a renaming, not a merge
    for before, after in [
        (context, changed.context),
        (question, changed.input),
        *zip(answers, changed.answers, strict=True),
    ]:
        assert re.sub(TOKEN, lambda m: inverse.get(m.group(0), m.group(0)), after) == before


def test_classification_without_a_class_list_is_left_as_it_is() -> None:
    record = make_records("trec", 1)[0]
    answers = [str(answer) for answer in cast(list[object], record["answers"])]
    changed = perturb(
        str(record["context"]), str(record["input"]), answers, "classification", random.Random(0)
    )
    assert changed.answers == tuple(answers)
    assert changed.context == record["context"]


def test_an_answer_without_entities_gets_a_verification_phrase() -> None:
    changed = perturb(STORY, "Was it cold?", ["yes"], "qa_f1", random.Random(3))
    assert changed.phrase is not None
    assert changed.context.count(changed.phrase) == 1
    assert changed.answers == (f"{changed.phrase} yes",)
    assert "verification phrase" in changed.input
    # Woven in at a sentence start: the story's sentences are all still there.
    assert (
        changed.context.replace(f'The verification phrase of this document is "{changed.phrase}". ', "")
        == STORY
    )


def test_the_public_answer_scores_at_most_half_on_perturbed_qa_items() -> None:
    for dataset in ("narrativeqa", "qasper", "multifieldqa_en", "triviaqa"):
        for index, raw in enumerate(make_records(dataset, 12, words=150)):
            answers = [str(a) for a in cast(list[object], raw["answers"])]
            changed = perturb(
                str(raw["context"]),
                str(raw["input"]),
                answers,
                LONGBENCH_METRIC[dataset],
                random.Random(index),
            )
            memoriser = score_prediction(dataset, answers[0], list(changed.answers), None)
            reader = score_prediction(dataset, changed.answers[0], list(changed.answers), None)
            assert memoriser <= 0.5 < reader, (dataset, answers, changed.answers)


def test_class_labels_are_renamed_in_examples_classes_and_answers() -> None:
    record = make_records("trec", 1)[0]
    classes = [str(c) for c in cast(list[object], record["all_classes"])]
    answers = [str(a) for a in cast(list[object], record["answers"])]
    context = str(record["context"])
    changed = perturb(context, str(record["input"]), answers, "classification", random.Random(0), classes)
    assert changed.classes is not None
    assert len(set(changed.classes)) == len(classes)
    # No new label contains another: the classification metric matches substrings.
    assert not any(a != b and a in b for a in changed.classes for b in changed.classes)
    shown = {line.removeprefix("Type: ") for line in context.splitlines() if line.startswith("Type: ")}
    for label in shown:
        assert changed.substitutions[label] in changed.context
        assert f"Type: {label}\n" not in changed.context + "\n"
    # The public label scores nothing; the renamed one scores in full.
    assert score_prediction("trec", answers[0], changed.answers, changed.classes) == 0.0
    assert score_prediction("trec", changed.answers[0], changed.answers, changed.classes) == 1.0
