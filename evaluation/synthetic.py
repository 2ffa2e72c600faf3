"""RULER-style synthetic tasks: fresh random keys and values planted in generated haystack text.

Every item is made from a seed, so nothing can be looked up: the keys are uuid-like, the values random
numbers, the variable names random upper-case strings, and the aggregation words pseudo-words. This module
says *what* goes into a context (needles, question, answer cue, answers, filler); `evaluation.contexts`
sizes and assembles it for a bucket.
"""

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from evaluation.filler import PseudoWords, prose_paragraphs

# RULER's defaults: four needles where several are used, ten common words to find.
_MULTI_NEEDLES = 4
_CHAIN_HOPS = 5
_COMMON_WORDS = 10
# Aggregation lists: words per line, and each common word appears on one line in this many.
_WORDS_PER_LINE = 16
_COMMON_PERIOD = 8
# Each uncommon word appears this many times (within one shuffled block), far below any common word.
_UNCOMMON_REPEATS = 3
_UNCOMMON_BLOCK = 64


@dataclass(frozen=True)
class Needle:
    depth: float  # where it goes, as a share of the filler's tokens before it: 0.0 (start) to 1.0 (end)
    text: str


@dataclass(frozen=True)
class SyntheticSpec:
    question: str
    answer_cue: str  # the answer's opening words, written after "Answer:" (RULER's answer prefix)
    answers: tuple[str, ...]
    needles: tuple[Needle, ...]  # sorted by depth: their order in the context
    gold: int | None  # index of the needle whose depth is the item's gold depth; None: no single needle
    filler: Iterator[str]  # endless filler units, each ending in a newline


def make_spec(task: str, rng: random.Random) -> SyntheticSpec:
    """The content of one synthetic item. `task` must be one of `evaluation.tasks.SYNTHETIC_TASKS`."""
    makers = {
        "niah_single": _niah_single,
        "niah_multikey": _niah_multikey,
        "niah_multivalue": _niah_multivalue,
        "variable_tracking": _variable_tracking,
        "aggregation": _aggregation,
    }
    return makers[task](rng)


def _key(rng: random.Random) -> str:
    digits = f"{rng.getrandbits(128):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _values(rng: random.Random, count: int, digits: int = 7) -> list[str]:
    return [str(v) for v in rng.sample(range(10 ** (digits - 1), 10**digits), count)]


def _variable_names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=5))
        if name not in names and name != "VAR":
            names.append(name)
    return names


def _prose(rng: random.Random) -> Iterator[str]:
    return prose_paragraphs(str(rng.getrandbits(64)))


def _magic(key: str, value: str) -> str:
    return f"The special magic number for {key} is {value}."


def _niah_single(rng: random.Random) -> SyntheticSpec:
    key, (value,) = _key(rng), _values(rng, 1)
    return SyntheticSpec(
        question=f"What is the special magic number for {key} mentioned in the text?",
        answer_cue=f"The special magic number for {key} mentioned in the text is",
        answers=(value,),
        needles=(Needle(rng.random(), _magic(key, value)),),
        gold=0,
        filler=_prose(rng),
    )


def _niah_multikey(rng: random.Random) -> SyntheticSpec:
    keys = [_key(rng) for _ in range(_MULTI_NEEDLES)]
    values = _values(rng, _MULTI_NEEDLES)
    placed = sorted((rng.random(), i) for i in range(_MULTI_NEEDLES))
    target = rng.randrange(_MULTI_NEEDLES)
    return SyntheticSpec(
        question=f"What is the special magic number for {keys[target]} mentioned in the text?",
        answer_cue=f"The special magic number for {keys[target]} mentioned in the text is",
        answers=(values[target],),
        needles=tuple(Needle(depth, _magic(keys[i], values[i])) for depth, i in placed),
        gold=[i for _, i in placed].index(target),
        filler=_prose(rng),
    )


def _niah_multivalue(rng: random.Random) -> SyntheticSpec:
    key, values = _key(rng), _values(rng, _MULTI_NEEDLES)
    depths = sorted(rng.random() for _ in values)
    return SyntheticSpec(
        question=f"What are all the special magic numbers for {key} mentioned in the text?",
        answer_cue=f"The special magic numbers for {key} mentioned in the text are",
        answers=tuple(values),
        needles=tuple(
            Needle(depth, f"One of the special magic numbers for {key} is {value}.")
            for depth, value in zip(depths, values, strict=True)
        ),
        gold=0,
        filler=_prose(rng),
    )


def _chain(names: list[str], value: str) -> list[str]:
    return [f"VAR {names[0]} = {value}.", *(f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names))]


def _variable_tracking(rng: random.Random) -> SyntheticSpec:
    # A second chain with another value makes "every VAR line" a wrong answer.
    names = _variable_names(rng, 2 * _CHAIN_HOPS)
    value, decoy = _values(rng, 2, digits=5)
    target, other = _chain(names[:_CHAIN_HOPS], value), _chain(names[_CHAIN_HOPS:], decoy)
    # Each chain's statements keep their order: a variable is assigned before it is copied.
    tagged = [
        *zip(sorted(rng.random() for _ in target), target, [True] * len(target), strict=True),
        *zip(sorted(rng.random() for _ in other), other, [False] * len(other), strict=True),
    ]
    tagged.sort(key=lambda entry: entry[0])
    return SyntheticSpec(
        question=f"Which variables are assigned the value {value}, directly or through other variables? "
        "List all of them.",
        answer_cue=f"According to the chains of assignments in the text, the variables assigned the value "
        f"{value} are:",
        answers=tuple(names[:_CHAIN_HOPS]),
        needles=tuple(Needle(depth, text) for depth, text, _ in tagged),
        gold=[is_target for _, _, is_target in tagged].index(True),
        filler=_prose(rng),
    )


def _aggregation(rng: random.Random) -> SyntheticSpec:
    words = PseudoWords(str(rng.getrandbits(64)))
    common = [words.word(i) for i in range(_COMMON_WORDS)]
    return SyntheticSpec(
        question=f"Which {_COMMON_WORDS} words appear most often in the word list above? List them.",
        answer_cue=f"The {_COMMON_WORDS} words that appear most often in the list are:",
        answers=tuple(common),
        needles=(),
        gold=None,
        filler=_word_lines(words, common, random.Random(rng.getrandbits(64))),
    )


def _word_lines(words: PseudoWords, common: list[str], rng: random.Random) -> Iterator[str]:
    """Lines of pseudo-words: every common word on one line in `_COMMON_PERIOD` (so hundreds to thousands
    of times per context), every other word `_UNCOMMON_REPEATS` times at most."""
    offsets = [rng.randrange(_COMMON_PERIOD) for _ in common]
    pending: list[str] = []
    next_word, line = len(common), 0
    while True:
        if len(pending) < _WORDS_PER_LINE:
            block = [words.word(i) for i in range(next_word, next_word + _UNCOMMON_BLOCK)]
            next_word += _UNCOMMON_BLOCK
            fresh = block * _UNCOMMON_REPEATS
            rng.shuffle(fresh)
            pending.extend(fresh)
        entries, pending = pending[:_WORDS_PER_LINE], pending[_WORDS_PER_LINE:]
        for word, offset in zip(common, offsets, strict=True):
            if (line + offset) % _COMMON_PERIOD == 0:
                entries.insert(rng.randrange(len(entries) + 1), word)
        yield " ".join(entries) + "\n"
        line += 1
