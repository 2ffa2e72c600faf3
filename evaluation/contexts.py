"""Prompts that fill a context-length bucket, measured in the miner model's tokens.

Invariant: for every item, `prompt_tokens + max_new_tokens <= budget` and `>= (1 - FILL_TOLERANCE) * budget`,
where `prompt_tokens` is the exact count of the rendered prompt. The prompt is the same, byte for byte, for
the same (task, bucket, index, seed) and tokenizer.

How a context is sized: filler units (generated paragraphs, or distractor documents) are tokenised once
each, in parallel batches; enough of them are taken to reach a token target, the last one truncated with
`Tokenizer.truncate`; needles or the gold document go in at seeded depths. Sums of per-unit counts are
estimates (a tokenizer may merge across a seam), so the rendered prompt is then measured exactly and, when
it misses the window, the target is corrected and the prompt rebuilt (rarely more than once).

Measuring a multi-megabyte prompt as one string is slow and memory-hungry with the Rust backend (an 8 MB
string took 4.4 s and 800 MB); `count_long` counts it in chunks instead, in parallel, and corrects each
seam between chunks exactly by counting a window of text on both sides of it.

LongBench items: the record's (perturbed) context is one numbered document among distractor documents
taken from other records, same dataset first, then the other datasets; no distractor contains an answer.
Summarisation questions name the gold document ("Write a one-page summary of Document 7.").
"""

import bisect
import hashlib
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice, pairwise

from evaluation.buckets import bucket_tokens
from evaluation.errors import InputError
from evaluation.longbench import LongBenchRecord
from evaluation.perturb import mentioned_entities, perturb
from evaluation.synthetic import make_spec
from evaluation.tasks import EvalItem, TaskSpec, get_task
from evaluation.tokenizer import Tokenizer

# The prompt plus the answer allowance fills the bucket to within this share of its budget.
FILL_TOLERANCE = 0.01
# The first build aims this share of the budget below the limit, so that estimate errors rarely overshoot.
_SLACK = 0.0025
_MAX_ROUNDS = 6
# Units are tokenised in batches of this many (the Rust backend spreads a batch over all cores).
_BATCH = 128
_PICK_BATCH = 8
# count_long: chunk size, and the text on each side of a seam that decides how the seam tokenises.
_CHUNK_CHARS = 1 << 16
_SEAM_CHARS = 256
# A LongBench record is used only when its context leaves this share of the bucket's context room free.
_GOLD_ROOM = 0.9
# Splits a rendered template around its context.
_SPLIT = "\x00context\x00"
# Answers too generic to mark a distractor as leaking them (they occur in any text).
_GENERIC_ANSWERS = frozenset({"yes", "no", "unanswerable", "none", "true", "false"})
_MIN_CHECKED_ANSWER = 4

Records = Mapping[str, Sequence[LongBenchRecord]]


def count_long(tokenizer: Tokenizer, text: str, chunk_chars: int = _CHUNK_CHARS) -> int:
    """`tokenizer.count(text)`, computed as chunk counts plus a correction at each seam between chunks.

    Exact when the tokenization around a seam depends on no text farther than `_SEAM_CHARS` from it, which
    holds for BPE tokenizers with a pre-tokenizer (tokens never cross a pre-token, and pre-tokens are words,
    numbers and whitespace runs); the chunks are cut at line or word starts to keep seams simple.
    """
    if len(text) <= chunk_chars:
        return tokenizer.count(text)
    cuts = _cut_points(text, chunk_chars)
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in pairwise(bounds)]
    windows: list[str] = []
    for cut in cuts:
        left, right = text[max(0, cut - _SEAM_CHARS) : cut], text[cut : cut + _SEAM_CHARS]
        windows += [left + right, left, right]
    counts = tokenizer.count_batch(pieces + windows)
    seams = counts[len(pieces) :]
    correction = sum(seams[i] - seams[i + 1] - seams[i + 2] for i in range(0, len(seams), 3))
    return sum(counts[: len(pieces)]) + correction


def count_joined(tokenizer: Tokenizer, parts: Sequence[tuple[str, int | None]]) -> int:
    """Tokens of the concatenated `parts`, reusing the known counts of long parts (`(text, count)`).

    Long counted parts are anchors; the text between two anchors (glue: the other parts) is counted
    together with `_SEAM_CHARS` of each anchor beside it, less those anchor edges counted alone. Exact
    under the same locality as `count_long`.
    """
    anchors = [
        i for i, (text, count) in enumerate(parts) if count is not None and len(text) >= 2 * _SEAM_CHARS
    ]
    if not anchors:
        return count_long(tokenizer, "".join(text for text, _ in parts))
    windows: list[str] = []
    for before, after in pairwise([None, *anchors, None]):
        left = parts[before][0][-_SEAM_CHARS:] if before is not None else ""
        right = parts[after][0][:_SEAM_CHARS] if after is not None else ""
        glue = "".join(text for text, _ in parts[(before + 1 if before is not None else 0) : after])
        windows += [left + glue + right, left, right]
    counts = tokenizer.count_batch(windows)
    known = sum(parts[i][1] or 0 for i in anchors)
    return known + sum(counts[i] - counts[i + 1] - counts[i + 2] for i in range(0, len(counts), 3))


def _cut_points(text: str, chunk_chars: int) -> list[int]:
    cuts, start = [], 0
    while len(text) - start > chunk_chars:
        end, low = start + chunk_chars, start + chunk_chars // 2
        line = text.rfind("\n", low, end)
        space = text.rfind(" ", low, end)
        cut = line + 1 if line >= 0 else space if space > low else end
        cuts.append(cut)
        start = cut
    return cuts


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int  # of `text` alone, exact
    overhead: int = 0  # what rendering adds around it (a document header)

    @property
    def cost(self) -> int:
        return self.tokens + self.overhead


class _ShortfallError(Exception):
    def __init__(self, available: int) -> None:
        super().__init__(available)
        self.available = available


class _Stream:
    """Filler units pulled lazily from an iterator and kept, so rebuilding a prompt costs no tokenising."""

    def __init__(self, units: Iterator[_Unit], tokenizer: Tokenizer) -> None:
        self._source = units
        self._units: list[_Unit] = []
        self._tokenizer = tokenizer

    def take(self, tokens: int) -> list[_Unit]:
        """Units adding up to `tokens`, the last one truncated; `_ShortfallError` when the source runs dry."""
        taken: list[_Unit] = []
        total = 0
        while total < tokens:
            if len(taken) == len(self._units):
                # Sources batch their own tokenising; one unit at a time here tokenises no more than needed.
                unit = next(self._source, None)
                if unit is None:
                    raise _ShortfallError(total)
                self._units.append(unit)
            unit = self._units[len(taken)]
            if total + unit.cost > tokens:
                unit = self._truncated(unit, tokens - total - unit.overhead)
                if unit.text:
                    taken.append(unit)
                break
            taken.append(unit)
            total += unit.cost
        return taken

    def _truncated(self, unit: _Unit, tokens: int) -> _Unit:
        # Keep a unit's closing newline: what follows it starts on a new line, as for whole units.
        if unit.text.endswith("\n"):
            head = self._tokenizer.truncate(unit.text, max(tokens - 1, 0)).rstrip()
            text = head + "\n" if head else ""
        else:
            text = self._tokenizer.truncate(unit.text, tokens)
        return _Unit(text, self._tokenizer.count(text) if text else 0, unit.overhead)


def _counted(texts: Iterator[str], tokenizer: Tokenizer) -> Iterator[_Unit]:
    """Units for `texts`, tokenised a batch at a time."""
    while batch := list(islice(texts, _BATCH)):
        for text, tokens in zip(batch, tokenizer.count_batch(batch), strict=True):
            yield _Unit(text, tokens)


def _boundaries(units: Sequence[_Unit], depths: Sequence[float]) -> tuple[list[int], list[int]]:
    """For each depth, the nearest unit boundary (0: before the first unit) and the tokens before it."""
    starts = [0]
    for unit in units:
        starts.append(starts[-1] + unit.cost)
    places = []
    for depth in depths:
        target = depth * starts[-1]
        at = bisect.bisect_left(starts, target)
        if at == len(starts) or (at > 0 and target - starts[at - 1] <= starts[at] - target):
            at -= 1
        places.append(at)
    return places, [starts[at] for at in places]


@dataclass(frozen=True)
class _Draft:
    prompt: str
    gold_depth: float | None
    # The prompt in parts, with the exact token count of those already counted: measuring it then only
    # tokenises the rest and the text around each seam.
    parts: tuple[tuple[str, int | None], ...] = ()

    def measure(self, tokenizer: Tokenizer) -> int:
        return count_joined(tokenizer, self.parts) if self.parts else count_long(tokenizer, self.prompt)


def _fit(
    build: Callable[[int], _Draft], fixed: int, task: TaskSpec, bucket: str, tokenizer: Tokenizer, what: str
) -> tuple[_Draft, int]:
    """The draft whose measured prompt fills the bucket; `build(n)` makes a prompt with n filler tokens."""
    budget = bucket_tokens(bucket)
    limit = budget - task.max_new_tokens
    floor = math.ceil(budget * (1 - FILL_TOLERANCE)) - task.max_new_tokens
    goal = limit - math.ceil(budget * _SLACK)
    target = goal - fixed
    for _ in range(_MAX_ROUNDS):
        if target < 0:
            raise InputError(
                _where(task.name, bucket), f"the fixed part of the prompt alone exceeds {limit} tokens"
            )
        try:
            draft = build(target)
        except _ShortfallError as short:
            raise InputError(
                _where(task.name, bucket),
                f"not enough {what}: {short.available} of the {target} tokens needed "
                f"({target - short.available} short)",
            ) from None
        measured = draft.measure(tokenizer)
        if floor <= measured <= limit:
            return draft, measured
        target += goal - measured
    raise RuntimeError(f"{_where(task.name, bucket)}: prompt did not settle within [{floor}, {limit}] tokens")


def _where(task: str, bucket: str) -> str:
    return f"task {task!r} at bucket {bucket!r}"


def _item_rng(task: str, bucket: str, index: int, seed: int, purpose: str) -> random.Random:
    # String seeds hash with SHA-512: the same on every run and platform, independent of PYTHONHASHSEED.
    return random.Random(f"quasar|{purpose}|{task}|{bucket}|{index}|{seed}")


def _item_id(task: str, bucket: str, index: int, prompt: str) -> str:
    # No record id or seed: item ids may be shown to miners, and must not lead to an answer.
    return f"{task}-{bucket}-{index}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------- synthetic


def _synthetic_item(task: TaskSpec, bucket: str, index: int, tokenizer: Tokenizer, seed: int) -> EvalItem:
    spec = make_spec(task.name, _item_rng(task.name, bucket, index, seed, "synthetic"))
    texts = [needle.text for needle in spec.needles]
    needle_tokens = tokenizer.count_batch(texts) if texts else []
    stream = _Stream(_counted(spec.filler, tokenizer), tokenizer)

    def build(filler_tokens: int) -> _Draft:
        units = stream.take(filler_tokens)
        places, before = _boundaries(units, [needle.depth for needle in spec.needles])
        # A needle opens the paragraph at its boundary (or adds a last line at the very end); needles at one
        # boundary keep their order, so a variable is assigned before it is copied.
        heads: dict[int, list[str]] = {}
        for at, text in zip(places, texts, strict=True):
            heads.setdefault(at, []).append(text)
        pieces: list[str] = []
        for at, unit in enumerate(units):
            if at in heads:
                pieces.append(" ".join(heads[at]) + " ")
            pieces.append(unit.text)
        if len(units) in heads:
            pieces.append(" ".join(heads[len(units)]) + "\n")
        context = "".join(pieces).rstrip("\n")
        return _Draft(
            task.render(context, spec.question, spec.answer_cue),
            _needle_depth(spec.gold, before, needle_tokens, units),
        )

    fixed = tokenizer.count(task.render("", spec.question, spec.answer_cue)) + sum(needle_tokens) + len(texts)
    draft, measured = _fit(build, fixed, task, bucket, tokenizer, "filler")
    return EvalItem(
        task=task.name,
        bucket=bucket,
        item_id=_item_id(task.name, bucket, index, draft.prompt),
        prompt=draft.prompt,
        prompt_tokens=measured,
        answers=spec.answers,
        gold_depth=draft.gold_depth,
    )


def _needle_depth(
    gold: int | None, before: list[int], needle_tokens: list[int], units: list[_Unit]
) -> float | None:
    if gold is None:
        return None
    total = sum(unit.cost for unit in units) + sum(needle_tokens)
    return (before[gold] + sum(needle_tokens[:gold])) / total if total else 0.0


# ---------------------------------------------------------------------------------------------- LongBench


class _Pool:
    """Every distinct LongBench context once, as a candidate document, tokenised on first use and kept."""

    def __init__(self, records: Records, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.docs: list[str] = []
        self.by_dataset: dict[str, list[int]] = {}
        self._ids: dict[str, int] = {}
        self._counts: dict[int, int] = {}
        for dataset, items in records.items():
            for record in items:
                if record.context not in self._ids:
                    self._ids[record.context] = len(self.docs)
                    self.docs.append(record.context)
                    self.by_dataset.setdefault(dataset, []).append(self._ids[record.context])
        # Each document is rendered as "Document N:\n<text>" and separated by a blank line.
        self.header_tokens = tokenizer.count("Document 100:\n\n\n")

    def doc_id(self, context: str) -> int:
        return self._ids[context]

    def counts(self, ids: Sequence[int]) -> list[int]:
        missing = [i for i in dict.fromkeys(ids) if i not in self._counts]
        for start in range(0, len(missing), _BATCH):
            batch = missing[start : start + _BATCH]
            self._counts.update(
                zip(batch, self.tokenizer.count_batch([self.docs[i] for i in batch]), strict=True)
            )
        return [self._counts[i] for i in ids]


def _answer_pattern(answers: Sequence[str], all_classes: Sequence[str] | None) -> re.Pattern[str] | None:
    """What marks a distractor as holding an answer: any specific answer as a whole phrase, any case.

    Class labels (trec) and generic or very short answers (yes, no, "2") occur in any text and mark nothing.
    """
    classes = set(all_classes or ())
    checked = sorted(
        {
            a.strip()
            for a in answers
            if len(a.strip()) >= _MIN_CHECKED_ANSWER
            and a.strip().lower() not in _GENERIC_ANSWERS
            and a not in classes
        },
        key=len,
        reverse=True,
    )
    if not checked:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(a) for a in checked) + r")(?!\w)", re.IGNORECASE)


def _distractors(
    pool: _Pool,
    dataset: str,
    gold: int,
    pattern: re.Pattern[str] | None,
    rng: random.Random,
    same_dataset: bool = True,
) -> Iterator[_Unit]:
    same = [i for i in pool.by_dataset.get(dataset, []) if i != gold] if same_dataset else []
    others = [i for name, ids in pool.by_dataset.items() if name != dataset for i in ids if i != gold]
    rng.shuffle(same)
    rng.shuffle(others)
    order = [*same, *others]
    # Batches double (1, 2, 4, ... documents): a small bucket tokenises a few, a large one in parallel.
    batch: list[int] = []
    size = 1
    for n, i in enumerate(order, start=1):
        if pattern is None or not pattern.search(pool.docs[i]):
            batch.append(i)
        if len(batch) >= size or n == len(order):
            for doc, tokens in zip(batch, pool.counts(batch), strict=True):
                yield _Unit(pool.docs[doc], tokens, pool.header_tokens)
            batch, size = [], min(2 * size, _BATCH)


def _pick_record(
    task: TaskSpec, bucket: str, index: int, seed: int, pool: _Pool, records: Records
) -> LongBenchRecord:
    """The index-th record, in a seeded order, of those whose context fits the bucket with room to spare."""
    candidates = list(records.get(task.name, ()))
    random.Random(f"quasar|records|{task.name}|{seed}").shuffle(candidates)
    room = _GOLD_ROOM * (bucket_tokens(bucket) - task.max_new_tokens)
    fitting = -1
    # Small batches: only records up to the index-th fitting one get tokenised.
    for start in range(0, len(candidates), _PICK_BATCH):
        batch = candidates[start : start + _PICK_BATCH]
        for record, tokens in zip(batch, pool.counts([pool.doc_id(r.context) for r in batch]), strict=True):
            if tokens <= room:
                fitting += 1
            if fitting == index:
                return record
    raise InputError(
        _where(task.name, bucket),
        f"sample {index + 1} asked for, but only {fitting + 1} of {len(candidates)} records fit the bucket",
    )


def _question(task: TaskSpec, question: str, gold_number: int) -> str:
    if task.name == "qmsum":
        return f"Query about Document {gold_number}: {question}"
    if task.name == "multi_news":
        return f"Write a one-page summary of the news articles in Document {gold_number}."
    return f"Write a one-page summary of Document {gold_number}."


def _longbench_item(
    task: TaskSpec, bucket: str, index: int, tokenizer: Tokenizer, seed: int, pool: _Pool, records: Records
) -> EvalItem:
    record = _pick_record(task, bucket, index, seed, pool, records)
    rng = _item_rng(task.name, bucket, index, seed, "longbench")
    changed = perturb(record.context, record.input, record.answers, task.metric, rng, record.all_classes)
    gold = _Unit(changed.context, count_long(tokenizer, changed.context), pool.header_tokens)
    pattern = _answer_pattern([*record.answers, *changed.answers], record.all_classes)
    # Relabelled classes: other records of the dataset would teach the public labels again.
    relabelled = task.metric == "classification" and bool(changed.substitutions)
    distractors = _distractors(
        pool, record.dataset, pool.doc_id(record.context), pattern, rng, not relabelled
    )
    stream = _Stream(distractors, tokenizer)
    depth, order_seed = rng.random(), rng.getrandbits(64)

    def build(filler_tokens: int) -> _Draft:
        docs = stream.take(filler_tokens)
        random.Random(order_seed).shuffle(docs)
        (at,), (before,) = _boundaries(docs, [depth])
        docs.insert(at, gold)
        question = _question(task, changed.input, at + 1) if task.summarisation else changed.input
        head, tail = task.render(_SPLIT, question).split(_SPLIT)
        parts: list[tuple[str, int | None]] = [(head, None)]
        for n, doc in enumerate(docs, start=1):
            separator = "" if n == 1 else "\n\n"
            parts += [(f"{separator}Document {n}:\n", None), (doc.text, doc.tokens)]
        parts.append((tail, None))
        return _Draft(
            "".join(text for text, _ in parts), before / sum(doc.cost for doc in docs), tuple(parts)
        )

    placeholder = _question(task, changed.input, 100) if task.summarisation else changed.input
    fixed = tokenizer.count(task.render("", placeholder)) + gold.cost
    draft, measured = _fit(build, fixed, task, bucket, tokenizer, "distractor text in the LongBench data")
    return EvalItem(
        task=task.name,
        bucket=bucket,
        item_id=_item_id(task.name, bucket, index, draft.prompt),
        prompt=draft.prompt,
        prompt_tokens=measured,
        answers=changed.answers,
        all_classes=changed.classes,
        gold_depth=draft.gold_depth,
        replaced_entities=_absent(list(changed.substitutions), draft.prompt),
    )


def _absent(entities: list[str], prompt: str) -> tuple[str, ...]:
    """Entities that occur nowhere in the prompt (a distractor document may still name one)."""
    present = set(mentioned_entities(prompt, entities))
    return tuple(e for e in entities if e not in present)


# ---------------------------------------------------------------------------------------------- public


class _Builder:
    def __init__(self, tokenizer: Tokenizer, seed: int, records: Records | None) -> None:
        self.tokenizer, self.seed, self.records = tokenizer, seed, records

    def build(self, task_name: str, bucket: str, index: int) -> EvalItem:
        task = get_task(task_name)
        bucket_tokens(bucket)
        if index < 0:
            raise InputError(_where(task_name, bucket), f"sample index must be >= 0, got {index}")
        if task.source == "synthetic":
            return _synthetic_item(task, bucket, index, self.tokenizer, self.seed)
        if not self.records or task_name not in self.records:
            raise InputError(
                _where(task_name, bucket), "needs LongBench data: pass --data (folder or data.zip)"
            )
        pool = _pool_for(self.records, self.tokenizer)
        return _longbench_item(task, bucket, index, self.tokenizer, self.seed, pool, self.records)


# The most recent pool, reused while callers pass the same records and tokenizer objects (as repeated
# build_item calls do): tokenising every document again per item would dominate the cost. The records
# mapping must not be changed between calls.
_last_pool: list[tuple[Records, Tokenizer, _Pool]] = []


def _pool_for(records: Records, tokenizer: Tokenizer) -> _Pool:
    for cached_records, cached_tokenizer, pool in _last_pool:
        if cached_records is records and cached_tokenizer is tokenizer:
            return pool
    pool = _Pool(records, tokenizer)
    _last_pool[:] = [(records, tokenizer, pool)]
    return pool


def build_item(
    task: str, bucket: str, index: int, *, tokenizer: Tokenizer, seed: int, records: Records | None = None
) -> EvalItem:
    """One prompt for `task` filling `bucket`; deterministic in (task, bucket, index, seed, tokenizer)."""
    return _Builder(tokenizer, seed, records).build(task, bucket, index)


def build_items(
    tasks: Sequence[str],
    buckets: Sequence[str],
    samples: int,
    *,
    tokenizer: Tokenizer,
    seed: int,
    records: Records | None = None,
) -> Iterator[EvalItem]:
    """`samples` items per task and bucket (task-major order). Arguments are checked before any is built;
    LongBench documents are tokenised once for all items."""
    for task in tasks:
        get_task(task)
    for bucket in buckets:
        bucket_tokens(bucket)
    if samples < 1:
        raise InputError(
            f"tasks {', '.join(tasks)} at buckets {', '.join(buckets)}",
            f"samples must be >= 1, got {samples}",
        )
    builder = _Builder(tokenizer, seed, records)
    return (
        builder.build(task, bucket, index) for task in tasks for bucket in buckets for index in range(samples)
    )
