"""LongBench-shaped records generated offline, for the eight served datasets: no download needed.

Where real LongBench data cannot be had (mock mode, tests, benchmarks on machines without the Hub), these
stand in for it. They are not LongBench: scores on them say nothing about a model's LongBench results.

Records follow LongBench v1's schema exactly (input, context, answers, length, dataset, language,
all_classes, _id) and its layouts: stories, papers, reports, meeting transcripts, numbered news passages,
few-shot trec and triviaqa lists. Names, places and numbers are made up per record (pseudo-words, so they
rarely repeat across records) and QA answers occur in the context, so perturbation and distractor checks
have something to act on. The benchmarks use them to build a pool big enough for 2M-token contexts.
"""

import json
import random
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from evaluation.filler import prose_paragraphs
from evaluation.tasks import LONGBENCH_TASKS

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]

TREC_CLASSES = (
    "Abbreviation",
    "Expression abbreviated",
    "Animal",
    "Organ of body",
    "Color",
    "Invention, book and other creative piece",
    "Currency name",
    "Disease and medicine",
    "Event",
    "Food",
    "Musical instrument",
    "Language",
    "Letter like a-z",
    "Other entity",
    "Plant",
    "Product",
    "Religion",
    "Sport",
    "Element and substance",
    "Symbols and sign",
    "Techniques and method",
    "Equivalent term",
    "Vehicle",
    "Word with a special property",
    "Definition of something",
    "Description of something",
    "Manner of an action",
    "Reason",
    "Group or organization of persons",
    "Individual",
    "Title of a person",
    "Description of a person",
    "City",
    "Country",
    "Mountain",
    "Other location",
    "State",
    "Postcode or other code",
    "Number of something",
    "Date",
    "Distance, linear measure",
    "Price",
    "Order, rank",
    "Other number",
    "Lasting time of somethin",
    "Percent, fraction",
    "Speed",
    "Temperature",
    "Size, area and volume",
    "Weight",
)


class _Writer:
    """Made-up entities and sentences for one record."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._prose = prose_paragraphs(str(rng.getrandbits(32)))

    def name(self, syllables: int = 3) -> str:
        return "".join(self.rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()

    def person(self) -> str:
        return f"{self.name(2)} {self.name(3)}"

    def paragraph(self) -> str:
        return next(self._prose).strip()

    def number(self) -> str:
        return str(self.rng.randrange(12, 9999))

    def body(self, words: int, facts: Sequence[str], extras: Sequence[str]) -> str:
        """Prose of about `words` words, with `facts` at random places and `extras` sentences mixed in."""
        sentences: list[str] = []
        count = 0
        while count < words:
            sentence = self.rng.choice(extras) if self.rng.random() < 0.3 else self.paragraph()
            sentences.append(sentence)
            count += len(sentence.split())
        for fact in facts:
            sentences.insert(self.rng.randrange(len(sentences) + 1), fact)
        return " ".join(sentences)


def _record(
    dataset: str,
    index: int,
    context: str,
    question: str,
    answers: list[str],
    classes: Sequence[str] | None = None,
) -> dict[str, object]:
    return {
        "input": question,
        "context": context,
        "answers": answers,
        "length": len(context.split()),
        "dataset": dataset,
        "language": "en",
        "all_classes": list(classes) if classes is not None else None,
        "_id": f"fixture-{dataset}-{index:04d}",
    }


def _narrativeqa(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    hero, place, event = w.person(), w.name(), w.name(2)
    friend = w.person()
    fact = f"After the siege of {event}, {hero} travelled to {place} with {friend}."
    extra = [
        f"{hero} remembered {friend} and the years before {event}.",
        f"In {w.number()} the road to {place} closed.",
    ]
    text = w.body(words, [fact], extra)
    return text, f"Where did {hero} travel after the siege of {event}?", [place, f"to {place}"]


def _qasper(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    model, data = w.name(3).upper()[:6], w.name(3)
    score = f"{w.rng.randrange(50, 99)}.{w.rng.randrange(10)}"
    fact = f"On the {data} benchmark, {model} reaches an accuracy of {score} points."
    extra = [f"We train {model} for {w.number()} steps.", f"The {data} corpus has {w.number()} documents."]
    text = "Abstract. " + w.body(words, [fact], extra)
    kind = w.rng.randrange(3)
    if kind == 0:
        return text, f"What accuracy does {model} reach on {data}?", [score, f"{score} points"]
    if kind == 1:
        return text, f"Do they evaluate {model} on {data}?", ["yes"]
    return text, f"Do they release the code of {model}?", ["unanswerable"]


def _multifieldqa(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    org, founder, year = f"{w.name()} Institute", w.person(), str(w.rng.randrange(1850, 2020))
    fact = f"The {org} was founded in {year} by {founder}."
    extra = [f"The {org} employs {w.number()} people.", f"{founder} wrote {w.number()} letters."]
    text = w.body(words, [fact], extra)
    if w.rng.random() < 0.5:
        return text, f"Who founded the {org}?", [founder]
    return text, f"In which year was the {org} founded?", [year]


def _gov_report(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    agency, program, amount = f"{w.name(2).upper()}", f"{w.name()} Program", w.number()
    facts = [
        f"The {agency} reviewed the {program}, which spent {amount} million dollars "
        f"in fiscal year {w.number()}.",
        f"The {agency} recommends that the {program} improve its oversight.",
    ]
    text = w.body(words, facts, [f"Officials at the {agency} described {w.number()} cases."])
    summary = (
        f"The {agency} reviewed the {program}, which spent {amount} million dollars. The review found weak "
        f"oversight of grants and late reporting. The {agency} recommends that the {program} improve its "
        "oversight and report on progress each year."
    )
    return text, "", [summary]


def _qmsum(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    speakers = [w.person() for _ in range(3)]
    topic = f"{w.name()} design"
    lines: list[str] = []
    while sum(len(line.split()) for line in lines) < words:
        speaker = w.rng.choice(speakers)
        lines.append(f"{speaker}: {w.paragraph()}")
    lead = speakers[0]
    decision = f"{lead}: I think the {topic} should use {w.number()} units and we should test it next week."
    lines.insert(w.rng.randrange(len(lines) + 1), decision)
    answer = f"{lead} suggested that the {topic} should use that many units and be tested next week."
    return "\n".join(lines), f"What did {lead} say about the {topic}?", [answer]


def _multi_news(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    city, mayor, count = w.name(), w.person(), w.number()
    passages = [
        w.body(words // 3, [f"Mayor {mayor} of {city} said {count} homes were flooded."], [f"{city} news."])
        for _ in range(3)
    ]
    context = "\n".join(f"Passage {i}:\n{p}" for i, p in enumerate(passages, start=1))
    summary = (
        f"– Floods hit {city} this week. Mayor {mayor} said {count} homes were flooded and help is coming."
    )
    return context, "", [summary]


def _trec(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    lines: list[str] = []
    while sum(len(line.split()) for line in lines) < words:
        label = w.rng.choice(TREC_CLASSES)
        lines.append(f"Question: What is the {w.name()} of {w.name()} ?\nType: {label}")
    question = f"What city is the {w.name()} tower in ?"
    return "\n".join(lines), question, ["City"]


def _triviaqa(w: _Writer, words: int) -> tuple[str, str, list[str]]:
    shots: list[str] = []
    while sum(len(shot.split()) for shot in shots) < words:
        who, what = w.person(), w.name()
        passage = w.body(60, [f"{who} discovered {what}."], [f"{what} is known."])
        shots.append(f"Passage: {passage}\nQuestion: Who discovered {what}?\nAnswer: {who}")
    who, what = w.person(), w.name()
    passage = w.body(80, [f"The {what} was first described by {who}."], [f"{what} grows slowly."])
    question = f"Passage: {passage}\nQuestion: Who first described the {what}?\nAnswer:"
    return "\n\n".join(shots), question, [who, who.split()[1]]


_MAKERS: dict[str, Callable[[_Writer, int], tuple[str, str, list[str]]]] = {
    "narrativeqa": _narrativeqa,
    "qasper": _qasper,
    "multifieldqa_en": _multifieldqa,
    "gov_report": _gov_report,
    "qmsum": _qmsum,
    "multi_news": _multi_news,
    "trec": _trec,
    "triviaqa": _triviaqa,
}


def make_records(dataset: str, count: int, *, seed: int = 0, words: int = 400) -> list[dict[str, object]]:
    """`count` raw records (decoded JSON) of `dataset`, each context about `words` words long."""
    rng = random.Random(f"fixture|{dataset}|{seed}")
    records = []
    for index in range(count):
        context, question, answers = _MAKERS[dataset](_Writer(random.Random(rng.getrandbits(64))), words)
        classes = TREC_CLASSES if dataset == "trec" else None
        records.append(_record(dataset, index, context, question, answers, classes))
    return records


def _jsonl(records: Sequence[dict[str, object]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_folder(
    folder: Path, count: int, *, seed: int = 0, words: int = 400, datasets: Sequence[str] = LONGBENCH_TASKS
) -> Path:
    """A folder of `<dataset>.jsonl` files, as LongBench's data.zip unpacks."""
    folder.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        (folder / f"{dataset}.jsonl").write_text(_jsonl(make_records(dataset, count, seed=seed, words=words)))
    return folder


def write_zip(
    path: Path, count: int, *, seed: int = 0, words: int = 400, datasets: Sequence[str] = LONGBENCH_TASKS
) -> Path:
    """A data.zip laid out as LongBench's (members `data/<dataset>.jsonl`)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for dataset in datasets:
            archive.writestr(
                f"data/{dataset}.jsonl", _jsonl(make_records(dataset, count, seed=seed, words=words))
            )
    return path
