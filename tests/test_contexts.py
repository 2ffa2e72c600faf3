"""Bucket-filling prompts: the token budget invariant, determinism, and LongBench document construction."""

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.buckets import BUCKETS
from evaluation.contexts import FILL_TOLERANCE, build_item, build_items, count_joined, count_long
from evaluation.demo_data import write_folder
from evaluation.errors import InputError
from evaluation.longbench import LongBenchRecord, load_records
from evaluation.tasks import LONGBENCH_TASKS, SYNTHETIC_TASKS, TASKS, EvalItem
from evaluation.tokenizer import Tokenizer, load_tokenizer

Records = Mapping[str, Sequence[LongBenchRecord]]
DOCUMENT = re.compile(r"(?:^|\n\n)Document (\d+):\n")


class WordTokenizer:
    """A stand-in with very long tokens: every word counts 16, so a 2M-token prompt is under 1 MB."""

    name = "words"
    per_word = 16

    def count(self, text: str) -> int:
        return self.per_word * len(text.split())

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        return [self.count(text) for text in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        words = list(re.finditer(r"\S+", text))
        keep = max_tokens // self.per_word
        return text if keep >= len(words) else text[: words[keep - 1].end()] if keep else ""


@pytest.fixture(scope="session")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUASAR_CACHE", str(tmp_path_factory.getbasetemp() / "quasar-cache"))
        return load_tokenizer(None)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Records:
    # About 200k tokens of documents: enough distractors for the 124k bucket.
    return load_records(["qasper"], write_folder(tmp_path_factory.mktemp("longbench"), 12, words=1500))


def _assert_fills(item: EvalItem, tokenizer: Tokenizer) -> None:
    budget = BUCKETS[item.bucket]
    used = item.prompt_tokens + TASKS[item.task].max_new_tokens
    assert item.prompt_tokens == tokenizer.count(item.prompt)
    assert math.ceil(budget * (1 - FILL_TOLERANCE)) <= used <= budget


def _documents(item: EvalItem) -> dict[int, str]:
    """The numbered documents of an item's context (the prompt less its instructions and question)."""
    head, tail = TASKS[item.task].template.split("{context}")
    context = item.prompt[len(head) : item.prompt.rindex(tail.split("{input}")[0])]
    parts = DOCUMENT.split(context)
    return {int(number): text for number, text in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.mark.parametrize("bucket", ["32k", "124k"])
@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_synthetic_prompts_fill_the_bucket(tok: Tokenizer, task: str, bucket: str) -> None:
    _assert_fills(build_item(task, bucket, 0, tokenizer=tok, seed=11), tok)


@pytest.mark.parametrize("task", LONGBENCH_TASKS)
def test_longbench_prompts_fill_the_bucket(tok: Tokenizer, records: Records, task: str) -> None:
    for index in range(2):
        _assert_fills(build_item(task, "32k", index, tokenizer=tok, seed=5, records=records), tok)
    _assert_fills(build_item(task, "124k", 0, tokenizer=tok, seed=5, records=records), tok)


@pytest.mark.parametrize("bucket", list(BUCKETS))
def test_every_bucket_fills_with_a_coarse_tokenizer(records: Records, bucket: str) -> None:
    words = WordTokenizer()
    for task in ("niah_multivalue", "aggregation", "gov_report"):
        _assert_fills(build_item(task, bucket, 0, tokenizer=words, seed=1, records=records), words)


def test_builds_are_deterministic(tok: Tokenizer, records: Records) -> None:
    for task in ("niah_single", "aggregation", "narrativeqa", "qmsum"):
        first = build_item(task, "32k", 1, tokenizer=tok, seed=3, records=records)
        assert build_item(task, "32k", 1, tokenizer=tok, seed=3, records=records) == first
        assert build_item(task, "32k", 1, tokenizer=tok, seed=4, records=records).prompt != first.prompt
        assert build_item(task, "32k", 2, tokenizer=tok, seed=3, records=records).prompt != first.prompt


def test_build_items_yields_samples_per_task_and_bucket(tok: Tokenizer, records: Records) -> None:
    items = list(build_items(["niah_single", "trec"], ["32k"], 2, tokenizer=tok, seed=0, records=records))
    assert [(i.task, i.bucket) for i in items] == [("niah_single", "32k")] * 2 + [("trec", "32k")] * 2
    assert len({i.item_id for i in items}) == 4
    assert items[2] == build_item("trec", "32k", 0, tokenizer=tok, seed=0, records=records)


@pytest.mark.parametrize("task", ["narrativeqa", "multifieldqa_en", "triviaqa", "qasper"])
def test_exactly_one_document_holds_the_answer(tok: Tokenizer, records: Records, task: str) -> None:
    golds = set()
    for index in range(6):
        item = build_item(task, "32k", index, tokenizer=tok, seed=2, records=records)
        documents = _documents(item)
        assert sorted(documents) == list(range(1, len(documents) + 1))
        # The answer as the reader must give it: the perturbed one, or its words after a verification phrase.
        holders = [n for n, text in documents.items() if any(a.lower() in text.lower() for a in item.answers)]
        if task == "triviaqa":
            assert holders == []  # its answer is in the question's own passage, not in a document
            continue
        if not holders:  # verification phrase: the document holds the phrase, not "phrase + answer"
            phrase = item.answers[0].rsplit(" ", 1)[0]
            holders = [n for n, text in documents.items() if phrase in text]
        assert len(holders) == 1
        golds.add(holders[0] / len(documents))
    if task != "triviaqa":
        assert len(golds) > 2  # the gold document moves


def test_no_distractor_contains_a_specific_answer(tok: Tokenizer, records: Records) -> None:
    for index in range(4):
        item = build_item("multifieldqa_en", "124k", index, tokenizer=tok, seed=9, records=records)
        answer = item.answers[0].lower()
        holders = [n for n, text in _documents(item).items() if answer in text.lower()]
        assert len(holders) == 1


@pytest.mark.parametrize("task", ["gov_report", "multi_news", "qmsum"])
def test_summarisation_names_the_gold_document(tok: Tokenizer, records: Records, task: str) -> None:
    named = set()
    for index in range(4):
        item = build_item(task, "32k", index, tokenizer=tok, seed=1, records=records)
        question = item.prompt[item.prompt.rindex("Document ") :]
        number = int(re.match(r"Document (\d+)", question).group(1))  # type: ignore[union-attr]
        documents = _documents(item)
        # The summary's longest run of names (perturbed like the document) is in the named document only.
        names = max(re.findall(r"[A-Z][a-z]+(?: [A-Z][a-z]+)+", item.answers[0]), key=len)
        assert [n for n, text in documents.items() if names in text] == [number]
        named.add(number)
    assert len(named) > 1


def test_duplicate_contexts_never_appear_twice(tok: Tokenizer, records: Records) -> None:
    item = build_item("qasper", "124k", 0, tokenizer=tok, seed=0, records=records)
    texts = list(_documents(item).values())
    assert len(texts) == len(set(texts))


def test_records_too_long_for_the_bucket_are_skipped(tok: Tokenizer, records: Records) -> None:
    long = records["narrativeqa"][0]
    huge = LongBenchRecord(**{**long.__dict__, "context": long.context * 40, "id": "huge"})
    mixed = {**records, "narrativeqa": (huge, *records["narrativeqa"])}
    for index in range(3):
        item = build_item("narrativeqa", "32k", index, tokenizer=tok, seed=0, records=mixed)
        _assert_fills(item, tok)
    only_huge = {**records, "narrativeqa": (huge,)}
    with pytest.raises(InputError, match=r"'narrativeqa' at bucket '32k'.*0 of 1 records fit"):
        build_item("narrativeqa", "32k", 0, tokenizer=tok, seed=0, records=only_huge)


def test_too_little_distractor_text_is_an_error_with_the_shortfall(tok: Tokenizer, records: Records) -> None:
    small = {"qasper": records["qasper"][:3]}
    with pytest.raises(InputError, match=r"'qasper' at bucket '124k'.*not enough distractor text.*short"):
        build_item("qasper", "124k", 0, tokenizer=tok, seed=0, records=small)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda t: build_item("nope", "32k", 0, tokenizer=t, seed=0), "task 'nope'"),
        (lambda t: build_item("niah_single", "3k", 0, tokenizer=t, seed=0), "bucket '3k'"),
        (
            lambda t: build_item("trec", "32k", 0, tokenizer=t, seed=0),
            r"'trec' at bucket '32k'.*LongBench data",
        ),
        (
            lambda t: list(build_items(["niah_single"], ["32k"], 0, tokenizer=t, seed=0)),
            r"niah_single.*32k.*>= 1",
        ),
        (lambda t: list(build_items(["niah_single"], ["9m"], 1, tokenizer=t, seed=0)), "bucket '9m'"),
    ],
)
def test_bad_input_is_named(tok: Tokenizer, call: object, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        call(tok)  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(list("ab cd\n\n  .,!éö東京🙂0123456789-'")), min_size=0, max_size=3000
    ),
    chunk=st.integers(20, 600),
)
def test_chunked_counts_equal_whole_counts(tok: Tokenizer, text: str, chunk: int) -> None:
    assert count_long(tok, text, chunk_chars=chunk) == tok.count(text)


@settings(max_examples=40, deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.text(alphabet=st.sampled_from(list("ab cd\n .,é東0123-")), max_size=1500), st.booleans()
        ),
        max_size=8,
    )
)
def test_joined_counts_equal_whole_counts(tok: Tokenizer, parts: list[tuple[str, bool]]) -> None:
    counted = [(text, tok.count(text) if known else None) for text, known in parts]
    assert count_joined(tok, counted) == tok.count("".join(text for text, _ in parts))


def test_chunked_counts_equal_whole_counts_on_real_prompts(tok: Tokenizer, records: Records) -> None:
    item = build_item("triviaqa", "32k", 0, tokenizer=tok, seed=0, records=records)
    for chunk in (997, 4096, 20_000):
        assert count_long(tok, item.prompt, chunk_chars=chunk) == item.prompt_tokens


def test_fixture_records_dir_is_reusable(tmp_path: Path) -> None:
    assert load_records(["trec"], write_folder(tmp_path, 1))["trec"]
