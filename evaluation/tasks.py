"""The task registry: which questions validators ask, how they are worded and scored.

LongBench facts (metric per dataset, output caps, the first-line rule) are data here, as in LongBench's
own eval.py. Prompts follow LongBench's structure (instruction, context, question, answer cue) in our own
words, adapted to constructed contexts in which the source document sits among distractor documents.
"""

from dataclasses import dataclass
from typing import Literal

from evaluation.errors import InputError

# LongBench v1: dataset -> metric name (keys of evaluation.metrics.METRICS).
LONGBENCH_METRIC: dict[str, str] = {
    "narrativeqa": "qa_f1",
    "qasper": "qa_f1",
    "multifieldqa_en": "qa_f1",
    "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1",
    "2wikimqa": "qa_f1",
    "musique": "qa_f1",
    "dureader": "rouge_zh",
    "gov_report": "rouge",
    "qmsum": "rouge",
    "multi_news": "rouge",
    "vcsum": "rouge_zh",
    "trec": "classification",
    "triviaqa": "qa_f1",
    "samsum": "rouge",
    "lsht": "classification",
    "passage_retrieval_en": "retrieval",
    "passage_count": "count",
    "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_sim",
    "repobench-p": "code_sim",
}

# LongBench cuts these predictions to their first non-empty line before scoring (few-shot tasks).
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})

Source = Literal["longbench", "synthetic"]


@dataclass(frozen=True)
class TaskSpec:
    """One servable task. `template` has `{context}` and `{input}` placeholders."""

    name: str
    source: Source
    metric: str
    template: str
    max_new_tokens: int
    first_line: bool = False
    # Summarisation asks about one named document of the constructed context (see docs/evaluation.md).
    summarisation: bool = False

    def render(self, context: str, question: str, answer_cue: str = "") -> str:
        """The prompt. `answer_cue` opens the answer after the template's answer cue, as RULER's answer
        prefixes do: a base model continues it with the values instead of inventing a format of its own."""
        prompt = self.template.format(context=context, input=question)
        return f"{prompt} {answer_cue}" if answer_cue else prompt


_DOCS = "Below are several documents, numbered. "

_LONGBENCH_TASKS = [
    TaskSpec(
        "narrativeqa",
        "longbench",
        "qa_f1",
        _DOCS + "One of them is a story (a novel or a film script) that answers the question at the end. "
        "Reply with the shortest correct answer, a single phrase where possible, and no explanation.\n\n"
        "{context}\n\nUsing the story above, reply with the shortest correct answer, a single phrase where "
        "possible, and no explanation.\n\nQuestion: {input}\n\nAnswer:",
        128,
    ),
    TaskSpec(
        "qasper",
        "longbench",
        "qa_f1",
        _DOCS + "One of them is a scientific paper that answers the question at the end. Reply as briefly as "
        "you can, with a single phrase or sentence where possible. "
        'If the paper does not say, reply "unanswerable". '
        'For a yes/no question reply "yes", "no" or "unanswerable". No explanation.\n\n{context}\n\n'
        "Using the paper above, answer the question below in the same way: as briefly as possible, "
        '"unanswerable" if the paper does not say, "yes"/"no" for yes/no questions, no explanation.\n\n'
        "Question: {input}\n\nAnswer:",
        128,
    ),
    TaskSpec(
        "multifieldqa_en",
        "longbench",
        "qa_f1",
        _DOCS + "Read them and answer the question at the end.\n\n{context}\n\n"
        "Using the documents above, answer the question below. "
        "Reply with the answer only, no other words.\n\n"
        "Question: {input}\nAnswer:",
        64,
    ),
    TaskSpec(
        "gov_report",
        "longbench",
        "rouge",
        _DOCS + "One of them is a report by a government agency; the request at the end names it.\n\n"
        "{context}\n\n{input}\n\nSummary:",
        512,
        summarisation=True,
    ),
    TaskSpec(
        "qmsum",
        "longbench",
        "rouge",
        _DOCS + "One of them is a meeting transcript; the query at the end names it. Answer the query "
        "about that transcript in one or more sentences.\n\n{context}\n\n"
        "Answer the query below about the named transcript in one or more sentences.\n\n{input}\nAnswer:",
        512,
        summarisation=True,
    ),
    TaskSpec(
        "multi_news",
        "longbench",
        "rouge",
        _DOCS + "Some of them are news articles on one story; the request at the end names them.\n\n"
        "{context}\n\n{input}\n\nSummary:",
        512,
        summarisation=True,
    ),
    TaskSpec(
        "trec",
        "longbench",
        "classification",
        _DOCS + "One of them lists example questions, each followed by its type. Decide the type of the "
        "question at the end in the same way.\n\n{context}\n{input}",
        64,
        first_line=True,
    ),
    TaskSpec(
        "triviaqa",
        "longbench",
        "qa_f1",
        _DOCS + "One of them holds example passages, each followed by a question and its answer. Answer the "
        "question at the end from the passage it follows, in the same way.\n\n{context}\n\n{input}",
        32,
        first_line=True,
    ),
]

_SYNTHETIC_TEMPLATE = (
    "Below is a long text with some special facts hidden in it. Read all of it, then answer the question "
    "at the end. Reply with the requested values only.\n\n{context}\n\nQuestion: {input}\nAnswer:"
)

# RULER-style tasks with fresh random keys and values: nothing to look up, exact answers.
_SYNTHETIC_TASKS = [
    TaskSpec("niah_single", "synthetic", "string_match_all", _SYNTHETIC_TEMPLATE, 32),
    TaskSpec("niah_multikey", "synthetic", "string_match_all", _SYNTHETIC_TEMPLATE, 32),
    TaskSpec("niah_multivalue", "synthetic", "string_match_all", _SYNTHETIC_TEMPLATE, 64),
    TaskSpec("variable_tracking", "synthetic", "string_match_all", _SYNTHETIC_TEMPLATE, 64),
    TaskSpec("aggregation", "synthetic", "string_match_all", _SYNTHETIC_TEMPLATE, 64),
]

TASKS: dict[str, TaskSpec] = {t.name: t for t in (*_LONGBENCH_TASKS, *_SYNTHETIC_TASKS)}
SYNTHETIC_TASKS = tuple(t.name for t in _SYNTHETIC_TASKS)
LONGBENCH_TASKS = tuple(t.name for t in _LONGBENCH_TASKS)
DEFAULT_TASKS = SYNTHETIC_TASKS  # offline default: needs no data set


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"task {name!r}", f"unknown task; choose from {', '.join(TASKS)}") from None


def metric_for_dataset(dataset: str) -> str:
    """Metric name of a LongBench dataset or a synthetic task, as used when scoring predictions."""
    if dataset in LONGBENCH_METRIC:
        return LONGBENCH_METRIC[dataset]
    if dataset in TASKS:
        return TASKS[dataset].metric
    known = ", ".join([*LONGBENCH_METRIC, *SYNTHETIC_TASKS])
    raise InputError(f"dataset {dataset!r}", f"unknown dataset; known datasets: {known}")


@dataclass(frozen=True)
class EvalItem:
    """One prompt at one bucket. `answers` and `all_classes` never leave the validator."""

    task: str
    bucket: str
    item_id: str
    prompt: str
    prompt_tokens: int  # the whole rendered prompt, counted with the tokenizer it was built for
    answers: tuple[str, ...]
    all_classes: tuple[str, ...] | None = None
    gold_depth: float | None = None  # where the gold document or needle sits, 0.0 (start) to 1.0 (end)
    # Entities of the public LongBench record that were substituted away and occur nowhere in `prompt`:
    # an answer naming one came from memory, not from the context (see evaluation.grading).
    replaced_entities: tuple[str, ...] = ()
