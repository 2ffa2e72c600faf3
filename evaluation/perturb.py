"""Anti-memorisation: LongBench samples changed so that their public answers are wrong.

LongBench's questions and answers are public; a miner could answer from a lookup table without running a
model. Three changes, all seeded and fresh per item:

- Entity substitution: numbers (two digits or more) and proper nouns (capitalised words never written in
  lower case in the document) that occur in the answers are replaced, consistently and everywhere, in the
  context, the question and the answers, by fresh surrogates that occur nowhere in the original text.
  Substitution works on whole word and number tokens, so each occurrence is replaced or none is.
- Needle augmentation (token-F1 datasets only, when substitution left at least half of an answer's words
  as they were): a fresh "verification phrase" is woven into the document at a sentence boundary, the
  question asks for it first, and every answer starts with it. A memoriser's answer then misses at least
  half of the expected words.
- Class relabelling (classification): the labels the few-shot examples show get fresh names, in the
  examples, the class list and the answers; the examples still teach them.

Substitution and needles leave a trace a memoriser cannot avoid without reading: the public answer names
entities that were replaced everywhere in the prompt (`mentioned_entities`); evaluation.grading scores such
an answer 0.

Limits: a label the examples never show keeps its public name; a miner that finds the public source record
and diffs it against the prompt can recover the substitutions. See docs/evaluation.md.
"""

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evaluation.filler import PseudoWords, split_words
from evaluation.metrics import qa_f1_score

# A token is a number (digits with inner separators: 1,200 or 3.5) or a run of letters.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s+(?=[A-Z\"'(])")

# Capitalised words that are not names even when never written in lower case in a document.
_NOT_NAMES = frozenset(
    split_words(
        "The A An And Or But If In On At Of To For From By With As Is It Its He She They We You I His "
        "Her Their This That These Those There Here What Which Who Whom Whose When Where Why How Yes No Not "
        "Mr Mrs Ms Dr St January February March April May June July August September October November "
        "December Monday Tuesday Wednesday Thursday Friday Saturday Sunday"
    )
)
_MIN_NUMBER_DIGITS = 2
# Needle augmentation: the phrase has at least this many words, and at least as many as the answer.
_MIN_PHRASE_WORDS = 3
_TRIES_PER_SHAPE = 50
# Token F1 a memorised answer may keep before a verification phrase is added.
_GUESSABLE_F1 = 0.5
_SYLLABLES = [consonant + vowel for consonant in "bdkmnrstvz" for vowel in "aeiou"]


@dataclass(frozen=True)
class Perturbed:
    context: str
    input: str
    answers: tuple[str, ...]
    substitutions: Mapping[str, str]  # original token (or class label) -> surrogate
    phrase: str | None = None  # the verification phrase woven in, if any
    classes: tuple[str, ...] | None = None  # the class list, relabelled for classification tasks


def mentioned_entities(text: str, entities: Sequence[str]) -> list[str]:
    """The `entities` that occur in `text` as whole tokens, tokenised as substitution tokenises."""
    if not entities:
        return []
    tokens = set(_TOKEN.findall(text))
    return [e for e in entities if e in tokens]


def perturb(
    context: str,
    question: str,
    answers: Sequence[str],
    metric: str,
    rng: random.Random,
    classes: Sequence[str] | None = None,
) -> Perturbed:
    """Entity substitution, then needle augmentation where substitution alone leaves answers guessable.

    Classification answers are labels from a fixed set: the labels are renamed instead."""
    if metric == "classification":
        return relabel_classes(context, question, answers, classes or (), rng)
    substituted = substitute_entities(context, question, answers, rng)
    if metric != "qa_f1" or not _still_guessable(answers, substituted.answers):
        return substituted
    return augment_with_phrase(substituted, rng)


def relabel_classes(
    context: str, question: str, answers: Sequence[str], classes: Sequence[str], rng: random.Random
) -> Perturbed:
    """Fresh names for the class labels, in the few-shot examples (`Type: <label>` lines), the class list and
    the answers. The examples still teach every label, so a reader learns them in context; a memorised
    public label names no class any more. Labels the examples never show are left as they are."""
    shown = [label for label in classes if re.search(_label_line(label), context)]
    if not shown:
        return Perturbed(context, question, tuple(answers), {}, classes=tuple(classes) or None)
    taken = {token.lower() for token in _TOKEN.findall(context + " " + question)}
    mapping: dict[str, str] = {}
    for label in shown:
        mapping[label] = _fresh_label(taken, set(mapping.values()), rng)
        taken.add(mapping[label].lower())
    for label in sorted(shown, key=len, reverse=True):  # "Other location" before "Location"
        context = re.sub(_label_line(label), rf"\g<1>{mapping[label]}", context)
    return Perturbed(
        context,
        question,
        tuple(mapping.get(a, a) for a in answers),
        mapping,
        classes=tuple(mapping.get(c, c) for c in classes),
    )


def _label_line(label: str) -> str:
    return rf"(?m)(^Type:[ \t]*){re.escape(label)}(?=[ \t]*$)"


def _fresh_label(taken: set[str], labels: set[str], rng: random.Random) -> str:
    # Two pseudo-words: never a substring of another label (the classification metric matches substrings).
    while True:
        label = " ".join(_name_like("Label", rng, 0) for _ in range(2))
        words = {word.lower() for word in label.split()}
        if words.isdisjoint(taken) and not any(label in other or other in label for other in labels):
            return label


def substitute_entities(context: str, question: str, answers: Sequence[str], rng: random.Random) -> Perturbed:
    seen = set(_TOKEN.findall(context)) | set(_TOKEN.findall(question))
    entities = [
        token
        for answer in answers
        for token in _TOKEN.findall(answer)
        if token in seen and _is_entity(token, seen)
    ]
    mapping = _surrogates(list(dict.fromkeys(entities)), {token.lower() for token in seen}, rng)

    def replace(text: str) -> str:
        return (
            _TOKEN.sub(lambda match: mapping.get(match.group(0), match.group(0)), text) if mapping else text
        )

    return Perturbed(replace(context), replace(question), tuple(replace(a) for a in answers), mapping)


def _is_entity(token: str, seen: set[str]) -> bool:
    if token[0].isdigit():
        return sum(ch.isdigit() for ch in token) >= _MIN_NUMBER_DIGITS
    # A proper noun: capitalised, and never written in lower case in the text.
    return len(token) > 1 and token[0].isupper() and token not in _NOT_NAMES and token.lower() not in seen


def _surrogates(entities: Sequence[str], lowered_tokens: set[str], rng: random.Random) -> dict[str, str]:
    """Fresh replacements: distinct, the same shape as the original, absent from the original text."""
    taken = set(lowered_tokens)
    mapping: dict[str, str] = {}
    for entity in entities:
        surrogate = _fresh(entity, taken, rng)
        taken.add(surrogate.lower())
        mapping[entity] = surrogate
    return mapping


def _fresh(entity: str, taken: set[str], rng: random.Random) -> str:
    # A short shape can run out (a report may use every two-digit number): grow it after many misses.
    attempt = 0
    while True:
        grow = attempt // _TRIES_PER_SHAPE
        if entity[0].isdigit():
            surrogate = _number_like(entity + "0" * grow, rng)
        else:
            surrogate = _name_like(entity, rng, grow)
        if surrogate.lower() not in taken:
            return surrogate
        attempt += 1


def _number_like(number: str, rng: random.Random) -> str:
    # Same digit count and separators; a four-digit year stays a plausible year.
    if len(number) == 4 and number.isdigit() and 1500 <= int(number) <= 2099:
        return str(rng.randrange(1500, 2100))
    digits = [rng.choice("123456789") if i == 0 else rng.choice("0123456789") for i in range(len(number))]
    return "".join(d if ch.isdigit() else ch for d, ch in zip(digits, number, strict=True))


def _name_like(name: str, rng: random.Random, extra: int) -> str:
    syllables = max(2, min(4, (len(name) + 1) // 2)) + extra
    word = "".join(rng.choice(_SYLLABLES) for _ in range(syllables))
    return word.upper() if name.isupper() else word.capitalize()


def _words(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


def _still_guessable(original: Sequence[str], perturbed: Sequence[str]) -> bool:
    """True when a memorised public answer would still score over half marks against the new answers."""
    return max(qa_f1_score(old, new) for old in original for new in perturbed) > _GUESSABLE_F1


def augment_with_phrase(item: Perturbed, rng: random.Random) -> Perturbed:
    """A fresh verification phrase woven into the context: the question asks for it, answers start with it."""
    longest = max(len(_words(answer)) for answer in item.answers)
    words = PseudoWords(str(rng.getrandbits(64)), syllables=3)
    start = rng.randrange(words.capacity - 16)
    phrase = " ".join(words.word(start + i) for i in range(max(_MIN_PHRASE_WORDS, longest)))
    fact = f'The verification phrase of this document is "{phrase}". '
    context = _insert_at_sentence(item.context, fact, rng)
    question = (
        f"{item.input}\n(Begin your answer, on the same line, with the verification phrase stated in the "
        "document, then give the answer.)"
    )
    return Perturbed(
        context, question, tuple(f"{phrase} {a}" for a in item.answers), item.substitutions, phrase
    )


def _insert_at_sentence(text: str, sentence: str, rng: random.Random) -> str:
    """`sentence` placed at a random sentence start of `text` (its start when it has no sentence break)."""
    starts = [match.end() for match in _SENTENCE_END.finditer(text)]
    at = rng.choice(starts) if starts else 0
    return text[:at] + sentence + text[at:]
