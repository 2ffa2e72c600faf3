"""The memorisation guard: answers that name entities absent from the prompt score 0."""

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from evaluation.contexts import build_item
from evaluation.demo_data import write_folder
from evaluation.grading import grade
from evaluation.longbench import load_records
from evaluation.metrics import score_prediction
from evaluation.perturb import mentioned_entities
from evaluation.tasks import EvalItem
from evaluation.tokenizer import load_tokenizer

TOKENS = ["Xab", "Xabc", "19", "190", "1,09", "cab"]


@given(
    st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from([" ", "; ", "! ", "\n"]))),
    st.lists(st.sampled_from(TOKENS), unique=True),
)
def test_mentioned_entities_matches_whole_tokens_only(
    pieces: list[tuple[str, str]], entities: list[str]
) -> None:
    # 'Xab' is not in 'Xabc', '19' not in '190' or '1,09': only whole tokens count.
    text = "".join(token + separator for token, separator in pieces)
    present = {token for token, _ in pieces}
    assert mentioned_entities(text, entities) == [e for e in entities if e in present]


def test_grade_zeroes_an_answer_naming_a_replaced_entity() -> None:
    item = EvalItem("narrativeqa", "32k", "x", "prompt", 1, ("Velmora Tosk",), None, None, ("Holloway",))
    assert grade(item, "Velmora Tosk") == 1.0
    assert grade(item, "Holloway") == 0.0
    assert grade(item, "Velmora Tosk, not Holloway") == 0.0
    assert grade(item, "Velmora Tosk") == score_prediction("narrativeqa", "Velmora Tosk", item.answers, None)


def test_constructed_items_guard_every_replaced_entity(tmp_path: Path) -> None:
    records = load_records(["narrativeqa", "gov_report"], write_folder(tmp_path, 6, words=900))
    tokenizer = load_tokenizer(None)
    for task in ("narrativeqa", "gov_report"):
        for index in range(2):
            item = build_item(task, "32k", index, tokenizer=tokenizer, seed=5, records=records)
            assert item.replaced_entities, "generated records always carry names or numbers in their answers"
            assert mentioned_entities(item.prompt, item.replaced_entities) == []
            reader = item.answers[0]
            assert grade(item, reader) == score_prediction(task, reader, item.answers, item.all_classes)
            assert grade(item, reader) > 0.99
            for entity in item.replaced_entities:
                assert grade(item, f"{reader} {entity}") == 0.0
