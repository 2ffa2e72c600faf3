"""Deterministic haystack text from a seed: prose-like paragraphs and unique pseudo-words.

No corpus is read: everything is generated, so any bucket size can be filled offline. The prose holds no
digits, no capitalised names beyond sentence starts and no hyphens, so keys and values planted in it
(numbers, uuid-like keys, upper-case variable names) occur nowhere else in a context.
"""

import math
import random
from collections.abc import Iterator


def split_words(text: str, separator: str = " ") -> tuple[str, ...]:
    return tuple(text.split(separator))


_ADJECTIVES = split_words(
    "quiet old narrow bright distant gentle heavy patient broad silver careful early late small warm cold "
    "green grey golden hidden busy empty crowded simple curious tired steady"
)
_NOUNS = split_words(
    "river town harbour lantern garden bridge market orchard valley library workshop village station "
    "meadow window kitchen tower field road forest island mill chapel courtyard farm school letter ship "
    "wagon shepherd baker weaver gardener sailor teacher traveller clerk painter miller"
)
_VERBS = split_words(
    "watched crossed followed painted mended visited passed carried opened described remembered cleaned "
    "measured counted studied repaired guarded reached admired left"
)
_PLACES = split_words(
    "near the harbour|beyond the hills|along the old road|under the bridge|behind the market|across the "
    "valley|beside the river|at the edge of the forest|inside the library|around the square",
    "|",
)
_TIMES = split_words(
    "in the morning|after the rain|before the winter|during the long summer|at dusk|every spring|"
    "late in the evening|on quiet afternoons|when the bells rang|as the tide turned",
    "|",
)
_CLAUSES = split_words(
    "and nobody said a word about it|while the wind moved through the trees|because the work was not yet "
    "done|although the weather was uncertain|as everyone had expected|and the day went on as usual|so the "
    "others waited patiently|which surprised no one in the town",
    "|",
)

# Sentences per paragraph; a paragraph is one filler unit (the granularity of needle depths).
_SENTENCES_PER_PARAGRAPH = (3, 7)
# Distinct sentences drawn per seed: paragraphs combine them, so generating megabytes costs little.
_SENTENCE_BANK = 4096


def _sentence(rng: random.Random) -> str:
    adjective, noun, verb = rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_VERBS)
    other = rng.choice(_NOUNS)
    shape = rng.randrange(4)
    if shape == 0:
        text = f"the {adjective} {noun} {verb} the {other} {rng.choice(_PLACES)}"
    elif shape == 1:
        text = f"{rng.choice(_TIMES)} the {noun} {verb} a {adjective} {other}"
    elif shape == 2:
        text = f"the {noun} {rng.choice(_PLACES)} {verb} the {other} {rng.choice(_CLAUSES)}"
    else:
        text = f"a {adjective} {noun} {verb} the {other} {rng.choice(_TIMES)}, {rng.choice(_CLAUSES)}"
    return text[0].upper() + text[1:] + "."


def prose_paragraphs(seed: str) -> Iterator[str]:
    """An endless stream of paragraphs, each ending in one newline, the same for the same seed."""
    rng = random.Random(f"prose|{seed}")
    bank = [_sentence(rng) for _ in range(_SENTENCE_BANK)]
    low, high = _SENTENCES_PER_PARAGRAPH
    while True:
        yield " ".join(rng.choices(bank, k=rng.randint(low, high))) + "\n"


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]


class PseudoWords:
    """Distinct pronounceable non-words, `word(0)`, `word(1)`, ..., in a seeded order.

    Index i maps to a syllable string through an affine permutation of [0, capacity): distinct indices give
    distinct words, with no set of used words to keep, and no real English word to be guessed.
    """

    def __init__(self, seed: str, syllables: int = 4) -> None:
        self.syllables = syllables
        self.capacity = len(_SYLLABLES) ** syllables
        rng = random.Random(f"pseudo-words|{seed}")
        self._scale = rng.randrange(1, self.capacity)
        while math.gcd(self._scale, self.capacity) != 1:
            self._scale = rng.randrange(1, self.capacity)
        self._shift = rng.randrange(self.capacity)

    def word(self, index: int) -> str:
        if not 0 <= index < self.capacity:
            raise IndexError(f"pseudo-word index {index} outside [0, {self.capacity})")
        code = (index * self._scale + self._shift) % self.capacity
        parts = []
        for _ in range(self.syllables):
            code, digit = divmod(code, len(_SYLLABLES))
            parts.append(_SYLLABLES[digit])
        return "".join(parts)
